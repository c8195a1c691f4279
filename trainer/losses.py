"""FusionNet training losses (paper Sec. 4.4, Eq. 3-9), one function each.

Conventions shared by every loss:

* every norm is computed per image and the batch mean is returned;
* ``||x||_2`` is the plain Euclidean norm (NOT squared) and ``||x||_1`` the sum
  of absolute values, exactly as written in the paper;
* masks are soft masks in [0, 1], ``[B, H, W]`` (``[B, 1, H, W]`` accepted);
* denominators are clamped to at least ``eps_div`` (1e-8) so an empty region
  gives 0 instead of NaN;
* ``region_weights=(l1, l2)`` multiplies the term that concerns region R1 /
  R2 (the *Favored* configuration of A.2 uses unequal per-region lambdas);
  ``per_region=True`` returns the two terms unweighted instead of their sum.

Style codes may be :class:`~sfeditor.model.style_code.StyleCode` or flat ``[B, |S|]`` tensors.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from sfeditor.fusion.latent_blender import BlendCoefficients
from sfeditor.model.style_code import StyleCode

EPS_DIV = 1e-8
LOSS_NAMES = ("mask", "local", "align_reg", "fusion")


def _mask(m: torch.Tensor, name: str) -> torch.Tensor:
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"{name} must be a [B, H, W] mask, got {tuple(m.shape)}")
    return m


def _flat(s) -> torch.Tensor:
    if isinstance(s, StyleCode):
        return s.flat()
    if isinstance(s, torch.Tensor):
        return s if s.ndim == 2 else s.reshape(s.shape[0], -1)
    raise TypeError(f"expected a StyleCode or a tensor, got {type(s).__name__}")


def _combine(t1: torch.Tensor, t2: torch.Tensor, region_weights, per_region: bool):
    if per_region:
        return t1, t2
    w1, w2 = (1.0, 1.0) if region_weights is None else region_weights
    return w1 * t1 + w2 * t2


# ------------------------------------------------------------------ Eq. 3
def mask_loss(m1_result: torch.Tensor, m2_result: torch.Tensor, m1_align: torch.Tensor,
              m2_align: torch.Tensor, eps_div: float = EPS_DIV) -> torch.Tensor:
    r"""Mask loss, Eq. 3.

    .. math::
        d_1 = \|m_1(I_{result}) - m_1(I_{align})\|_1,\quad
        d_2 = \|m_2(I_{result}) - m_2(I_{align})\|_1,\quad
        \mathcal{L}_{mask} = \frac{d_1 + d_2}{\|m_1(I_{align}) + m_2(I_{align})\|_1}

    Masks are ``[B, H, W]``; L1 norms sum over pixels of each image; batch mean.
    In stage 1 pass the masks of I'_1 / I'_2 as "result" (the trainer decides).
    """
    m1r, m2r = _mask(m1_result, "m1_result"), _mask(m2_result, "m2_result")
    m1a, m2a = _mask(m1_align, "m1_align"), _mask(m2_align, "m2_align")
    if not (m1r.shape == m2r.shape == m1a.shape == m2a.shape):
        raise ValueError("all four masks must have the same shape")
    d1 = (m1r - m1a).abs().sum(dim=(1, 2))
    d2 = (m2r - m2a).abs().sum(dim=(1, 2))
    denom = (m1a + m2a).abs().sum(dim=(1, 2)).clamp_min(eps_div)
    return ((d1 + d2) / denom).mean()


# ------------------------------------------------------------------ Eq. 4
def perturb(s, s_rnd, eps: float = 0.1):
    r"""Perturbation of Eq. 4: :math:`\tilde s = s + \varepsilon (s_{rnd} - s)` (StyleCode or tensor)."""
    if isinstance(s, StyleCode):
        return s.lerp(s_rnd, eps)
    return s + eps * (s_rnd - s)


# ------------------------------------------------------------------ Eq. 5
def localization_loss(i_result: torch.Tensor, i_tilde1: torch.Tensor, i_tilde2: torch.Tensor,
                      m1: torch.Tensor, m2: torch.Tensor, region_weights: Sequence[float] | None = None,
                      per_region: bool = False, eps_div: float = EPS_DIV, reference_size: int | None = None):
    r"""Localization loss, Eq. 5.

    .. math::
        \mathcal{L}_{local} =
        \frac{\|m_2(I_{result}) \cdot I_{result} - m_2(I_{result}) \cdot I_{\tilde 1}\|_2}{\|m_2(I_{result})\|_1}
        + \frac{\|m_1(I_{result}) \cdot I_{result} - m_1(I_{result}) \cdot I_{\tilde 2}\|_2}{\|m_1(I_{result})\|_1}

    ``i_tilde1`` is the image of fuse(s~1, s2, s_align), ``i_tilde2`` of fuse(s1, s~2, s_align)
    (:func:`perturb`).  Images ``[B, C, H, W]``; masks ``m1 = m1(I_result)``, ``m2 = m2(I_result)``
    ``[B, H, W]`` at the image's resolution, broadcast over the colour channels.  The
    numerator is the L2 norm (not squared) over C x H x W of each image; the denominator
    the mask's L1 norm over H x W (pixels, not pixels x channels); batch mean.

    Region terms: the R1 term is the m1 term (R1 must not change when s2 is perturbed),
    the R2 term the m2 term; ``region_weights = (lambda_R1, lambda_R2)``.

    Resolution: a change of δ per pixel and channel over a region of n pixels scores
    δ·sqrt(C / n), so the same edit scores 16x higher on a 64 px image than on a 1024 px one
    and A.2's λ_local acts 16x stronger on the toy domains.  ``reference_size`` R multiplies
    each term by sqrt(H·W) / R: the score of an H x W image is then the literal score of the
    same edit drawn at R x R (R = 1024, FFHQ, where A.2's λ were set: unchanged there).
    """
    if not (i_result.ndim == 4 and i_result.shape == i_tilde1.shape == i_tilde2.shape):
        raise ValueError("images must be three [B, C, H, W] tensors of the same shape")
    m1, m2 = _mask(m1, "m1"), _mask(m2, "m2")
    if m1.shape != m2.shape or m1.shape != (i_result.shape[0],) + tuple(i_result.shape[2:]):
        raise ValueError(f"masks {tuple(m1.shape)} must be [B, H, W] of the images {tuple(i_result.shape)} "
                         "(resize them first)")

    def term(m, other):
        mm = m[:, None]
        num = (mm * i_result - mm * other).flatten(1).norm(p=2, dim=1)
        return (num / m.abs().sum(dim=(1, 2)).clamp_min(eps_div)).mean()

    r2 = term(m2, i_tilde1)
    r1 = term(m1, i_tilde2)
    if reference_size:
        scale = (i_result.shape[-2] * i_result.shape[-1]) ** 0.5 / float(reference_size)
        r1, r2 = r1 * scale, r2 * scale
    return _combine(r1, r2, region_weights, per_region)


# ------------------------------------------------------------------ Eq. 6
def align_reg_loss(*q, reduction: str = "sum") -> torch.Tensor:
    r"""Common (alignment) regularisation, Eq. 6: :math:`\mathcal{L}_{alignReg} = \|q_{align}\|_1`.

    ``q``: one or more ``[B, ...]`` tensors or :class:`BlendCoefficients` (only the
    blended, coarse layers count), e.g. both halves of ``FusionOutput.q_align``
    (LB_align runs for s1 and for s2; together they are q_align).

    reduction="sum" (default) is the literal L1 norm: the sum over every channel of
    every given q, per image, then the batch mean.  This is the normalisation
    that makes the paper's lambda_alignReg = 6 / 1 (A.2) meaningful: each
    coarse channel then gets a constant pull of lambda toward 0, the same order as
    the per-channel gradients of the fusion loss (lambda 375, an unnormalised L2 norm)
    and smaller than the mask loss's (lambda 30,000) on the few layout channels.
    With a channel mean (``reduction="mean"``) lambda = 6 would be a few thousand
    times weaker than every other term and would not prevent the trivial q = 1.
    """
    if not q:
        raise ValueError("align_reg_loss needs at least one q")
    parts = []
    for t in q:
        if isinstance(t, BlendCoefficients):
            t = t.flat()
        if isinstance(t, (tuple, list)):
            parts.extend(x.flat() if isinstance(x, BlendCoefficients) else x.reshape(x.shape[0], -1) for x in t)
            continue
        parts.append(t.reshape(t.shape[0], -1))
    x = torch.cat(parts, dim=1).abs()
    if reduction == "sum":
        return x.sum(dim=1).mean()
    if reduction == "mean":
        return x.mean()
    raise ValueError("reduction must be 'sum' or 'mean'")


# ------------------------------------------------------------------ Eq. 7
def fusion_loss(s_result, s1, s2, w1: torch.Tensor, w2: torch.Tensor,
                region_weights: Sequence[float] | None = None, per_region: bool = False):
    r"""Fusion loss, Eq. 7.

    .. math::
        \mathcal{L}_{fusion} = \|w_{R_1} \odot (s_{result} - s_1)\|_2 + \|w_{R_2} \odot (s_{result} - s_2)\|_2

    ``w1``, ``w2``: channel weights of Eq. 8 (:math:`w_{R_i}(c) = 2\max(M_{R_i,c}, 0.5) - 1`),
    flat ``[B, |S|]`` or ``[|S|]`` (or StyleCodes).  L2 norm (not squared) over the |S|
    channels of each image, batch mean.  ``region_weights = (lambda_R1, lambda_R2)``.
    In stages 1 / 2 the trainer passes s'1 / s'2 in place of s_result / the targets.
    """
    sr, a, b = _flat(s_result), _flat(s1), _flat(s2)
    w1, w2 = _flat(w1) if isinstance(w1, StyleCode) else w1, _flat(w2) if isinstance(w2, StyleCode) else w2
    if not (sr.shape == a.shape == b.shape):
        raise ValueError("s_result, s1 and s2 must have the same shape")
    for w, n in ((w1, "w1"), (w2, "w2")):
        if w.shape[-1] != sr.shape[1] or w.ndim not in (1, 2):
            raise ValueError(f"{n} must be [|S|] or [B, |S|] with |S| = {sr.shape[1]}, got {tuple(w.shape)}")
    r1 = (w1 * (sr - a)).norm(p=2, dim=1).mean()
    r2 = (w2 * (sr - b)).norm(p=2, dim=1).mean()
    return _combine(r1, r2, region_weights, per_region)


# ------------------------------------------------------------------ Eq. 9
def total_loss(terms: Mapping[str, torch.Tensor | Sequence[torch.Tensor]],
               lambdas: Mapping[str, float | Sequence[float]], return_parts: bool = False):
    r"""Total loss, Eq. 9.

    .. math::
        \mathcal{L} = \lambda_{mask}\mathcal{L}_{mask} + \lambda_{local}\mathcal{L}_{local}
        + \lambda_{alignReg}\mathcal{L}_{alignReg} + \lambda_{fusion}\mathcal{L}_{fusion}

    terms: ``{"mask", "local", "align_reg", "fusion"}`` -> scalar, or an (R1, R2) pair from
    ``per_region=True``; lambdas: the same keys -> a float, or an (R1, R2) pair for the
    per-region terms (Favored; an equal pair also works with a scalar term).  A term whose lambda is missing or 0 is skipped; a
    lambda without a term is ignored (e.g. the stage's config lists more losses).
    With ``return_parts`` also returns ``{name: weighted term}``.
    """
    unknown = sorted(set(terms) - set(LOSS_NAMES))
    if unknown:
        raise ValueError(f"unknown loss terms {unknown}; expected {LOSS_NAMES}")
    total = None
    parts: dict[str, torch.Tensor] = {}
    for name in LOSS_NAMES:
        if name not in terms or terms[name] is None:
            continue
        lam = lambdas.get(name, 0.0)
        t = terms[name]
        pair_t = isinstance(t, (tuple, list))
        pair_l = isinstance(lam, (tuple, list))
        if pair_l and not pair_t:
            if len(lam) != 2 or lam[0] != lam[1]:
                raise ValueError(f"unequal per-region lambdas for {name!r} need per-region terms "
                                 "(per_region=True)")
            lam, pair_l = lam[0], False
        if pair_t and len(t) != 2 or pair_l and len(lam) != 2:
            raise ValueError(f"{name!r}: per-region terms and lambdas are (R1, R2) pairs")
        if pair_t:
            l1, l2 = lam if pair_l else (lam, lam)
            if l1 == 0 and l2 == 0:
                continue
            v = l1 * t[0] + l2 * t[1]
        else:
            if lam == 0:
                continue
            v = lam * t
        parts[name] = v
        total = v if total is None else total + v
    if total is None:
        ref = next((x for x in terms.values() if isinstance(x, torch.Tensor)), None)
        total = torch.zeros(()) if ref is None else ref.new_zeros(())
    return (total, parts) if return_parts else total
