"""Swap fidelity: does a region's code carry that region, and only it? (paper Sec. 6.2, issue 38 item 2)

The direct test of StyleFusion's promise on a toy domain, whose renderer knows the
answer.  For two renders A and B and a leaf region k:

1. invert A and B into the generator (the project's inversion: the domain's toy
   encoder as the start, then the projector, :class:`sfeditor.images.inversion.Projector`);
2. compose A's codes with B's code at leaf k through the hierarchy
   (:func:`sfeditor.images.editing.transfer_region`: the leaf from B, every other node,
   the ancestors' global codes included, from A) and synthesize;
3. compare with the renderer's ground truth ``render_swap(A, B, k)`` (A with region
   k's parameters taken from B): PSNR inside U = (lab_A == k) | (lab_target == k)
   and outside it, the 1-px ring along U's border left out of both
   (:func:`sfeditor.editor.locality.union_ring`; renderer labels).

Reference numbers in the same rows: the inversions' own PSNR (a swap cannot be
more faithful outside the region than A's reconstruction is), and the inside PSNR
of A's reconstruction against the target (what "no swap at all" scores inside: a
swap that carries B's region beats it).  With a ``labeller`` (the domain's region
oracle) each row also gives the IoU of the result's region-k mask against the
target's: for ``hair`` this is the hair-transfer score of issue 38 item 5.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..images.editing import fuse, transfer_region
from ..images.imageio import from_uint8
from ..jobs import check_cancel
from ..editor.locality import union_ring

__all__ = ["SwapRow", "swap_fidelity", "summarize", "masked_psnr", "heldout_pairs"]

ProgressFn = Callable[[int, int, str], None]
#: seeds of held-out renders (the project keeps seeds >= 10**7 out of training: trainer.generator.HELDOUT_SEED_OFFSET)
HELDOUT_SEED_BASE = 70_000_000


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB, images in [-1, 1], peak-to-peak 2) over the pixels of ``mask`` (``[H, W]`` bool) of one
    image pair ``[3, H, W]``; NaN for an empty mask, capped at 100 dB for identical pixels."""
    m = mask.to(a.device).bool()
    n = int(m.sum())
    if n == 0:
        return float("nan")
    d2 = (a.double().clamp(-1, 1) - b.double().clamp(-1, 1)).pow(2)[:, m]
    mse = float(d2.mean())
    return 100.0 if mse <= 0 else min(100.0, 10 * math.log10(4.0 / mse))


@dataclass
class SwapRow:
    leaf: str
    seed_a: int
    seed_b: int
    psnr_inside: float           # result vs render_swap target, inside U (ring left out)
    psnr_outside: float          # ... outside U
    no_swap_inside: float        # A's reconstruction vs the target inside U (what no swap scores)
    recon_outside: float         # A's reconstruction vs render A outside U (the ceiling outside)
    inversion_psnr_a: float
    inversion_psnr_b: float
    union_pixels: int
    iou: float = float("nan")    # result's region-k mask (labeller) vs the target's (renderer)


def heldout_pairs(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (A, B) render seeds outside the training seeds, reproducible from ``seed``."""
    rng = np.random.default_rng([seed, 3838])
    s = rng.choice(10_000_000, size=2 * n, replace=False) + HELDOUT_SEED_BASE
    return [(int(s[2 * i]), int(s[2 * i + 1])) for i in range(n)]


@torch.no_grad()
def _synth(G, s) -> torch.Tensor:
    return G.synthesis(s, noise_mode="const").float()


def swap_fidelity(G, hierarchy, domain: str, leaves: Sequence[str], projector, pairs: int = 4, seed: int = 0,
                  labeller: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  progress: ProgressFn | None = None, cancel=None) -> list[SwapRow]:
    """One :class:`SwapRow` per pair and leaf (module docstring).

    ``projector``: a :class:`sfeditor.images.inversion.Projector` for ``G`` (its settings set the steps);
    ``labeller``: images ``[B, 3, H, W]`` in [-1, 1] -> label ids ``[B, H, W]`` indexing the domain's
    region names (the toy oracle's ``predict(...)[0]``).  Progress counts inversions then swaps;
    ``cancel`` (a :class:`sfeditor.jobs.CancelToken`) is honoured between steps of both.
    """
    from ..toy import region_names, render, render_swap

    names = region_names(domain)
    bad = [k for k in leaves if k not in names]
    if bad:
        raise ValueError(f"{domain} has no region {bad[0]!r} to swap (regions: {', '.join(names)})")
    if pairs < 1:
        raise ValueError("pairs must be >= 1")
    size = int(G.size)
    seeds = heldout_pairs(pairs, seed)
    flat = [s for p in seeds for s in p]
    images, labels = render(domain, flat, size=size)
    total = len(flat) + pairs * len(leaves)
    done = 0
    if progress is not None:
        progress(0, total, "invert")
    inv = {}
    for i, s in enumerate(flat):
        check_cancel(cancel, "swap fidelity cancelled")
        if s not in inv:
            inv[s] = projector.invert(images[i], cancel=cancel)
        done += 1
        if progress is not None:
            progress(done, total, "invert")
    rows = []
    for p, (a, b) in enumerate(seeds):
        xa = from_uint8(images[2 * p:2 * p + 1])[0].to(G.device)
        lab_a = torch.as_tensor(labels[2 * p]).long()
        w_a, w_b = inv[a].w_plus.to(G.device), inv[b].w_plus.to(G.device)
        with torch.no_grad():
            rec_a = _synth(G, G.styles(w_a))[0]
        for k in leaves:
            check_cancel(cancel, "swap fidelity cancelled")
            tgt_img, tgt_lab = render_swap(domain, [a], [b], [k], size=size)
            tgt = from_uint8(tgt_img)[0].to(G.device)
            kid = names.index(k)
            inner, ring = union_ring((lab_a == kid)[None], (torch.as_tensor(tgt_lab[0]).long() == kid)[None])
            inner, outer = inner[0], ~(inner[0] | ring[0])
            with torch.no_grad():
                out = _synth(G, fuse(G, hierarchy, transfer_region(hierarchy, k, w_b, w_a)))
            row = SwapRow(k, a, b, masked_psnr(out[0], tgt, inner), masked_psnr(out[0], tgt, outer),
                          masked_psnr(rec_a, tgt, inner), masked_psnr(rec_a, xa, outer),
                          float(inv[a].psnr), float(inv[b].psnr), int(inner.sum()))
            if labeller is not None:
                pred = labeller(out).cpu()[0] == kid
                truth = torch.as_tensor(tgt_lab[0]).long() == kid
                union = int((pred | truth).sum())
                row.iou = float((pred & truth).sum()) / union if union else float("nan")
            rows.append(row)
            done += 1
            if progress is not None:
                progress(done, total, "swap")
    return rows


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def summarize(rows: Sequence[SwapRow]) -> dict[str, dict]:
    """Per leaf: pairs and the mean ± standard error (over pairs) of every number of :class:`SwapRow`."""
    out: dict[str, dict] = {}
    for k in dict.fromkeys(r.leaf for r in rows):
        mine = [asdict(r) for r in rows if r.leaf == k]
        cell: dict = {"pairs": len(mine)}
        for key in ("psnr_inside", "psnr_outside", "no_swap_inside", "recon_outside", "iou"):
            cell[key], cell[key + "_se"] = _mean_se([m[key] for m in mine])
        out[k] = cell
    return out
