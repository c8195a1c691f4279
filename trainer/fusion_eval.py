"""Locality of a trained StyleFusion hierarchy (``sfeditor-train evaluate``; paper Sec. 5, Sec. 7).

Heatmaps (Fig. 10 / Fig. 11): for a code c of the hierarchy (a region's code, or an
internal node's global code), the per-pixel mean absolute image change when c
alone is resampled,

* ``random`` base (Fig. 10): every composition is drawn afresh, c is redrawn;
* ``fixed`` base (Fig. 11): one composition stays fixed, c is redrawn,

averaged over ``samples`` edits.  Numbers, judged by the toy domain's region
oracle (an independent segmentation net; the regions file's nearest-centroid
masks when there is no oracle):

* locality (issue 38's reading, :mod:`sfeditor.editor.locality`) = the share of the absolute
  pixel change inside the region of the base *or* the edited image, a 1-px ring along
  that union's border left out of both sums; 1.0 = perfectly local; next to it the mean
  change inside the same pixels (an edit that does nothing scores 0, not "local"), and,
  kept so history stays comparable, the old reading: the base image's region only;
* preservation PSNR (dB) of the pixels outside the region, base vs edited
  (images in [-1, 1]; identical pixels are capped at 100 dB);
* region change = the mean absolute change per pixel of the region: how much the
  edit changes what it should.  Locality is a share, so an edit that barely changes
  its region can still be local; Sec. 7's "mode collapse" (Fig. 16b) shows here.

The region of a leaf's code is the leaf; of an internal node's global code,
the union of the node's leaves (the root's global code is reported too, its
region is the whole image, so only its heatmap says something).

Nothing is trained here: ``evaluate`` reads and scores.  The ablation of Sec. 7
(``sfeditor-train ablation``, :mod:`trainer.fusion_ablation`) trains its variants there and
scores them with this module's :func:`ablation_rows`, :func:`ablation_markdown` and
:func:`ablation_figure` (Fig. 16's grids: one row per variant; one child's code changes
along a row).  Toy domains add the renderer's ideal edit under the same reading
(:func:`ideal_edit_readings`) and, with ``--swap-pairs``, swap fidelity
(:mod:`sfeditor.fusion.swap_fidelity`).

Every locality comes with its standard error over the edits.  Two nets or hierarchies
scored with the same seed edit the same sampled codes, so their difference has a *paired*
standard error (:func:`paired_difference`), far smaller than either's own: the ablation
table gives each variant's difference to the full model, and ``--against OTHER`` scores a
second hierarchy of the same tree on the same edits (is a retrained hierarchy better?).
Neither error covers another training draw: ``sfeditor-train ablation --seeds 0 2 ...`` trains (or reloads)
every variant once per seed and adds, per variant, its difference to the full model in each
draw and the standard error of that difference over draws (:func:`ablation_draws`).

Output folder: ``heatmaps-random.png``, ``heatmaps-fixed.png`` (colormap via
``cv2.applyColorMap``, one shared scale per figure; ``*-each.png``: every tile
scaled to its own maximum), ``metrics.json``,
``report.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from sfeditor.atomic import atomic_write_text
from sfeditor.validate import device_arg, int_in
from sfeditor.model.truncation import domain_truncation
from sfeditor.fusion.blend_stats import BlendStats, hierarchy_blend_stats
from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig
from sfeditor.fusion.hierarchy import FusionHierarchy, load_hierarchy
from sfeditor.regions.tree import RegionNode
from sfeditor.images.imageio import make_grid, save_png, to_uint8
from sfeditor.editor.locality import change_map, ratio_se, read_edit
from sfeditor.model.style_code import StyleCode

PSNR_CAP = 100.0
Composer = Callable[[Mapping[str, StyleCode]], StyleCode]


# ---------------------------------------------------------------- metrics
# change_map (per-pixel mean |change|) is the core's, shared with the editor's heatmaps


def locality_share(change: torch.Tensor, inside: torch.Tensor) -> float:
    """Share of the total change (``[B, H, W]``, summed over the batch) inside the region mask.

    1.0 when every changed pixel lies in the region; NaN when nothing changed.
    """
    if change.shape != inside.shape:
        raise ValueError(f"change {tuple(change.shape)} and mask {tuple(inside.shape)} differ in shape")
    total = change.double().sum()
    if total <= 0:
        return float("nan")
    return float((change.double() * inside.double()).sum() / total)


def psnr_outside(base: torch.Tensor, edited: torch.Tensor, inside: torch.Tensor, cap: float = PSNR_CAP) -> torch.Tensor:
    """``[B]`` PSNR (dB) of the pixels outside the region (images in [-1, 1], peak-to-peak 2).

    Unchanged pixels give ``cap``; an image whose region covers every pixel gives NaN.
    """
    out = (~inside.bool()).to(torch.float64)[:, None]                        # [B, 1, H, W]
    d2 = (edited.double().clamp(-1, 1) - base.double().clamp(-1, 1)).pow(2) * out
    n = out.sum((1, 2, 3)) * base.shape[1]
    mse = d2.sum((1, 2, 3)) / n.clamp_min(1)
    psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-30))
    psnr = psnr.clamp(max=cap)
    return torch.where(n > 0, psnr, torch.full_like(psnr, float("nan"))).float()


def mean_finite(x: Sequence[float] | torch.Tensor) -> float:
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    t = t[torch.isfinite(t)]
    return float(t.mean()) if t.numel() else float("nan")


# ------------------------------------------------------------ compositions
def hierarchy_composer(h: FusionHierarchy) -> Composer:
    return lambda codes: h(codes, use_cache=False)


def node_composer(net: FusionNet, child1: str, child2: str, node: str, align: bool = True) -> Composer:
    """A single FusionNet as a composition (``align=False``: the "No Global" variant)."""
    def compose(codes: Mapping[str, StyleCode]) -> StyleCode:
        return net(codes[child1], codes[child2], codes[node] if align else None, align=align, fuse=True).result
    return compose


def leaves_under(root: RegionNode, name: str) -> list[str]:
    for n in root.walk():
        if n.name == name:
            return [x.name for x in n.walk() if x.is_leaf]
    raise KeyError(f"no node {name!r} in the tree")


@dataclass(frozen=True)
class EditTarget:
    """A code to resample (``code``) and the leaves of the region it should control."""

    label: str
    code: str
    leaves: tuple[str, ...]


def hierarchy_targets(h: FusionHierarchy) -> list[EditTarget]:
    """The codes a user controls (active parts) and the global code of every node with a net."""
    out = [EditTarget(name, name, tuple(leaves_under(h.root, name))) for name in h.active_parts()]
    visited = set(h.required_codes())
    for name in h.internal_nodes:
        if name in visited and h.has_net(name) and name not in h.active_parts():
            out.append(EditTarget(f"global:{name}", name, tuple(leaves_under(h.root, name))))
    return out


# ------------------------------------------------------------------ judges
class Judge:
    """Region labels of generated images: ``labels(images, codes) -> [B, H, W]`` indices into ``names``."""

    names: list[str]
    kind: str

    def labels(self, images: torch.Tensor, codes: StyleCode) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def render(self, G, codes: StyleCode, amp) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [B, 3, H, W] float, labels [B, H, W])`` of ``codes``, the synthesis under ``amp``."""
        with amp():
            images = G.synthesis(codes).float()
        return images, self.labels(images, codes.to(torch.float32))

    def region_mask(self, labels: torch.Tensor, leaves: Sequence[str]) -> torch.Tensor:
        """``[B, H, W]`` bool: the pixels whose label is one of ``leaves``."""
        missing = [x for x in leaves if x not in self.names]
        if missing:
            raise ValueError(f"regions {missing} are unknown to the {self.kind} judge ({', '.join(self.names)})")
        ids = torch.tensor([self.names.index(x) for x in leaves], device=labels.device)
        return torch.isin(labels, ids)


class OracleJudge(Judge):
    kind = "oracle"

    def __init__(self, oracle):
        self.oracle, self.names = oracle, list(oracle.region_names)

    def labels(self, images, codes):
        lab, _ = self.oracle.predict(images.float())
        return lab


class ClusterJudge(Judge):
    kind = "clusters"

    def __init__(self, region_model):
        from .fusion_masks import RegionScorer

        self.model, self.names = region_model, list(region_model.leaves)
        self.scorer = RegionScorer(region_model)

    def labels(self, images, codes):
        _, feats = self.model.G.synthesis(codes, self.model.noise_mode, return_features=True)
        return self.scorer.hard_labels(feats, size=images.shape[-1]).to(images.device)

    def render(self, G, codes, amp):
        """One synthesis gives the image and the DeepPixels its labels come from (``labels`` would
        synthesise ``codes`` again)."""
        with amp():
            images, feats = G.synthesis(codes, self.model.noise_mode, return_features=True)
        images = images.float()
        return images, self.scorer.hard_labels(feats, size=images.shape[-1]).to(images.device)


# -------------------------------------------------------------- experiment
@dataclass
class EditStats:
    target: EditTarget
    mode: str
    samples: int = 0
    heat: torch.Tensor | None = None               # [H, W] mean absolute change
    inside_change: float = 0.0
    total_change: float = 0.0
    inside_either: float = 0.0                     # change inside the region of the base or the edit
    inside_area: float = 0.0                       # pixels of the base's region, summed over the edits
    psnr: list = field(default_factory=list)
    inside_per: list = field(default_factory=list)  # per edit: change inside the base's region ...
    total_per: list = field(default_factory=list)   # ... and in all (for the standard error)
    area_per: list = field(default_factory=list)    # ... and the region's pixel count
    # the union reading (sfeditor.editor.locality): region of the base or the edit, its 1-px border ring left out
    union_in_per: list = field(default_factory=list)     # per edit: change inside U & ~ring ...
    union_total_per: list = field(default_factory=list)  # ... change outside the ring ...
    union_area_per: list = field(default_factory=list)   # ... and |U & ~ring|

    @property
    def locality(self) -> float:
        """Issue 5's locality: change inside the region of the *base* image / total change."""
        return self.inside_change / self.total_change if self.total_change > 0 else float("nan")

    @property
    def region_change(self) -> float:
        """How much the edit changes its own region: the mean absolute change per pixel of the base's
        region (``change_map`` units: images in [-1, 1]). Locality is a share and cannot see an edit that
        barely changes anything; this can: the "mode collapse" of Sec. 7 / Fig. 16b (car colours that
        vary less than they should) is a lower region change on the same edits."""
        return self.inside_change / self.inside_area if self.inside_area > 0 else float("nan")

    @property
    def locality_either(self) -> float:
        """The same with the region of either image (base or edit): an edit that reshapes its region
        (a new hairstyle) is not charged for the pixels the region moves into."""
        return self.inside_either / self.total_change if self.total_change > 0 else float("nan")

    @property
    def locality_union(self) -> float:
        """Issue 38's reading: change inside the union of the base's and the edit's region, the 1-px ring
        along its border left out of numerator and denominator (:mod:`sfeditor.editor.locality`)."""
        return ratio_se(self.union_in_per, self.union_total_per)[0]

    @property
    def region_change_union(self) -> float:
        """Mean in-region change under the union reading: mean |Δ| per pixel of U & ~ring."""
        return ratio_se(self.union_in_per, self.union_area_per)[0]

    def _ratio_parts(self, measure: str) -> tuple[float, list, list]:
        if measure == "locality":
            return self.locality, self.inside_per, self.total_per
        if measure == "region_change":
            return self.region_change, self.inside_per, self.area_per
        if measure == "locality_union":
            return self.locality_union, self.union_in_per, self.union_total_per
        if measure == "region_change_union":
            return self.region_change_union, self.union_in_per, self.union_area_per
        raise ValueError(f"unknown measure {measure!r} (locality, region_change, locality_union, "
                         "region_change_union)")

    def influence(self, measure: str = "locality") -> np.ndarray:
        """Each edit's linearised share of a ratio of sums R = sum y / sum x (the delta method):
        (y_i - R x_i) / mean(x); its mean is 0. ``locality``: y, x = one edit's inside and total change;
        ``region_change``: y, x = its inside change and its region's pixel count."""
        r, y, x = self._ratio_parts(measure)
        y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
        return (y - r * x) / x.mean()

    def locality_influence(self) -> np.ndarray:
        """:meth:`influence` of :attr:`locality`."""
        return self.influence("locality")

    def standard_error(self, measure: str = "locality") -> float:
        """Standard error of a ratio measure over the edits: sqrt(sum d_i^2 / (n (n - 1))) with d_i from
        :meth:`influence`. With a fixed base it is the error over the resampled codes for that one base
        image only."""
        r, y, x = self._ratio_parts(measure)
        n = len(x)
        if n < 2 or len(y) != n or not math.isfinite(r):
            return float("nan")
        d = self.influence(measure)
        return float(np.sqrt((d ** 2).sum() / (n * (n - 1))))

    @property
    def locality_se(self) -> float:
        """Standard error of :attr:`locality` over the edits (:meth:`standard_error`)."""
        return self.standard_error("locality")

    @property
    def region_change_se(self) -> float:
        """Standard error of :attr:`region_change` over the edits (:meth:`standard_error`)."""
        return self.standard_error("region_change")

    @property
    def preservation_psnr(self) -> float:
        return mean_finite(self.psnr)

    def summary(self) -> dict:
        return {"label": self.target.label, "code": self.target.code, "leaves": list(self.target.leaves),
                "mode": self.mode, "samples": self.samples, "locality": round(self.locality, 4),
                "locality_se": round(self.locality_se, 4),
                "locality_either": round(self.locality_either, 4),
                "locality_union": round(self.locality_union, 4),
                "locality_union_se": round(self.standard_error("locality_union"), 4),
                "region_change_union": round(self.region_change_union, 5),
                "region_change_union_se": round(self.standard_error("region_change_union"), 5),
                "region_change": round(self.region_change, 5), "region_change_se": round(self.region_change_se, 5),
                "psnr_outside": round(self.preservation_psnr, 2),
                "mean_abs_change": round(self.total_change / max(self.samples * self.heat.numel(), 1), 5)
                if self.heat is not None else None}


def paired_difference(a: EditStats, b: EditStats, measure: str = "locality") -> tuple[float, float]:
    """(b's measure - a's, its standard error) when both scored the same seeded edits (two nets or
    hierarchies, one ``edit_experiment`` seed): the delta method on the per-edit differences, which
    cancels the variation the edits share, so it is far smaller than either one's own error.
    ``measure``: ``locality`` or ``region_change`` (:class:`EditStats`)."""
    ra, _, xa = a._ratio_parts(measure)
    rb, _, xb = b._ratio_parts(measure)
    delta = rb - ra
    n = len(xa)
    if n < 2 or len(xb) != n or not (math.isfinite(ra) and math.isfinite(rb)):
        return delta, float("nan")
    d = b.influence(measure) - a.influence(measure)
    return delta, float(np.sqrt((d ** 2).sum() / (n * (n - 1))))


def sample_code_set(G, names: Sequence[str], n: int, truncation: float, gen: torch.Generator) -> dict[str, StyleCode]:
    """One code per name for ``n`` compositions (z on the CPU from ``gen``, mapped with truncation)."""
    z = torch.randn(len(names) * n, G.style_dim, generator=gen).to(G.device)
    s = G.styles(G.mapping(z, truncation))
    return {name: s[i * n:(i + 1) * n] for i, name in enumerate(names)}


@torch.no_grad()
def edit_experiment(G, compose: Composer, names: Sequence[str], targets: Sequence[EditTarget], judge: Judge,
                    mode: str = "random", samples: int = 200, batch: int = 16, truncation: float = 1.0,
                    seed: int = 0, amp=None, progress=None) -> list[EditStats]:
    """Resample each target's code ``samples`` times (Fig. 10 ``random`` / Fig. 11 ``fixed`` base).

    Every batch shares its base compositions (and their judged labels) across the targets.
    """
    if mode not in ("random", "fixed"):
        raise ValueError("mode must be 'random' or 'fixed'")
    gen = torch.Generator().manual_seed(seed)
    amp = amp or (lambda: torch.autocast("cpu", enabled=False))
    stats = [EditStats(t, mode) for t in targets]
    fixed = sample_code_set(G, names, 1, truncation, gen) if mode == "fixed" else None
    done = 0
    if progress is not None:     # starts the clock of a progress bar (its rate counts from here)
        progress(0, samples, mode)
    while done < samples:
        b = min(batch, samples - done)
        if fixed is not None:
            base = {k: v.repeat(b) for k, v in fixed.items()}
        else:
            base = sample_code_set(G, names, b, truncation, gen)
        fresh = sample_code_set(G, [t.code for t in targets], b, truncation, gen)
        with amp():
            s_base = compose(base)
        img_base, labels = judge.render(G, s_base, amp)
        for st in stats:
            codes = dict(base)
            codes[st.target.code] = fresh[st.target.code]
            with amp():
                s_edit = compose(codes)
            img, labels_edit = judge.render(G, s_edit, amp)
            inside = judge.region_mask(labels, st.target.leaves).to(img.device)
            edit_mask = judge.region_mask(labels_edit, st.target.leaves).to(img.device)
            either = inside | edit_mask
            ch = change_map(img_base, img)
            union = read_edit(ch, inside, edit_mask)
            st.union_in_per.extend(union.inside.tolist())
            st.union_total_per.extend(union.total.tolist())
            st.union_area_per.extend(union.area.tolist())
            st.heat = ch.sum(0) if st.heat is None else st.heat + ch.sum(0)
            per_in = (ch.double() * inside.double()).flatten(1).sum(1)
            per_all = ch.double().flatten(1).sum(1)
            area = inside.double().flatten(1).sum(1)
            st.inside_per.extend(per_in.tolist())
            st.total_per.extend(per_all.tolist())
            st.area_per.extend(area.tolist())
            st.inside_area += float(area.sum())
            st.inside_change += float(per_in.sum())
            st.inside_either += float((ch.double() * either.double()).sum())
            st.total_change += float(per_all.sum())
            st.psnr.extend(psnr_outside(img_base, img, inside).tolist())
            st.samples += b
        done += b
        if progress is not None:
            progress(done, samples, mode)
    for st in stats:
        st.heat = (st.heat / max(st.samples, 1)).cpu()
    return stats


# ------------------------------------------------------------------- images
def colormap(values: np.ndarray, vmax: float, cmap: int | None = None) -> np.ndarray:
    """``[H, W]`` values -> uint8 RGB ``[H, W, 3]`` through an OpenCV colormap (0 .. vmax)."""
    import cv2

    v8 = (np.clip(values / max(vmax, 1e-12), 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(v8, cv2.COLORMAP_INFERNO if cmap is None else cmap)[..., ::-1].copy()


def _caption(width: int, lines: Sequence[str], height: int = 13) -> np.ndarray:
    import cv2

    bar = np.full((height * len(lines) + 3, width, 3), 24, dtype=np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(bar, text, (2, height * (i + 1) - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (235, 235, 235), 1,
                    cv2.LINE_AA)
    return bar


def heatmap_caption(s: EditStats) -> list[str]:
    """A heatmap tile's caption lines: the union locality and the old base-region reading, the mean
    in-region change (union) and the PSNR outside; "n/a" where a number is undefined (an edit that moved
    nothing has no locality; a code whose region is the whole image has no pixels outside it)."""
    return [s.target.label[:22], f"loc {_fmt(s.locality_union, 2)} base-only {_fmt(s.locality, 2)}",
            f"in {_fmt(s.region_change_union, 3)} psnr {_fmt(s.preservation_psnr, 1)}"]


def heatmap_figure(stats: Sequence[EditStats], base_image: np.ndarray | None = None, scale: int = 3,
                   title: str = "", shared: bool = True) -> np.ndarray:
    """One tile per code, captioned with locality and PSNR; ``base_image`` first.

    ``shared``: one colour scale for all tiles (magnitudes comparable); else each tile is scaled
    to its own maximum (shapes of small changes visible).
    """
    vmax = max(float(s.heat.max()) for s in stats) if stats else 1.0
    tiles = []
    if base_image is not None:
        img = base_image.repeat(scale, 0).repeat(scale, 1)
        tiles.append(np.concatenate([img, _caption(img.shape[1], ["base image", "", ""])]))
    for s in stats:
        img = colormap(s.heat.numpy(), vmax if shared else float(s.heat.max())).repeat(scale, 0).repeat(scale, 1)
        tiles.append(np.concatenate([img, _caption(img.shape[1], heatmap_caption(s))]))
    grid = make_grid(np.stack(tiles), cols=min(len(tiles), 6), pad=4)
    head = _caption(grid.shape[1], [title or "mean |change|", f"shared scale 0..{vmax:.3f} (inferno)" if shared
                                    else "each tile scaled to its own maximum (inferno)"])
    return np.concatenate([head, grid])


# ------------------------------------------------------------------- report
def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _fmt_pm(x: float, se: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    v = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return v + (f" ± {se:.{digits}f}" if se is not None and math.isfinite(se) else "")


def _fmt_se(s: EditStats | None) -> str:
    """``locality ± standard error`` of one row, or n/a."""
    return "n/a" if s is None else _fmt_pm(s.locality, s.locality_se)


def _fmt_measure(s: EditStats | None, measure: str, digits: int = 3) -> str:
    if s is None:
        return "n/a"
    return _fmt_pm(s._ratio_parts(measure)[0], s.standard_error(measure), digits)


def markdown_table(rows: dict[str, dict[str, EditStats]]) -> str:
    """Per code and base mode: the union locality and the mean in-region change (issue 38's reading,
    :mod:`sfeditor.editor.locality`), the old base-region locality and change, and the PSNR outside the base's region."""
    cols = []
    for mode in ("random", "fixed"):
        cols += [f"locality ± s.e. ({mode} base)", f"change inside, mean \\|Δ\\| ± s.e. ({mode})",
                 f"old: base-region locality ({mode})", f"old: change per base-region pixel ({mode})",
                 f"PSNR outside (dB, {mode})"]
    lines = ["| code | region (leaves) | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for label, by_mode in rows.items():
        any_ = by_mode.get("random") or by_mode.get("fixed")
        cells = []
        for mode in ("random", "fixed"):
            st = by_mode.get(mode)
            cells += [_fmt_measure(st, "locality_union"), _fmt_measure(st, "region_change_union", 4),
                      _fmt_se(st), _fmt(st.region_change, 4) if st else "n/a",
                      _fmt(st.preservation_psnr, 1) if st else "n/a"]
        lines.append(f"| {label} | {', '.join(any_.target.leaves)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate_locality(G, compose: Composer, names: Sequence[str], targets: Sequence[EditTarget], judge: Judge,
                      out: str | os.PathLike, samples: int = 200, batch: int = 16, truncation: float = 1.0,
                      seed: int = 0, amp=None, title: str = "", progress=None,
                      modes: Sequence[str] = ("random", "fixed")) -> dict:
    """The heatmap modes (default both), PNGs and the numbers; returns ``{"random": [...], "fixed": [...]}``
    summaries (a mode left out gives an empty list)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result, table = {"random": [], "fixed": []}, {}
    for mode in modes:
        stats = edit_experiment(G, compose, names, targets, judge, mode, samples, batch, truncation, seed, amp,
                                progress)
        base_img = None
        if mode == "fixed":
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                fixed = sample_code_set(G, names, 1, truncation, gen)
                base_img = to_uint8(G.synthesis(compose(fixed)).float())[0]
        name = f"{title} {mode} base (Fig. {10 if mode == 'random' else 11})"
        save_png(out / f"heatmaps-{mode}.png", heatmap_figure(stats, base_img, title=name))
        save_png(out / f"heatmaps-{mode}-each.png", heatmap_figure(stats, base_img, title=name, shared=False))
        result[mode] = [s.summary() for s in stats]
        for s in stats:
            table.setdefault(s.target.label, {})[mode] = s
    result["table"] = markdown_table(table)
    result["stats"] = table          # label -> mode -> EditStats (for comparison_rows)
    return result


def comparison_rows(G, compose: Composer, names: Sequence[str], targets: Sequence[EditTarget], judge: Judge,
                    reference: Mapping[str, Mapping[str, EditStats]], samples: int = 200, batch: int = 16,
                    truncation: float = 1.0, seed: int = 0, amp=None, progress=None) -> list[dict]:
    """Another hierarchy scored on the *same* seeded edits as ``reference`` (``evaluate_locality``'s
    ``stats`` with the same names, targets, samples and seed): per target and mode its locality, the
    reference's, and the paired difference with its standard error (:func:`paired_difference`)."""
    out = []
    for mode in [m for m in ("random", "fixed") if any(m in r for r in reference.values())]:
        stats = edit_experiment(G, compose, names, targets, judge, mode, samples, batch, truncation, seed, amp,
                                progress)
        for st in stats:
            ref = reference[st.target.label][mode]
            delta, se = paired_difference(ref, st)
            dchange, dchange_se = paired_difference(ref, st, "region_change")
            out.append({"label": st.target.label, "mode": mode, "reference": ref.locality,
                        "locality": st.locality, "delta": delta, "delta_se": se,
                        "psnr_outside": st.preservation_psnr, "reference_psnr_outside": ref.preservation_psnr,
                        "reference_region_change": ref.region_change, "region_change": st.region_change,
                        "delta_region_change": dchange, "delta_region_change_se": dchange_se})
    return out


def comparison_markdown(rows: Sequence[Mapping], reference: str, other: str) -> str:
    """Table of :func:`comparison_rows`: one line per code, random and fixed base side by side."""
    by = {}
    for r in rows:
        by.setdefault(r["label"], {})[r["mode"]] = r
    head = (f"| code | `{reference}` random | `{other}` random | difference ± paired s.e. | "
            f"`{reference}` fixed | `{other}` fixed | difference ± paired s.e. |")
    parts = []
    for title, keys, digits in (("Locality", ("reference", "locality", "delta", "delta_se"), 3),
                                ("Change inside the edited region (mean |Δ| per region pixel; lower with the "
                                 "same locality = a weaker edit, Fig. 16b's mode collapse)",
                                 ("reference_region_change", "region_change", "delta_region_change",
                                  "delta_region_change_se"), 4)):
        lines = [title + ":", "", head, "|---|---|---|---|---|---|---|"]
        for label, m in by.items():
            cells = []
            for mode in ("random", "fixed"):
                r = m.get(mode)
                if r is None or keys[0] not in r:
                    cells += ["n/a"] * 3
                    continue
                ref, val, d, se = (r[k] for k in keys)
                cells += [_fmt(ref, digits), _fmt(val, digits), _fmt_pm(d, se, digits, sign=True)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


# -------------------------------------------------------- renderer ceiling
@torch.no_grad()
def renderer_ceiling(domain: str, leaves: Sequence[str], judge: Judge, samples: int = 200, seed: int = 0,
                     size: int = 64, either: bool = False, measure: str = "locality") -> dict[str, float]:
    """The locality a perfectly region-local edit scores under the same judge and formula.

    For a toy domain the renderer knows what changing one region alone looks like
    (``sfeditor.toy.render_swap``: image A with region k's parameters taken from image B).  This
    scores those ground-truth edits exactly as :func:`edit_experiment` scores a hierarchy's
    (random base; change inside the judge's region of A / total change), so a leaf whose region
    changes shape (hair, a mouth opening) is seen to move pixels outside A's mask even when the
    edit is ideal.  Returns ``{leaf: locality}``; regions the renderer cannot swap are left out.
    ``either``: count the region of either image, A or the edit (:attr:`EditStats.locality_either`).
    ``measure="region_change"``: instead, how much the ideal edit changes A's region
    (:attr:`EditStats.region_change`); ``"region_variation"``: how much A's region differs from the
    same pixels of the independent render B (the region's natural variation, the scale that
    region change is read against: :func:`natural_region_change` is the generator's).
    """
    if measure not in ("locality", "region_change", "region_variation"):
        raise ValueError(f"unknown measure {measure!r} (locality, region_change, region_variation)")
    from sfeditor.toy import render, render_swap, swap_groups
    from sfeditor.images.imageio import from_uint8

    known = set(swap_groups(domain))
    rng = np.random.default_rng([seed, 5151])
    a = rng.integers(20_000_000, 30_000_000, samples)
    b = rng.integers(30_000_000, 40_000_000, samples)
    xa = from_uint8(render(domain, a, size=size)[0])
    labels = judge.labels(xa.to(_judge_device(judge)), None).cpu()
    out = {}
    for leaf in leaves:
        if leaf not in known:
            continue
        if measure == "region_variation":
            y = from_uint8(render(domain, b, size=size)[0])
        else:
            y = from_uint8(render_swap(domain, a, b, [leaf] * samples, size=size)[0])
        ch = change_map(xa, y).double()
        inside = judge.region_mask(labels, (leaf,))
        if either:
            inside = inside | judge.region_mask(judge.labels(y.to(_judge_device(judge)), None).cpu(), (leaf,))
        inside = inside.double()
        den = ch.sum() if measure == "locality" else inside.sum()
        out[leaf] = float((ch * inside).sum() / den) if float(den) > 0 else float("nan")
    return out


@torch.no_grad()
def ideal_edit_readings(domain: str, leaves: Sequence[str], samples: int = 200, seed: int = 0,
                        size: int = 64, batch: int = 64) -> dict[str, dict[str, float]]:
    """The renderer's ideal edit of each leaf (``render_swap``: render A with the leaf's parameters from
    render B) under the union reading of :mod:`sfeditor.editor.locality`, labelled by the *renderer's* own label
    maps: per leaf ``locality`` / ``region_change`` (union reading) with ``_se`` over the edits,
    ``base_locality`` (the old reading) and ``edits``.  Leaves the renderer cannot swap are left out.
    The same seeds as :func:`renderer_ceiling`."""
    from sfeditor.images.imageio import from_uint8
    from sfeditor.editor.locality import read_edit
    from sfeditor.toy import region_names, render, render_swap

    names = region_names(domain)
    rng = np.random.default_rng([seed, 5151])
    a = rng.integers(20_000_000, 30_000_000, samples)
    b = rng.integers(30_000_000, 40_000_000, samples)
    out = {}
    for leaf in leaves:
        if leaf not in names:
            continue
        k = names.index(leaf)
        parts = []
        for i in range(0, samples, batch):
            xa, la = render(domain, a[i:i + batch], size=size)
            y, ly = render_swap(domain, a[i:i + batch], b[i:i + batch], [leaf] * len(a[i:i + batch]), size=size)
            ch = change_map(from_uint8(xa), from_uint8(y))
            parts.append(read_edit(ch, torch.from_numpy(la == k), torch.from_numpy(ly == k)))
        cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in ("inside", "total", "area", "base_inside",
                                                                       "base_total")}
        loc, loc_se = ratio_se(cat["inside"], cat["total"])
        chg, chg_se = ratio_se(cat["inside"], cat["area"])
        out[leaf] = {"locality": loc, "locality_se": loc_se, "region_change": chg, "region_change_se": chg_se,
                     "base_locality": ratio_se(cat["base_inside"], cat["base_total"])[0], "edits": samples}
    return out


def ideal_markdown(measured: Mapping[str, EditStats], ideal: Mapping[str, Mapping[str, float]]) -> str:
    """Leaf | union locality: hierarchy (random base) and ideal edit | mean in-region change: hierarchy,
    ideal and their ratio | the old base-region reading of both."""
    lines = ["| leaf | locality ± s.e.: hierarchy | ideal edit (renderer) | change inside ± s.e.: hierarchy | "
             "ideal edit | hierarchy / ideal | old reading: hierarchy | ideal |", "|---|---|---|---|---|---|---|---|"]
    for leaf, idl in ideal.items():
        st = measured.get(leaf)
        ch = st.region_change_union if st is not None else float("nan")
        ratio = ch / idl["region_change"] if idl["region_change"] else float("nan")
        lines.append(f"| {leaf} | {_fmt_measure(st, 'locality_union')} | "
                     f"{_fmt_pm(idl['locality'], idl['locality_se'])} | {_fmt_measure(st, 'region_change_union', 4)} | "
                     f"{_fmt_pm(idl['region_change'], idl['region_change_se'], 4)} | {_fmt(ratio, 2)} | "
                     f"{_fmt(st.locality) if st is not None else 'n/a'} | {_fmt(idl['base_locality'])} |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def natural_region_change(G, compose: Composer, names: Sequence[str], leaves: Sequence[str], judge: Judge,
                          samples: int = 200, batch: int = 16, truncation: float = 1.0, seed: int = 0,
                          amp=None, progress=None) -> dict[str, float]:
    """Per leaf, the mean absolute change per pixel of A's region between two independent compositions
    A and B (every code drawn afresh): how much the region varies across the domain's images, the scale
    a region edit's :attr:`EditStats.region_change` is read against (an edit that reaches a small share
    of it is weak, or "mode collapsed" in Fig. 16b's words). Seeded apart from ``edit_experiment``."""
    gen = torch.Generator().manual_seed(seed + 7919)
    amp = amp or (lambda: torch.autocast("cpu", enabled=False))
    num = {leaf: 0.0 for leaf in leaves}
    den = {leaf: 0.0 for leaf in leaves}
    done = 0
    if progress is not None:
        progress(0, samples, "natural")
    while done < samples:
        b = min(batch, samples - done)
        a_codes = sample_code_set(G, names, b, truncation, gen)
        b_codes = sample_code_set(G, names, b, truncation, gen)
        with amp():
            sa, sb = compose(a_codes), compose(b_codes)
        img_a, labels = judge.render(G, sa, amp)
        img_b, _ = judge.render(G, sb, amp)
        ch = change_map(img_a, img_b).double()
        for leaf in leaves:
            inside = judge.region_mask(labels, (leaf,)).to(ch.device).double()
            num[leaf] += float((ch * inside).sum())
            den[leaf] += float(inside.sum())
        done += b
        if progress is not None:
            progress(done, samples, "natural")
    return {leaf: num[leaf] / den[leaf] if den[leaf] > 0 else float("nan") for leaf in leaves}


def _ratio_cells(num: float, den: float, digits: int = 3) -> str:
    """`` num | den | num / den |`` table cells (n/a where undefined)."""
    return f" {_fmt(num, digits)} | {_fmt(den, digits)} | {_fmt(num / den if den else float('nan'), 2)} |"


def strength_markdown(measured: Mapping[str, Mapping[str, float]], natural: Mapping[str, float],
                      ideal: Mapping[str, float] | None = None,
                      renders: Mapping[str, float] | None = None) -> str:
    """Leaf | the hierarchy's region change (random base) | the region's natural variation between two
    generated images | their ratio; with the renderer's numbers, the same for its ideal edit. The ratio
    is comparable across the two; the raw numbers are not (the renders are sharper and not truncated)."""
    head = "| leaf | region change, hierarchy edit | two generated images | edit / natural |"
    rule = "|---|---|---|---|"
    if ideal is not None and renders is not None:
        head += " ideal edit (renderer) | two renders | ideal / natural |"
        rule += "---|---|---|"
    lines = [head, rule]
    for leaf, nat in natural.items():
        row = f"| {leaf} |" + _ratio_cells(measured.get(leaf, {}).get("region_change", float("nan")), nat, 4)
        if ideal is not None and renders is not None:
            row += _ratio_cells(ideal.get(leaf, float("nan")), renders.get(leaf, float("nan")), 4)
        lines.append(row)
    return "\n".join(lines) + "\n"


def _judge_device(judge: Judge) -> torch.device:
    net = getattr(judge, "oracle", None)
    return next(net.parameters()).device if net is not None else torch.device("cpu")


def ceiling_markdown(ceiling: Mapping[str, float], measured: Mapping[str, Mapping[str, float]],
                     ceiling_either: Mapping[str, float] | None = None) -> str:
    """Leaf | renderer's ideal edit | the hierarchy's (random base) | share of the ideal reached; with
    ``ceiling_either``, the same three for the region of either image."""
    head = "| leaf | ideal edit (renderer) | hierarchy, random base | hierarchy / ideal |"
    rule = "|---|---|---|---|"
    if ceiling_either is not None:
        head += " either image's region: ideal | hierarchy | hierarchy / ideal |"
        rule += "---|---|---|"
    lines = [head, rule]
    for leaf, c in ceiling.items():
        m = measured.get(leaf, {}).get("locality", float("nan"))
        row = f"| {leaf} | {_fmt(c)} | {_fmt(m)} | {_fmt(m / c if c else float('nan'), 2)} |"
        if ceiling_either is not None:
            ce = ceiling_either.get(leaf, float("nan"))
            me = measured.get(leaf, {}).get("locality_either", float("nan"))
            row += f" {_fmt(ce)} | {_fmt(me)} | {_fmt(me / ce if ce else float('nan'), 2)} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- ablation
def load_node_net(path: str | os.PathLike) -> FusionNet:
    """A ``net.pt`` written by :func:`trainer.fusion.train_node`."""
    from sfeditor.model.safe_torch import safe_torch_load

    obj = safe_torch_load(path)
    net = FusionNet(FusionNetConfig.from_dict(obj["config"]))
    net.load_checked(obj["state_dict"])
    return net.eval().requires_grad_(False)


def ablation_rows(G, nets: Mapping[str, FusionNet], tree, node: str, judge: Judge, samples: int = 200,
                  batch: int = 16, truncation: float = 1.0, seed: int = 0, amp=None) -> dict[str, dict]:
    """Per variant: locality / PSNR of a child-1 change and of a child-2 change (random base)."""
    root = RegionNode.parse(tree)
    kids = [c.name for n in root.walk() if n.name == node for c in n.children]
    if len(kids) != 2:
        raise ValueError(f"{node!r} is not an internal node")
    targets = [EditTarget(k, k, tuple(leaves_under(root, k))) for k in kids]
    names = [kids[0], kids[1], node]
    rows, stats = {}, {}
    for variant, net in nets.items():
        compose = node_composer(net, kids[0], kids[1], node, align=variant != "no_global")
        stats[variant] = {st.target.label: st for st in edit_experiment(
            G, compose, names, targets, judge, "random", samples, batch, truncation, seed, amp)}
        rows[variant] = {k: {"locality": st.locality, "locality_se": st.locality_se,
                             "region_change": st.region_change, "region_change_se": st.region_change_se,
                             "psnr_outside": st.preservation_psnr} for k, st in stats[variant].items()}
    if "full" in rows:   # every variant edits the same seeded codes and bases: paired differences
        for variant in rows:
            for k, r in rows[variant].items():
                r["delta_vs_full"], r["delta_se"] = paired_difference(stats["full"][k], stats[variant][k])
                r["change_vs_full"], r["change_vs_full_se"] = paired_difference(
                    stats["full"][k], stats[variant][k], "region_change")
    return rows


@torch.no_grad()
def ablation_figure(G, nets: Mapping[str, FusionNet], tree, node: str, changed: str, columns: int = 6,
                    truncation: float = 1.0, seed: int = 0, scale: int = 2, amp=None) -> np.ndarray:
    """Fig. 16: one row per variant, one column per new code of the child ``changed``; the other
    child's code and the node's global code stay fixed (the same codes in every row), so each row
    should show one car (16a: the background changes) or one background (16b: the car changes)."""
    root = RegionNode.parse(tree)
    kids = [c.name for n in root.walk() if n.name == node for c in n.children]
    if len(kids) != 2 or changed not in kids:
        raise ValueError(f"{changed!r} is not a child of the internal node {node!r}")
    gen = torch.Generator().manual_seed(seed)
    fixed = sample_code_set(G, [*kids, node], 1, truncation, gen)
    fresh = sample_code_set(G, [changed], columns, truncation, gen)[changed]
    codes = {k: v.repeat(columns) for k, v in fixed.items()}
    codes[changed] = fresh
    amp = amp or (lambda: torch.autocast("cpu", enabled=False))
    label_w = 120
    rows = []
    for variant, net in nets.items():
        compose = node_composer(net, kids[0], kids[1], node, align=variant != "no_global")
        with amp():
            images = to_uint8(G.synthesis(compose(codes)).float())
        strip = make_grid(images, cols=columns, pad=2, scale=scale)
        label = _caption(label_w, [ABLATION_TITLES.get(variant, variant)[:20]], height=14)[:strip.shape[0]]
        pad = np.full((strip.shape[0], label_w, 3), 24, dtype=np.uint8)
        pad[:label.shape[0]] = label
        rows.append(np.concatenate([pad, strip], axis=1))
    grid = np.concatenate(rows)
    other = kids[1 - kids.index(changed)]
    head = _caption(grid.shape[1], [f"Fig. 16 ({'a' if changed == kids[1] else 'b'}): {changed} code changes "
                                    f"along each row; {other} and the global code fixed"])
    return np.concatenate([head, grid])


ABLATION_TITLES = {"full": "StyleFusion (full)", "no_global": "No Global", "no_stage1": "No Stage 1",
                   "no_stage2": "No Stage 2", "no_stage3": "No Stage 3"}


def ablation_markdown(rows: Mapping[str, Mapping[str, Mapping[str, float]]], kids: Sequence[str]) -> str:
    """The Sec. 7 table: per child, locality ± s.e., the paired difference to the full model (the same
    edits for every variant, so its error is far smaller than either locality's) and PSNR outside."""
    paired = any("delta_vs_full" in r[k] for r in rows.values() for k in kids)
    per_kid = ["locality ± s.e."] + (["vs full ± paired s.e."] if paired else []) + ["PSNR outside (dB)"]
    head = "| variant | " + " | ".join(f"{k}: {c}" for k in kids for c in per_kid) + " |"
    lines = [head, "|---|" + "---|" * (len(per_kid) * len(kids))]
    for variant, r in rows.items():
        cells = []
        for k in kids:
            c = r[k]
            cells.append(_fmt_pm(c["locality"], c.get("locality_se")))
            if paired:
                cells.append("—" if variant == "full" else _fmt_pm(c.get("delta_vs_full", float("nan")),
                                                                    c.get("delta_se"), sign=True))
            cells.append(_fmt(c["psnr_outside"], 1))
        lines.append(f"| {ABLATION_TITLES.get(variant, variant)} | {' | '.join(cells)} |")
    if paired:
        lines.append("\n'vs full': this variant's locality minus the full model's over the same edits; a "
                     "variant the full model beats has a negative difference well beyond its paired s.e.")
    if any("region_change" in r[k] for r in rows.values() for k in kids):
        per_kid = ["change inside ± s.e."] + (["vs full ± paired s.e."] if paired else [])
        lines += ["", "How much each edit changes its own region (mean |Δ| per pixel of the base's region; "
                  "Fig. 16b's \"mode collapse\", which locality cannot see, is a smaller change here):", "",
                  "| variant | " + " | ".join(f"{k}: {c}" for k in kids for c in per_kid) + " |",
                  "|---|" + "---|" * (len(per_kid) * len(kids))]
        for variant, r in rows.items():
            cells = []
            for k in kids:
                c = r[k]
                cells.append(_fmt_pm(c.get("region_change", float("nan")), c.get("region_change_se"), 4))
                if paired:
                    cells.append("—" if variant == "full" else _fmt_pm(c.get("change_vs_full", float("nan")),
                                                                        c.get("change_vs_full_se"), 4, sign=True))
            lines.append(f"| {ABLATION_TITLES.get(variant, variant)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def ablation_run_dir(root: str | os.PathLike, variant: str, seed: int = 0) -> Path:
    """Where a variant's run of training draw ``seed`` lives: ``ROOT/VARIANT`` for seed 0 (the layout of a
    single draw), ``ROOT/seed-S/VARIANT`` for the others."""
    root = Path(root)
    return root / variant if seed == 0 else root / f"seed-{seed}" / variant


#: a variant counts as beaten in a draw when its paired difference to the full model is below -2 s.e.
BEATEN_SE = 2.0


def ablation_draws(draw_rows: Mapping[int, Mapping[str, Mapping[str, Mapping[str, float]]]],
                   kids: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Combine :func:`ablation_rows` of several training draws (seed -> rows; every draw scored on the
    same edits).  Per variant present with the full model in every draw, per child: the mean locality,
    each draw's paired difference to that draw's full model with its error, their mean and the
    standard error *over draws* (the one error that covers retraining), and in how many draws the
    full model is more local by more than ``BEATEN_SE`` paired standard errors."""
    seeds = list(draw_rows)
    if not seeds or any("full" not in draw_rows[s] for s in seeds):
        raise ValueError("every draw needs the full model")
    variants = [v for v in draw_rows[seeds[0]] if all(v in draw_rows[s] for s in seeds)]
    out: dict[str, dict[str, dict]] = {}
    for v in variants:
        out[v] = {}
        for k in kids:
            loc = np.array([draw_rows[s][v][k]["locality"] for s in seeds], dtype=float)
            cell = {"draws": len(seeds), "seeds": seeds, "locality_mean": float(loc.mean()),
                    "locality_draw_se": float(loc.std(ddof=1) / math.sqrt(len(loc))) if len(loc) > 1 else float("nan")}
            if v != "full":
                d = np.array([draw_rows[s][v][k]["delta_vs_full"] for s in seeds], dtype=float)
                se = np.array([draw_rows[s][v][k]["delta_se"] for s in seeds], dtype=float)
                cell.update(deltas=d.tolist(), delta_ses=se.tolist(), delta_mean=float(d.mean()),
                            delta_draw_se=float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan"),
                            full_better=int(np.sum(d < -BEATEN_SE * np.nan_to_num(se, nan=np.inf))),
                            full_worse=int(np.sum(d > BEATEN_SE * np.nan_to_num(se, nan=np.inf))))
            out[v][k] = cell
    return out


def ablation_draws_markdown(summary: Mapping[str, Mapping[str, Mapping]], kids: Sequence[str]) -> str:
    """The Sec. 7 table over training draws, and a plain verdict on issue 5's "the full model beats
    every ablation" (beaten = more local by > ``BEATEN_SE`` paired s.e., in every draw, on every child)."""
    n = next(iter(next(iter(summary.values())).values()))["draws"]
    seeds = next(iter(next(iter(summary.values())).values()))["seeds"]
    per_kid = ["mean locality", "vs full, each draw", "vs full: mean ± s.e. over draws", "full more local in"]
    lines = [f"Training draws (seeds): {', '.join(map(str, seeds))}; each draw scored on the same edits.\n",
             "| variant | " + " | ".join(f"{k}: {c}" for k in kids for c in per_kid) + " |",
             "|---|" + "---|" * (len(per_kid) * len(kids))]
    verdicts = []
    for v, r in summary.items():
        cells = []
        for k in kids:
            c = r[k]
            cells.append(_fmt_pm(c["locality_mean"], c["locality_draw_se"]))
            if v == "full":
                cells += ["—", "—", "—"]
                continue
            cells.append(", ".join(_fmt_pm(d, e, sign=True) for d, e in zip(c["deltas"], c["delta_ses"])))
            cells.append(_fmt_pm(c["delta_mean"], c["delta_draw_se"], sign=True))
            cells.append(f"{c['full_better']} of {c['draws']}")
        lines.append(f"| {ABLATION_TITLES.get(v, v)} | {' | '.join(cells)} |")
        if v != "full":
            beaten = all(r[k]["full_better"] == r[k]["draws"] for k in kids)
            lost = [k for k in kids if r[k]["full_worse"]]
            verdicts.append(f"- {ABLATION_TITLES.get(v, v)}: " + (
                "beaten by the full model in every draw on every child" if beaten else
                "not beaten in every draw" + (f" (more local than the full model on {', '.join(lost)} in "
                                              f"{max(r[k]['full_worse'] for k in lost)} of {n} draws)" if lost else "")))
    lines += ["", "'vs full': the variant's locality minus the full model's of the same draw, ± the paired s.e. "
              f"over the edits; 'full more local in': draws where that difference is below -{BEATEN_SE:g} paired s.e. "
              "The s.e. over draws is the one that covers retraining (with 2 draws, a rough one).", "", *verdicts]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------- blend statistics
def blend_table(stats: Mapping[str, BlendStats], children: Mapping[str, Sequence[str]],
                label: str = "node") -> str:
    """Markdown: per net, where its channels come from and any sign of collapse (sfeditor.fusion.blend_stats)."""
    head = (f"| {label} | channels from child 1 / child 2 | q_fuse mean | global code: coarse channels set "
            "| q saturated (fuse / align) | input dependence (fuse / align) | warnings |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, st in stats.items():
        c1, c2 = children[name]
        n2 = st.fuse_channels_child2
        glob = "—" if st.align_channels is None else f"{st.align_channels:.0f} of {st.coarse_channels}"
        sat = f"{st.fuse_saturated:.2f} / " + ("—" if st.align_saturated is None else f"{st.align_saturated:.2f}")
        dep = f"{st.fuse_input_dependence:.3f} / " + ("—" if st.align_input_dependence is None
                                                      else f"{st.align_input_dependence:.3f}")
        warn = "; ".join(st.warnings(c1, c2)) or "—"
        lines.append(f"| {name} | {st.channels - n2:.0f} {c1} / {n2:.0f} {c2} | {st.fuse_share:.2f} | {glob} "
                     f"| {sat} | {dep} | {warn} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- CLI
def _judge_for(domain: str, kind: str, G, regions, device) -> Judge:
    if kind in ("auto", "oracle"):
        try:
            from sfeditor.toy.oracle import load_oracle

            return OracleJudge(load_oracle(domain, device=device))
        except (FileNotFoundError, ValueError) as e:
            if kind == "oracle":
                raise ValueError(f"the {domain} oracle cannot be loaded: {e}") from None
    from sfeditor.regions.masks import RegionModel

    return ClusterJudge(RegionModel(G, regions))


@dataclass
class EvalContext:
    """What the read-only commands (``evaluate``, the scoring part of ``ablation``) share: the frozen
    generator, the regions file, the judge, the output folder, precision and progress bars."""

    G: object
    regions: object
    judge: Judge
    out: Path
    truncation: float
    device: torch.device
    amp: Callable
    progress: Callable


def eval_context(args: argparse.Namespace, command: str) -> EvalContext:
    from sfeditor.model.device import choose_bf16, pick_device
    from sfeditor.model.checkpoints import load_generator
    from sfeditor.regions.regions_file import load_regions

    from .common import Progress

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    G = load_generator(args.generator or args.domain, device=dev).eval().requires_grad_(False)
    regions = load_regions(args.regions or args.domain)
    truncation = args.truncation if args.truncation is not None else domain_truncation(args.domain, args.generator)
    judge = _judge_for(args.domain, args.judge, G, regions, dev)
    out = Path(args.out or f"runs/fusion-{command}-{args.domain}")
    out.mkdir(parents=True, exist_ok=True)
    use_bf16, bf16_warning = choose_bf16(args.bf16, dev)
    if bf16_warning:
        print(f"warning: {bf16_warning}", file=sys.stderr)

    def amp():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16)

    bars: dict = {}

    def progress(done, total, stage):
        if stage not in bars:
            bars[stage] = Progress(total, f"{command} {stage}")
        bars[stage].update(done)

    return EvalContext(G, regions, judge, out, truncation, dev, amp, progress)


def swap_fidelity_markdown(summary: Mapping[str, Mapping[str, float]]) -> str:
    """Per leaf: PSNR inside / outside the union region against ``render_swap`` (:mod:`sfeditor.fusion.swap_fidelity`),
    what no swap scores inside and A's reconstruction outside, and the region IoU."""
    lines = ["| leaf | pairs | PSNR inside (dB) | no swap, inside | PSNR outside (dB) | A's reconstruction, outside | "
             "region IoU (oracle vs renderer) |", "|---|---|---|---|---|---|---|"]
    for leaf, c in summary.items():
        cells = [_fmt_pm(c[k], c[k + "_se"], 2 if k != "iou" else 3)
                 for k in ("psnr_inside", "no_swap_inside", "psnr_outside", "recon_outside", "iou")]
        lines.append(f"| {leaf} | {c['pairs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_swap_fidelity(ctx: EvalContext, h: FusionHierarchy, domain: str, leaves: Sequence[str], pairs: int,
                      steps: int | None, seed: int) -> dict:
    """:func:`sfeditor.fusion.swap_fidelity.swap_fidelity` with the domain's inversion (toy encoder start, projector
    preset; ``steps`` overrides the preset's steps), labelled by the judge when it is the oracle."""
    from sfeditor.images.inversion import InversionSettings, Projector
    from sfeditor.fusion.swap_fidelity import summarize, swap_fidelity
    from sfeditor.images.toy_encoder import default_encoder_path, load_toy_encoder

    over = {} if steps is None else {"steps": steps}
    settings = InversionSettings.for_generator(ctx.G, domain, **over)
    enc_path = default_encoder_path(domain)
    encoder = load_toy_encoder(enc_path, map_location=ctx.device, G=ctx.G) if enc_path is not None else None
    projector = Projector(ctx.G, settings, encoder=encoder, cache=False)
    labeller = (lambda x: ctx.judge.labels(x.float(), None)) if ctx.judge.kind == "oracle" else None
    rows = swap_fidelity(ctx.G, h, domain, leaves, projector, pairs=pairs, seed=seed, labeller=labeller,
                         progress=ctx.progress)
    from dataclasses import asdict

    return {"pairs": pairs, "inversion": settings.to_dict(), "encoder": str(enc_path) if enc_path else None,
            "summary": summarize(rows), "rows": [asdict(r) for r in rows]}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Read and score a trained hierarchy: nothing is trained here (the Sec. 7 ablation's variants are
    trained by ``sfeditor-train ablation``)."""
    from sfeditor.editor.session import default_hierarchy_path

    from .recipe import apply_recipe

    apply_recipe(args, EvaluateRecipe, names=())
    if args.hierarchy and not Path(args.hierarchy).exists():
        raise FileNotFoundError(f"no hierarchy file at {args.hierarchy}")
    hpath = Path(args.hierarchy or f"runs/fusion-{args.domain}/hierarchy.pt")
    shipped = default_hierarchy_path(args.domain)
    if not args.hierarchy and not hpath.exists() and shipped is not None:
        hpath = shipped                                   # nothing trained here yet: the shipped one
        print(f"no {args.domain} hierarchy trained in runs/: evaluating the shipped {hpath}")
    if not hpath.exists():
        raise FileNotFoundError(f"no hierarchy file at {hpath} (train one with `sfeditor-train hierarchy "
                                f"--domain {args.domain}`, or pass --hierarchy)")
    if args.swap_pairs and not args.domain.startswith("toy-"):
        raise ValueError("--swap-pairs needs a toy domain (its renderer gives the ground truth)")
    ctx = eval_context(args, "eval")
    G, judge, out, truncation, amp, progress = ctx.G, ctx.judge, ctx.out, ctx.truncation, ctx.amp, ctx.progress
    report = [f"# StyleFusion locality: {args.domain}\n",
              f"judge: {judge.kind}; truncation {truncation}; {args.samples} edits per code and mode "
              f"({', '.join(args.modes)} base); seed {args.seed}\n"]
    metrics: dict = {"domain": args.domain, "judge": judge.kind, "samples": args.samples, "seed": args.seed,
                     "modes": list(args.modes)}
    h = load_hierarchy(hpath, map_location=ctx.device).eval().requires_grad_(False)
    targets = hierarchy_targets(h)
    other = None
    if args.against:         # checked before the (minutes-long) evaluation of the first one
        other = load_hierarchy(args.against, map_location=ctx.device).eval().requires_grad_(False)
        if other.required_codes() != h.required_codes() or hierarchy_targets(other) != targets:
            raise ValueError(f"{args.against} has another tree or another set of nets than {hpath}; only "
                             "hierarchies with the same codes and regions can be compared edit by edit")
    res = evaluate_locality(G, hierarchy_composer(h), h.required_codes(), targets, judge, out, args.samples,
                            args.batch, truncation, args.seed, amp, title=args.domain, progress=progress,
                            modes=args.modes)
    metrics["hierarchy"] = {"file": str(hpath), "nets": sorted(h.nets), **{k: res[k] for k in ("random", "fixed")}}
    report += [f"\n## Hierarchy `{hpath}` (nets: {', '.join(sorted(h.nets))})\n\n",
               "Locality = share of the mean absolute pixel change (d) inside the region of the base *or* the "
               "edited image (judge labels), a 1-px ring along that union's border left out of both sums; change "
               "inside = mean d over the same pixels (an edit that does nothing scores 0 there). The old reading "
               "(the base image's region only, no ring) is kept for comparison with earlier reports. ± one "
               "standard error over the edits (fixed base: over the codes resampled for that one base image, "
               "not over base images); PSNR over the pixels outside the base's region. Heatmaps: "
               "`heatmaps-random.png` (Fig. 10), `heatmaps-fixed.png` (Fig. 11).\n\n", res["table"]]
    if other is not None:
        crows = comparison_rows(G, hierarchy_composer(other), h.required_codes(), targets, judge,
                                res["stats"], args.samples, args.batch, truncation, args.seed, amp,
                                progress=lambda d, t, m: progress(d, t, f"{m} (against)"))
        metrics["against"] = {"file": str(args.against), "rows": crows}
        report += [f"\n## Against `{args.against}`\n\n",
                   "The same seeded edits scored with the other hierarchy; difference = its locality minus "
                   "this one's, ± the paired standard error over the edits (it does not cover another "
                   "training draw).\n\n", comparison_markdown(crows, hpath.name, Path(args.against).name)]
    bstats = hierarchy_blend_stats(h, G, samples=min(args.samples, 64), truncation=truncation, seed=args.seed)
    metrics["blend"] = {k: v.to_dict() for k, v in bstats.items()}
    report += ["\n### FusionNet blend coefficients (`sfeditor.fusion.blend_stats`)\n\n",
               "q_fuse = share of the second child's code in the result, q_align = share of the node's "
               "global code in the coarse layers; saturated = q within 0.01 of 0 or 1; input dependence = "
               "mean per-channel std of q over sampled inputs (0: one fixed channel mask).\n\n",
               blend_table(bstats, {n: h.children_of(n) for n in bstats})]
    leaves = [t.code for t in targets if t.leaves == (t.code,)]
    ceiling_change = renders_change = None
    if args.domain.startswith("toy-"):
        ideal = ideal_edit_readings(args.domain, leaves, args.samples, args.seed, size=G.size)
        metrics["ideal_edit"] = ideal
        random_stats = {label: m["random"] for label, m in res["stats"].items() if "random" in m}
        report += ["\n### Against the ideal edit (renderer)\n\n",
                   "The renderer's own region swap (`sfeditor.toy.render_swap`: A with one region's parameters "
                   "from B, the edit a perfectly region-local code would make), read the same way with the "
                   "renderer's labels; the hierarchy's numbers are its random-base edits (judge labels).\n\n",
                   ideal_markdown(random_stats, ideal)]
        if judge.kind == "oracle":
            ceiling_change = renderer_ceiling(args.domain, leaves, judge, args.samples, args.seed,
                                              measure="region_change")
            renders_change = renderer_ceiling(args.domain, leaves, judge, args.samples, args.seed,
                                              measure="region_variation")
            metrics["renderer_ceiling_region_change"] = ceiling_change
            metrics["renderer_region_variation"] = renders_change
    natural = natural_region_change(G, hierarchy_composer(h), h.required_codes(), leaves, judge, args.samples,
                                    args.batch, truncation, args.seed, amp, progress)
    metrics["natural_region_change"] = natural
    report += ["\n### How strong the edits are\n\n",
               "Region change (mean |Δ| per pixel of the base's region) of each leaf's edit, against how much "
               "that region differs between two independent images (every code drawn afresh): a local edit "
               "that reaches a small share of it is a weak one (Sec. 7's \"mode collapse\"). The renderer's "
               "ideal edit, read against two independent renders, says what share a perfect region edit "
               "reaches (it keeps the pose, so below 1).\n\n",
               strength_markdown({r["label"]: r for r in res["random"]}, natural, ceiling_change, renders_change)]
    if args.swap_pairs:
        swap = run_swap_fidelity(ctx, h, args.domain, [x for x in leaves if x in _toy_regions(args.domain)],
                                 args.swap_pairs, args.swap_steps, args.seed)
        metrics["swap_fidelity"] = swap
        st = swap["inversion"]
        report += ["\n### Swap fidelity (`sfeditor.fusion.swap_fidelity`)\n\n",
                   f"Held-out renders A and B inverted ({st['steps']} projector steps from the toy encoder's "
                   "guess), A's codes with B's at the leaf composed through the hierarchy, compared with "
                   "`render_swap(A, B, leaf)`: PSNR inside the union of A's and the target's region and outside "
                   "it (renderer labels, 1-px ring left out); 'no swap' = A's reconstruction against the target "
                   "(a swap that carries B's region scores above it); A's reconstruction outside = the ceiling "
                   "outside. Region IoU: the result's region by the oracle against the target's (for hair: the "
                   "hair-transfer score). ± s.e. over pairs.\n\n", swap_fidelity_markdown(swap["summary"])]
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=float) + "\n")
    atomic_write_text(out / "report.md", "".join(report))
    print(f"wrote {out / 'report.md'}")
    return 0


def _toy_regions(domain: str) -> list[str]:
    from sfeditor.toy import region_names

    return region_names(domain)


@dataclass
class ScoringRecipe:
    """What the read-only scoring (``evaluate``, the scoring part of ``ablation``) reads from a recipe."""

    samples: int = 200                # edits per code and mode (the paper uses 500)
    batch: int = 16
    seed: int = 0
    truncation: float | None = None   # psi (None: the domain's, paper A.6)
    judge: str = "auto"               # who labels regions: the toy oracle (auto when available) or the regions file

    def __post_init__(self) -> None:
        if self.judge not in ("auto", "oracle", "clusters"):
            raise ValueError(f"judge must be auto, oracle or clusters, not {self.judge!r}")
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, not {self.samples}")


@dataclass
class EvaluateRecipe(ScoringRecipe):
    """``sfeditor-train evaluate``'s recipe (trainer/recipes/evaluate.json)."""

    modes: list[str] = field(default_factory=lambda: ["random", "fixed"])   # Fig. 10 random, Fig. 11 fixed bases
    swap_pairs: int = 0               # toy domains: swap fidelity on N held-out render pairs (2N inversions)
    swap_steps: int | None = None     # projector steps per inversion (None: the domain's preset)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.modes or any(m not in ("random", "fixed") for m in self.modes):
            raise ValueError(f"modes must be a non-empty list of random, fixed; not {self.modes!r}")
        if self.swap_pairs < 0 or (self.swap_steps is not None and self.swap_steps < 0):
            raise ValueError("swap_pairs and swap_steps must be >= 0")


def add_judge_args(e: argparse.ArgumentParser) -> None:
    """Flags the read-only scoring shares (``evaluate`` and ``ablation``); the rest is the recipe's
    (:class:`ScoringRecipe`)."""
    from .recipe import add_recipe_flag

    add_recipe_flag(e, "scoring")
    e.add_argument("--domain", required=True)
    e.add_argument("--generator", help="generator checkpoint (default: the domain's)")
    e.add_argument("--regions", help="regions file (default: the domain's)")
    e.add_argument("--threads", type=int_in(0, 1024), default=0, help="torch CPU threads (0 = torch's)")
    e.add_argument("--device", default="auto", type=device_arg)
    e.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: on where the CPU/GPU runs bf16 natively)")


def add_parsers(sub) -> None:
    """Register ``evaluate`` (read-only; the ablation's training is ``sfeditor-train ablation``)."""
    e = sub.add_parser("evaluate", help="score a trained hierarchy (reads only): locality heatmaps (Fig. 10/11) "
                                        "and numbers, the ideal edit's, swap fidelity")
    add_judge_args(e)
    e.add_argument("--hierarchy", help="hierarchy file (default runs/fusion-<domain>/hierarchy.pt, "
                                       "else the domain's shipped one)")
    e.add_argument("--out", help="output folder (default runs/fusion-eval-<domain>)")
    e.add_argument("--against", metavar="HIERARCHY",
                   help="also score this hierarchy (same tree) on the same edits: per code the difference "
                        "with a paired standard error, to tell whether a retrained hierarchy is better")
    e.set_defaults(func=cmd_evaluate)


__all__ = ["change_map", "locality_share", "psnr_outside", "hierarchy_composer", "node_composer", "EditTarget",
           "hierarchy_targets", "OracleJudge", "ClusterJudge", "edit_experiment", "evaluate_locality",
           "renderer_ceiling", "ceiling_markdown", "natural_region_change", "strength_markdown",
           "ideal_edit_readings", "ideal_markdown", "swap_fidelity_markdown", "run_swap_fidelity",
           "heatmap_figure", "colormap", "paired_difference", "comparison_rows", "comparison_markdown",
           "ablation_rows", "ablation_markdown", "ablation_figure", "ablation_run_dir", "ablation_draws",
           "ablation_draws_markdown", "load_node_net", "add_parsers", "add_judge_args", "eval_context",
           "EvalContext", "blend_table", "ScoringRecipe", "EvaluateRecipe"]
