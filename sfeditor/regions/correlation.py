"""The channel-region matrix M (paper Eq. 1) and the fusion-loss weights w_R (Eq. 8).

Eq. 1 (Collins et al.): ``M[k, c] = 1/(NWH) sum_{n,h,w} A[n,c,h,w]^2 U[n,k,h,w]``,
"normalised such that M[k, c] = 1 denotes that the influence of channel c is
fully contained in region k" and 0.5 means equal influence over k and its
complement.  The normalisation that gives exactly this reading is dividing by
the channel's total squared activation, so what is implemented is, per image n:

    M_n[k, c] = sum_{h,w} A[n,c,h,w]^2 U[n,k,h,w]  /  sum_{h,w} A[n,c,h,w]^2

(the share of channel c's activation energy that lies in region k; over a
partition of the image into regions the shares sum to 1), and ``mean_correlation``
averages M_n over the N images (each image weighs the same; the 1/(NWH) of
Eq. 1).  A channel with no activation at all gets M = 0 everywhere.

A is the feature map a style channel modulates: the *input* of its layer,
for every conv AND tRGB layer (``G.synthesis(..., return_features=True)``), so
channel c of M is channel c of the flat StyleCode (conv layers then tRGB
layers, |S| in all).  U (region masks, usually at 64x64) is resized to each
layer's resolution: area-averaged when shrinking (a low-resolution cell
belongs to region k by the fraction of it that k covers, so a partition stays a
partition), nearest when enlarging.

Eq. 8: ``w_R(c) = 2 max(M[R, c], 0.5) - 1``: 0 for channels with at most
half of their influence in R, rising linearly to 1 for channels entirely in R.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..model.style_code import StyleCode

EPS = 1e-12


def resize_regions(U: torch.Tensor, size: int) -> torch.Tensor:
    """Region maps ``[B, K, H, W]`` -> ``[B, K, size, size]`` (area average down, nearest up)."""
    if U.shape[-1] == size and U.shape[-2] == size:
        return U
    if U.shape[-1] > size:
        return F.adaptive_avg_pool2d(U, size)
    return F.interpolate(U, size=(size, size), mode="nearest")


def layer_correlation(A: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """One layer: activations ``[B, C, h, w]``, regions ``[B, K, h, w]`` -> ``[B, K, C]`` shares."""
    if A.shape[0] != U.shape[0] or A.shape[-2:] != U.shape[-2:]:
        raise ValueError(f"activations {tuple(A.shape)} and regions {tuple(U.shape)} must share B, h, w")
    a2 = A.float().pow(2)
    inside = torch.einsum("bchw,bkhw->bkc", a2, U.float())
    total = a2.sum((2, 3))[:, None, :]                                 # [B, 1, C]
    return inside / total.clamp_min(EPS) * (total > EPS)


def correlation(features: dict, U: torch.Tensor) -> torch.Tensor:
    """Per-image M ``[B, K, |S|]`` for every style channel (conv layers, then tRGB layers).

    ``features``: ``{"conv": [...], "rgb": [...]}`` from ``G.synthesis(s, return_features=True)``;
    ``U``: region masks ``[B, K, H, W]`` (hard 0/1, or fractional).
    """
    maps = list(features["conv"]) + list(features["rgb"])
    return torch.cat([layer_correlation(A, resize_regions(U, A.shape[-1])) for A in maps], dim=2)


def mean_correlation(M: torch.Tensor) -> torch.Tensor:
    """Average per-image matrices ``[N, K, |S|]`` over the images -> ``[K, |S|]``."""
    return M.mean(0)


def region_weights(M: torch.Tensor, region: int | Sequence[int]) -> torch.Tensor:
    """Eq. 8: ``w_R = 2 max(M[R], 0.5) - 1`` for region row ``region`` of ``M [..., K, |S|]``.

    A list of rows gives the union of those (disjoint) regions: their M rows are summed.
    """
    if isinstance(region, int):
        m = M[..., region, :]
    else:
        idx = torch.as_tensor(list(region), dtype=torch.long, device=M.device)
        if idx.numel() == 0:
            raise ValueError("region must name at least one row")
        m = M.index_select(-2, idx).sum(-2)
    return 2 * torch.clamp(m, min=0.5) - 1


@torch.no_grad()
def code_correlation(model, s: StyleCode, regions: Sequence[str] | None = None, batch: int = 16) -> torch.Tensor:
    """Per-image M ``[B, R, |S|]`` of codes ``s`` against the hard masks of ``regions``.

    ``model`` is a :class:`sfeditor.regions.masks.RegionModel`; regions default to its
    leaves (a partition), and an internal node (e.g. "face") is the union of
    its leaves.  One synthesis pass per batch gives both the features and masks.
    """
    out = []
    for i in range(0, len(s), batch):
        part = s[i:i + batch]
        _, feats = model.G.synthesis(part, model.noise_mode, return_features=True)
        U = model.hard_masks(regions=regions, size=model.size, features=feats)
        out.append(correlation(feats, U))
    return torch.cat(out)


def layer_means(M: torch.Tensor, layout) -> torch.Tensor:
    """``[..., |S|]`` -> ``[..., n_layers]``: the mean over each S layer's channels (conv, then tRGB)."""
    parts = torch.split(M, list(layout.dims), dim=-1)
    return torch.stack([p.mean(-1) for p in parts], dim=-1)


__all__ = ["correlation", "layer_correlation", "resize_regions", "mean_correlation", "region_weights",
           "code_correlation", "layer_means"]
