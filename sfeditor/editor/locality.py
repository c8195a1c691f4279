"""Locality heatmaps of one node's code in a composition (paper Sec. 5, Fig. 10 and Fig. 11).

The heatmap of a node is the per-pixel mean absolute image change (mean over
RGB, images in [-1, 1]) when that node's code alone is resampled:

* ``"fixed"`` base (Fig. 11): the composition being edited stays as it is and
  only the node's code is redrawn;
* ``"random"`` base (Fig. 10): every node is drawn afresh for each sample, then
  the node's code is redrawn.

:func:`locality_heatmap` yields a running average after every batch, so a
viewer can draw it progressively; it honours a cancel token and works on a
private copy of the hierarchy (the live preview's caches are left alone).
The trainer's evaluation (``sfeditor-train evaluate``) uses :func:`change_map`
as well.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .composition import Composition
from ..jobs import check_cancel
from ..model.style_code import StyleCode

__all__ = ["HeatmapUpdate", "change_map", "locality_heatmap"]

MODES = ("fixed", "random")


def change_map(base: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean absolute change over channels: ``[B, C, H, W]`` x2 -> ``[B, H, W]``."""
    if base.shape != edited.shape or base.ndim != 4:
        raise ValueError("base and edited must be [B, C, H, W] of the same shape")
    return (edited.float() - base.float()).abs().mean(dim=1)


@dataclass(frozen=True)
class HeatmapUpdate:
    node: str
    mode: str
    done: int                 # samples averaged so far
    total: int
    values: np.ndarray        # float32 [H, W], running mean
    note: str = ""


@torch.no_grad()
def locality_heatmap(G, hierarchy, comp: Composition, node: str, mode: str = "fixed", samples: int = 32,
                     batch: int = 8, seed: int = 0, cancel=None,
                     max_resolution: int | None = None) -> Iterator[HeatmapUpdate]:
    """Yield running-mean heatmaps for resampling ``node``'s code (see the module docstring).

    ``max_resolution`` computes the map on draft images of at most that size
    (``Generator.synthesis``): the app's overlay of a 1024 px model uses 256 px, which
    makes each sample about 4x cheaper (``bench/draft_synthesis.py``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    comp.state(node)
    if samples < 1 or batch < 1:
        raise ValueError("samples and batch must be >= 1")
    h = copy.deepcopy(hierarchy) if hierarchy is not None else None
    collapsed = comp.collapsed_nodes()
    need = h.required_codes(collapsed) if h is not None else [comp.tree.name]
    note = ""
    if node not in need:
        note = f"{node}'s code is not used (a collapsed node or a node without a net above it passes its own code)"
    gen = torch.Generator().manual_seed(seed)
    psi = comp.truncation

    def fuse(codes: dict[str, StyleCode]) -> torch.Tensor:
        s = h(codes, collapsed, use_cache=False) if h is not None else codes[comp.tree.name]
        return G.synthesis(s, noise_mode="const", max_resolution=max_resolution)

    base_fixed = None
    if mode == "fixed":
        fixed_codes = {n: comp.code_for(n, G) for n in need}
        base_fixed = fuse(fixed_codes)
    acc, done = None, 0
    while done < samples:
        check_cancel(cancel, "heatmap cancelled")
        b = min(batch, samples - done)
        if mode == "fixed":
            codes = {n: fixed_codes[n].repeat(b) for n in need}
            base = base_fixed.expand(b, -1, -1, -1)
        else:
            codes = {n: G.styles(G.sample_w(b, truncation=psi, generator=gen)) for n in need}
            base = fuse(codes)
        if node in need:
            codes[node] = G.styles(G.sample_w(b, truncation=psi, generator=gen))
            edited = fuse(codes)
            part = change_map(base, edited).sum(0)
        else:
            part = torch.zeros(base.shape[-2:], device=base.device)
        acc = part if acc is None else acc + part
        done += b
        yield HeatmapUpdate(node, mode, done, samples, (acc / done).float().cpu().numpy(), note)
