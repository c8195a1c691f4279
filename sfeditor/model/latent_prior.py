"""A Gaussian-mixture prior over W: the toy generators' z -> w when their mapping is a fitted mixture.

The toy generators are trained as autoencoders (``trainer.generator``), so nothing teaches their
mapping network which w are images: it was fitted to one Gaussian over the encoder's codes of
rendered images.  A single Gaussian over a multi-modal code cloud puts most of its samples between
the modes (long and short hair, big and small cars), where the synthesis draws averaged, soft
images.  :class:`MixturePrior` replaces that Gaussian by a mixture of K Gaussians fitted to the same
codes (scikit-learn's EM, :func:`trainer.mapping_fit.fit_mixture`).

It is still a deterministic map of the StyleGAN z ~ N(0, I), so seeds, style mixing, the app's
sampling and every training job that samples z -> w keep working unchanged:

* the component k comes from u = Phi(z_0) against the cumulative mixture weights, and z_0 is
  replaced by Phi^-1 of u's position inside that component's interval, which is again N(0, 1) and
  independent of k;
* w = mu_k + A_k z[:r] with A_k [D, r] the top-r principal factor of component k's covariance
  (the codes span far fewer than D directions; r = D keeps the full covariance).

Truncation (psi) pulls w toward its own component's mean, not the global mean: the multi-modal
truncation of Mokady et al. 2022 ("Self-Distilled StyleGAN"), which keeps a truncated sample in
its mode instead of averaging modes together.  ``w_avg`` (the global mean) is unchanged in meaning.

The prior is stored in the generator file as three buffers (``prior.weights`` [K], ``prior.means``
[K, D], ``prior.factors`` [K, D, r]); :func:`check_prior_tensors` validates them on load.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

PREFIX = "prior."
KEYS = ("weights", "means", "factors")


class PriorError(ValueError):
    """Tensors that do not form a valid mixture prior; the message says why."""


class MixturePrior(nn.Module):
    """z [B, D] -> w [B, D] through a K-component Gaussian mixture (module docstring)."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, factors: torch.Tensor):
        super().__init__()
        weights, means, factors = check_prior_tensors(weights, means, factors)
        self.register_buffer("weights", weights)
        self.register_buffer("means", means)
        self.register_buffer("factors", factors)

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def rank(self) -> int:
        return int(self.factors.shape[2])

    def extra_repr(self) -> str:
        return f"components={self.n_components}, dim={self.dim}, rank={self.rank}"

    def components(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(component index [B], z' [B, D] ~ N(0, I) independent of it) for z [B, D]."""
        z = z.float()
        u = 0.5 * (1.0 + torch.erf(z[:, 0] / math.sqrt(2.0)))            # Phi(z_0), uniform on (0, 1)
        cum = torch.cumsum(self.weights.float(), 0)
        cum = cum / cum[-1]
        k = torch.searchsorted(cum, u.contiguous(), right=True).clamp_(max=self.n_components - 1)
        lo = torch.where(k > 0, cum[(k - 1).clamp(min=0)], torch.zeros_like(u))
        hi = cum[k]
        eps = 1e-6
        v = ((u - lo) / (hi - lo).clamp(min=1e-12)).clamp(eps, 1 - eps)  # u's place inside k's interval
        z0 = math.sqrt(2.0) * torch.erfinv(2.0 * v - 1.0)
        return k, torch.cat([z0[:, None], z[:, 1:]], 1)

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be [B, {self.dim}], got {tuple(z.shape)}")
        # a change of variables, not a network layer: float32 even under bf16 autocast
        with torch.autocast(z.device.type, enabled=False):
            k, zp = self.components(z.float())
            zr = zp[:, : self.rank]
            dev = torch.empty(len(z), self.dim, dtype=zr.dtype, device=zr.device)
            # one matmul per component present (gathering a [D, r] factor per sample would copy B*D*r floats)
            for c in torch.unique(k).tolist():
                rows = (k == c).nonzero().squeeze(1)
                dev[rows] = zr[rows] @ self.factors[c].float().T
            w = self.means[k].float() + float(truncation) * dev
        return w.to(z.dtype if z.is_floating_point() else torch.float32)

    def mean(self) -> torch.Tensor:
        """The mixture's mean (what ``update_w_avg`` estimates by sampling)."""
        w = self.weights / self.weights.sum()
        return (w[:, None] * self.means).sum(0)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: getattr(self, k) for k in KEYS}


def check_prior_tensors(weights, means, factors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 copies of a prior's tensors, or :class:`PriorError` naming what is wrong."""
    for name, t in (("weights", weights), ("means", means), ("factors", factors)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise PriorError(f"prior.{name} must be a floating-point tensor")
        if not torch.isfinite(t).all():
            raise PriorError(f"prior.{name} contains NaN or infinite values")
    if weights.ndim != 1 or weights.shape[0] < 1:
        raise PriorError(f"prior.weights must be [K] with K >= 1, got {list(weights.shape)}")
    k = weights.shape[0]
    if means.ndim != 2 or means.shape[0] != k:
        raise PriorError(f"prior.means must be [K={k}, D], got {list(means.shape)}")
    d = means.shape[1]
    if factors.ndim != 3 or factors.shape[0] != k or factors.shape[1] != d or not 1 <= factors.shape[2] <= d:
        raise PriorError(f"prior.factors must be [K={k}, D={d}, r] with 1 <= r <= D, got {list(factors.shape)}")
    if (weights < 0).any() or float(weights.sum()) <= 0:
        raise PriorError("prior.weights must be non-negative with a positive sum")
    # stored as given (not renormalised, so a file round-trips bit for bit); users normalise
    return weights.detach().float().cpu().clone(), means.detach().float().cpu().clone(), factors.detach().float().cpu().clone()


def split_prior_state(sd: dict) -> tuple[dict, MixturePrior | None]:
    """(``sd`` without ``prior.*`` entries, the prior they form or None). Raises :class:`PriorError`."""
    own = {k[len(PREFIX):]: v for k, v in sd.items() if str(k).startswith(PREFIX)}
    rest = {k: v for k, v in sd.items() if not str(k).startswith(PREFIX)}
    if not own:
        return rest, None
    extra = sorted(set(own) - set(KEYS))
    missing = [k for k in KEYS if k not in own]
    if extra or missing:
        raise PriorError("the mixture prior's tensors are incomplete: "
                         + "; ".join(p for p in (f"missing {', '.join(PREFIX + m for m in missing)}" if missing else "",
                                                 f"unexpected {', '.join(PREFIX + e for e in extra)}" if extra else "")
                                     if p))
    return rest, MixturePrior(own["weights"], own["means"], own["factors"])
