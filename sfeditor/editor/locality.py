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

Reading a heatmap as numbers (issue 38, item 2). For an edit of region k with
base image A and edited image E and their label maps:

* U = (lab_A == k) | (lab_E == k): the region of *either* image, so a new
  hairstyle or an opening mouth is not charged as leakage;
* ring = dilate3x3(U) & ~erode3x3(U): the 1-px band along U's border (anti-
  aliasing and label noise), left out of numerator and denominator;
* union locality = sum(d[U & ~ring]) / sum(d[~ring]), d = mean over RGB of |E - A|;
* mean in-region change = mean(d[U & ~ring]): an edit that does nothing has
  change 0 (a share alone would not show that);
* the old reading (kept for history): sum(d[lab_A == k]) / sum(d).

:func:`read_edit` gives these per edit; :func:`ratio_se` pools edits (ratio of
sums) with the delta-method standard error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .composition import Composition
from .render_service import private_hierarchy
from ..jobs import check_cancel
from ..model.style_code import StyleCode

__all__ = ["EditReading", "HeatmapUpdate", "change_map", "locality_heatmap", "ratio_se", "read_edit",
           "union_ring", "region_leaves"]

MODES = ("fixed", "random")


def change_map(base: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean absolute change over channels: ``[B, C, H, W]`` x2 -> ``[B, H, W]``."""
    if base.shape != edited.shape or base.ndim != 4:
        raise ValueError("base and edited must be [B, C, H, W] of the same shape")
    return (edited.float() - base.float()).abs().mean(dim=1)


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(mask[:, None].float(), 3, 1, 1)[:, 0] > 0


def _erode(mask: torch.Tensor) -> torch.Tensor:
    # max-pool pads with -inf: beyond the image edge counts as inside (the frame is no region border)
    return ~_dilate(~mask.bool())


def union_ring(base_mask: torch.Tensor, edit_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inner, ring)`` of U = base | edit (``[B, H, W]`` bool each): ring = dilate3x3(U) & ~erode3x3(U),
    inner = U & ~ring (= erode3x3(U))."""
    if base_mask.shape != edit_mask.shape or base_mask.ndim != 3:
        raise ValueError("base and edit masks must be [B, H, W] of the same shape")
    u = base_mask.bool() | edit_mask.bool()
    inner = _erode(u)
    return inner, _dilate(u) & ~inner


@dataclass(frozen=True)
class EditReading:
    """Per-edit sums (``[B]`` float64) of one region edit's change map ``d`` (module docstring)."""

    inside: torch.Tensor        # sum d[U & ~ring]
    total: torch.Tensor         # sum d[~ring]
    area: torch.Tensor          # |U & ~ring|
    base_inside: torch.Tensor   # old reading: sum d[lab_A == k] ...
    base_total: torch.Tensor    # ... / sum d
    base_area: torch.Tensor     # |lab_A == k|

    @property
    def locality(self) -> float:
        """Union locality of the edits pooled (NaN when nothing changed)."""
        return ratio_se(self.inside, self.total)[0]

    @property
    def region_change(self) -> float:
        """Mean in-region change of the edits pooled (NaN for an empty region)."""
        return ratio_se(self.inside, self.area)[0]

    @property
    def base_locality(self) -> float:
        return ratio_se(self.base_inside, self.base_total)[0]


def read_edit(change: torch.Tensor, base_mask: torch.Tensor, edit_mask: torch.Tensor) -> EditReading:
    """The union reading and the old base-region reading of ``change`` (``[B, H, W]``, :func:`change_map`)
    for region masks of the base and the edited images (``[B, H, W]`` bool)."""
    if change.shape != base_mask.shape:
        raise ValueError(f"change {tuple(change.shape)} and masks {tuple(base_mask.shape)} differ in shape")
    d = change.double()
    inner, ring = union_ring(base_mask.to(d.device), edit_mask.to(d.device))
    base = base_mask.to(d.device).double()
    inner_f = inner.double()
    return EditReading(inside=(d * inner_f).flatten(1).sum(1), total=(d * (~ring).double()).flatten(1).sum(1),
                       area=inner_f.flatten(1).sum(1), base_inside=(d * base).flatten(1).sum(1),
                       base_total=d.flatten(1).sum(1), base_area=base.flatten(1).sum(1))


def ratio_se(y, x) -> tuple[float, float]:
    """R = sum y / sum x over edits and its standard error by the delta method,
    sqrt(sum_i ((y_i - R x_i) / mean x)^2 / (n (n - 1))); NaN where undefined (n < 2: no error)."""
    y = np.asarray(torch.as_tensor(y, dtype=torch.float64).cpu().reshape(-1), dtype=np.float64)
    x = np.asarray(torch.as_tensor(x, dtype=torch.float64).cpu().reshape(-1), dtype=np.float64)
    if len(x) != len(y):
        raise ValueError("y and x must have one value per edit")
    if len(x) == 0 or x.sum() <= 0:
        return float("nan"), float("nan")
    r = float(y.sum() / x.sum())
    if len(x) < 2:
        return r, float("nan")
    d = (y - r * x) / x.mean()
    return r, float(np.sqrt((d ** 2).sum() / (len(x) * (len(x) - 1))))


def region_leaves(tree, name: str) -> list[str]:
    """The leaves under ``name`` in a region tree (:class:`sfeditor.regions.RegionNode`)."""
    for n in tree:
        if n.name == name:
            out, stack = [], [n]
            while stack:
                m = stack.pop(0)
                out += [m.name] if m.is_leaf else []
                stack = list(m.children) + stack
            return out
    raise KeyError(f"no node {name!r} in the tree")


@dataclass(frozen=True)
class HeatmapUpdate:
    node: str
    mode: str
    done: int                 # samples averaged so far
    total: int
    values: np.ndarray        # float32 [H, W], running mean
    note: str = ""
    locality: float = float("nan")        # union locality so far (region labels given; module docstring)
    region_change: float = float("nan")   # mean in-region change so far
    base_locality: float = float("nan")   # the old reading: the base image's region only


@torch.no_grad()
def locality_heatmap(G, hierarchy, comp: Composition, node: str, mode: str = "fixed", samples: int = 32,
                     batch: int = 8, seed: int = 0, cancel=None,
                     max_resolution: int | None = None, region_model=None) -> Iterator[HeatmapUpdate]:
    """Yield running-mean heatmaps for resampling ``node``'s code (see the module docstring).

    ``max_resolution`` computes the map on draft images of at most that size
    (``Generator.synthesis``): the app's overlay of a 1024 px model uses 256 px, which
    makes each sample about 4x cheaper (``bench/draft_synthesis.py``).
    ``region_model`` (:class:`sfeditor.regions.masks.RegionModel`): label base and edited images with
    its hard masks and add the union locality, the mean in-region change and the old
    base-region reading to every update (full-size images only; NaN on drafts)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    comp.state(node)
    if samples < 1 or batch < 1:
        raise ValueError("samples and batch must be >= 1")
    h = private_hierarchy(hierarchy)
    collapsed = comp.collapsed_nodes()
    need = h.required_codes(collapsed) if h is not None else [comp.tree.name]
    note = ""
    if node not in need:
        note = f"{node}'s code is not used (a collapsed node or a node without a net above it passes its own code)"
    gen = torch.Generator().manual_seed(seed)
    psi = comp.truncation

    ids = None
    if region_model is not None and max_resolution is None:
        want = set(region_leaves(comp.tree, node))
        ids = torch.tensor([i for i, leaf in enumerate(region_model.leaves) if leaf in want], dtype=torch.long)
        ids = ids if len(ids) else None       # the regions file names none of the node's leaves

    def fuse(codes: dict[str, StyleCode]) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = h(codes, collapsed, use_cache=False) if h is not None else codes[comp.tree.name]
        if ids is None:
            return G.synthesis(s, noise_mode="const", max_resolution=max_resolution), None
        img, feats = G.synthesis(s, noise_mode="const", return_features=True)
        lab = region_model.hard_labels(size=img.shape[-1], features=feats)
        return img, torch.isin(lab, ids.to(lab.device))

    base_fixed = mask_fixed = None
    if mode == "fixed":
        fixed_codes = {n: comp.code_for(n, G) for n in need}
        base_fixed, mask_fixed = fuse(fixed_codes)
    acc, done, sums = None, 0, np.zeros(6)
    while done < samples:
        check_cancel(cancel, "heatmap cancelled")
        b = min(batch, samples - done)
        if mode == "fixed":
            codes = {n: fixed_codes[n].repeat(b) for n in need}
            base = base_fixed.expand(b, -1, -1, -1)
            base_mask = None if mask_fixed is None else mask_fixed.expand(b, -1, -1)
        else:
            codes = {n: G.styles(G.sample_w(b, truncation=psi, generator=gen)) for n in need}
            base, base_mask = fuse(codes)
        if node in need:
            codes[node] = G.styles(G.sample_w(b, truncation=psi, generator=gen))
            edited, edit_mask = fuse(codes)
            ch = change_map(base, edited)
            part = ch.sum(0)
            if base_mask is not None:
                r = read_edit(ch, base_mask, edit_mask)
                sums += [float(t.sum()) for t in (r.inside, r.total, r.area, r.base_inside, r.base_total,
                                                  r.base_area)]
        else:
            part = torch.zeros(base.shape[-2:], device=base.device)
        acc = part if acc is None else acc + part
        done += b
        nan = float("nan")
        yield HeatmapUpdate(node, mode, done, samples, (acc / done).float().cpu().numpy(), note,
                            locality=sums[0] / sums[1] if sums[1] > 0 else nan,
                            region_change=sums[0] / sums[2] if sums[2] > 0 else nan,
                            base_locality=sums[3] / sums[4] if sums[4] > 0 else nan)
