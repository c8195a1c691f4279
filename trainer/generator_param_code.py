"""Generator v5's parameter code: each block of w is computed from its own group's renderer parameters.

Issue 38, measured on two autoencoder runs (``docs/experiments/toy-domains-v5.md``): a code taken
from the image by an encoder does not hold the small regions (the eyes' mean colour is read from it
with R² 0.09-0.31, skin and hair with 0.98), so the generator draws the eyes and mouth as a template
tinted by the skin, whatever its channels.  The toy renderer knows which parameter draws which region
(``sfeditor.toy.PARAM_GROUPS``), so the training code need not be guessed from pixels:

    w = [P_global(pose) | P_bg(bg parameters) | ... | P_mouth(mouth parameters)]

one small MLP per group (:class:`ParamCode`).  Block k of w then holds region k's parameters and
nothing else, by construction, and with the block-sparse affines (:mod:`trainer.generator_blocks`)
only region k's style channels read it: the generator must draw the eyes from the eyes' block.
A region swap of codes is exactly the code of the renderer's swap (``render_swap`` redraws one
group's parameters), so the region-swap loss's target is plain reconstruction here; its anchor is not:
measured at step 500 of try 3 without it, the eyes block's channels at 32-64 px still changed the
pixels outside the eyes by 0.017 per pixel against 0.056 inside (0.3x), far too much for a region of
2 % of the image.  The anchor asks the pixels a swap leaves alone to stay what the generator draws
for A (``trainer.generator_losses.region_swap_loss``), with B's parameter codes as the donors.

The result is an ordinary StyleGAN2 (the MLPs are training-only): its S space is what the FusionNets
learn to separate, and the image encoder (trained alongside to regress these codes) starts
inversions.  The mapping's prior is fitted to parameter codes of fresh renders
(:func:`param_codes`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_CATEGORIES = 16     # an integer-valued parameter with 3..16 values is one-hot encoded (a choice)


class ParamCode(nn.Module):
    """w from the renderer's parameters, one MLP per group of :func:`sfeditor.toy.swap_groups`.

    Parameters are standardised with statistics of held-out renders; a categorical choice (hair
    style, body type) is one-hot.  A parameter the renderer did not draw for a batch (a dot
    pattern's frequency when no background has dots) reads as 0: it does not change the image."""

    def __init__(self, domain: str, blocks: torch.Tensor, groups: tuple[str, ...], hidden: int = 128,
                 n_stats: int = 2048):
        super().__init__()
        from sfeditor.toy import param_group, render

        from .generator_data import HELDOUT_SEED_OFFSET

        _, _, prm = render(domain, HELDOUT_SEED_OFFSET + 800_000 + np.arange(n_stats), size=16,
                           return_params=True)
        self.domain, self.groups = domain, tuple(groups)
        self.names = sorted(prm)
        self.categories: dict[str, int] = {}
        mean, std = [], []
        for k in self.names:
            v = prm[k].astype(np.float64)
            values = np.unique(v)
            if np.all(v == np.round(v)) and 3 <= len(values) <= MAX_CATEGORIES and v.min() >= 0:
                self.categories[k] = int(v.max()) + 1
            mean.append(v.mean())
            std.append(v.std() + 1e-3)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.members = {g: [k for k in self.names if param_group(domain, k) == g] for g in self.groups}
        self.index = [torch.nonzero(blocks[i] > 0).flatten() for i in range(len(self.groups))]
        self.style_dim = int(blocks.shape[1])
        self.mlps = nn.ModuleList()
        for i, g in enumerate(self.groups):
            width = max(1, sum(self.categories.get(k, 1) for k in self.members[g]))
            self.mlps.append(nn.Sequential(nn.Linear(width, hidden), nn.LeakyReLU(0.2),
                                           nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                           nn.Linear(hidden, len(self.index[i]))))

    def features(self, params: dict, group: str, n: int, device) -> torch.Tensor:
        """The MLP input of ``group``: standardised scalars and one-hot choices, [n, width]."""
        cols = []
        for k in self.members[group]:
            if k in params:
                v = torch.as_tensor(np.asarray(params[k], np.float32), device=device)
            else:
                v = None
            if k in self.categories:
                c = self.categories[k]
                cols.append(torch.zeros(n, c, device=device) if v is None else
                            F.one_hot(v.long().clamp(0, c - 1), c).float())
            else:
                j = self.names.index(k)
                cols.append(torch.zeros(n, 1, device=device) if v is None else
                            ((v - self.mean[j]) / self.std[j])[:, None])
        return torch.cat(cols, 1) if cols else torch.zeros(n, 1, device=device)

    def forward(self, params: dict) -> torch.Tensor:
        """[n, style_dim] codes of the renders whose parameters are ``params`` (name -> [n])."""
        n = len(next(iter(params.values())))
        dev = self.mean.device
        w = torch.zeros(n, self.style_dim, device=dev)
        for i, g in enumerate(self.groups):
            w = w.index_copy(1, self.index[i].to(dev), self.mlps[i](self.features(params, g, n, dev)))
        return w


@torch.no_grad()
def param_codes(P: ParamCode, domain: str, n: int, dev) -> torch.Tensor:
    """The parameter codes of ``n`` fit renders (the seeds :func:`trainer.mapping_fit.fit_batch`
    renders; whole batches of 64, at least one): what the mapping's prior is fitted to."""
    from sfeditor.toy import render

    from .mapping_fit import FIT_BATCH, FIT_SEED_OFFSET
    from .generator_data import step_seeds

    out = []
    for i in range(max(1, n // FIT_BATCH)):
        _, _, prm = render(domain, step_seeds(FIT_SEED_OFFSET + i, FIT_BATCH), size=16, return_params=True)
        out.append(P(prm).float().to(dev))
    return torch.cat(out)


def distill_param_code(P: ParamCode, E: nn.Module, domain: str, size: int, steps: int, dev, log,
                       batch: int = 64, lr: float = 2e-3, cancel=None) -> float:
    """Fit ``P`` to an encoder's codes of the same renders (``init_from``: the generator then starts
    from codes it already draws); returns the last relative error.  ``cancel`` (a
    :class:`trainer.common.CancelToken`) stops it between steps; a rerun fits again (a few minutes)."""
    from .common import Cancelled

    from sfeditor.images.imageio import from_uint8
    from sfeditor.toy import render

    from .generator_data import step_seeds

    opt = torch.optim.Adam(P.parameters(), lr=lr)
    err = float("nan")
    for step in range(steps):
        if cancel is not None and cancel.requested:
            raise Cancelled(f"stopped while fitting the parameter code (step {step}); rerun the same command")
        images, _, prm = render(domain, step_seeds(step, batch, 30_000_000), size=size, return_params=True)
        with torch.no_grad():
            target = E(from_uint8(images).to(dev)).float()
        loss = F.mse_loss(P(prm), target) / target.var(0).mean().clamp_min(1e-8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        err = float(loss.detach())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"parameter code: distilled onto the encoder's codes, step {step + 1}/{steps}, relative error {err:.3f}")
    return err
