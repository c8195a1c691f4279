"""Centroid pruning: drop the cluster centroids that never decide a region (after labelling, Sec. 4.2).

A regions file segments a DeepPixel by the label of its *nearest* centroid
(Sec. 4.2).  On the toy generators the DeepPixels mostly encode position, so
small regions (eyes, mouth) only get clusters of their own when the Ward tree
is cut fine (K in the thousands, ``BENCHMARKS.md``); most of those centroids
then sit inside a region, surrounded by centroids of the same label, and only
cost time in every mask (the distance einsum is linear in K).

:func:`prune_centroids` is the reduced nearest-neighbour rule (Gates 1972) on
a *pool* of DeepPixels from fresh generated images: a centroid is dropped when
every pool pixel it is nearest to has, among the centroids still kept, a next
nearest with the same region.  Every pool pixel therefore keeps its region
exactly; pixels outside the pool may move only where the pool is thin.  The
remaining centroids are not moved (merging them, e.g. re-joining the Ward
subtrees whose clusters share a label, moves boundaries: -0.03 mIoU on
toy-faces).  Soft masks (A.5) use the kept centroids and a temperature
recalibrated on them.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch

from sfeditor.regions.clustering import soft_min_temperature
from sfeditor.jobs import check_cancel

#: progress(done, total, stage)
ProgressFn = Callable[[int, int, str], None]


def _check_cancel(cancel) -> None:
    check_cancel(cancel, "pruning cancelled")          # sfeditor.jobs.Cancelled


@torch.no_grad()
def nearest_centroids(model, codes, top: int = 64, batch: int = 16, progress: ProgressFn | None = None,
                      cancel=None) -> np.ndarray:
    """``[P, m]`` int32: the ``m = min(top, K)`` nearest centroids of every DeepPixel, nearest first.

    ``model``: :class:`sfeditor.regions.masks.RegionModel`; ``codes``: a StyleCode of
    the pool images (P = images x DeepPixel size^2).
    """
    k = model.regions.num_clusters
    m = min(int(top), k)
    if m < 1:
        raise ValueError("top must be at least 1")
    n = len(codes)
    out = []
    if progress is not None:
        progress(0, n, "nearest centroids")
    for i in range(0, n, batch):
        _check_cancel(cancel)
        _, feats = model.G.synthesis(codes[i:i + batch], model.noise_mode, return_features=True)
        scores = model.centroid_scores(features=feats)                            # [b, h*w, K]
        idx = scores.topk(m, dim=2, largest=False, sorted=True).indices           # [b, h*w, m]
        out.append(idx.reshape(-1, m).to(torch.int32).cpu())
        if progress is not None:
            progress(min(i + batch, n), n, "nearest centroids")
    return torch.cat(out).numpy()


def prune_centroids(nearest: np.ndarray, cluster_region: np.ndarray, progress: ProgressFn | None = None,
                    cancel=None) -> np.ndarray:
    """``[K]`` bool: the centroids to keep so that every pool pixel keeps its region.

    ``nearest``: ``[P, m]`` centroid ids per pool pixel, nearest first (all
    alive centroids outside a row are farther than those in it);
    ``cluster_region``: ``[K]`` region id of every centroid.  Candidates are
    tried from the smallest pool share up (a centroid no pool pixel is nearest
    to goes first); a pixel whose next kept centroid is outside its ``m``
    nearest cannot be checked, so it keeps its centroid.  The last centroid of
    a region is always kept (a region the pool never shows stays segmentable).
    """
    nearest = np.asarray(nearest, dtype=np.int64)
    region = np.asarray(cluster_region, dtype=np.int64)
    if nearest.ndim != 2 or nearest.shape[1] < 1:
        raise ValueError(f"nearest must be [P, m] with m >= 1, got shape {list(nearest.shape)}")
    k = len(region)
    if nearest.size and (nearest.min() < 0 or nearest.max() >= k):
        raise ValueError(f"nearest holds centroid ids outside 0..{k - 1}")
    if len(nearest) == 0:
        raise ValueError("the pool holds no pixels")
    ref = region[nearest[:, 0]]                                                   # every pixel's region now
    alive = np.ones(k, dtype=bool)
    owner = nearest[:, 0]
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(k + 1))
    members = [[order[bounds[c]:bounds[c + 1]]] for c in range(k)]                # pixel ids per centroid
    candidates = np.argsort(bounds[1:] - bounds[:-1], kind="stable")
    left = np.bincount(region, minlength=int(region.max()) + 1)                   # kept centroids per region
    for done, c in enumerate(candidates):
        if done % 64 == 0:
            _check_cancel(cancel)
            if progress is not None:
                progress(done, k, "prune")
        if left[region[c]] == 1:
            continue
        px = np.concatenate(members[c])
        if len(px) == 0:
            alive[c] = False
            left[region[c]] -= 1
            continue
        rows = nearest[px]                                                        # [n, m]
        ok = alive[rows] & (rows != c)
        first = ok.argmax(1)
        if not ok[np.arange(len(px)), first].all():
            continue                                                              # some next centroid unknown
        new_owner = rows[np.arange(len(px)), first]
        if (region[new_owner] != ref[px]).any():
            continue                                                              # c decides some pixel
        alive[c] = False
        left[region[c]] -= 1
        members[c] = []
        srt = np.argsort(new_owner, kind="stable")
        owners, starts = np.unique(new_owner[srt], return_index=True)
        for o, g in zip(owners, np.split(px[srt], starts[1:])):
            members[int(o)].append(g)
    if progress is not None:
        progress(k, k, "prune")
    return alive


def prune_regions(model, images: int = 128, seed: int = 2, truncation: float = 1.0, top: int = 64,
                  batch: int = 16, progress: ProgressFn | None = None, cancel=None):
    """A copy of ``model.regions`` holding only the centroids that decide a region; and a report.

    The report (also stored as the copy's ``clustering["pruning"]``) names the
    cluster ids kept (``kept``: new cluster i was old cluster ``kept[i]``).

    The pool is ``images`` generated images (``G.random_styles(images, seed,
    truncation)``; use a seed other than the clustering's and the labelling's).
    The temperature is recalibrated on the kept centroids (as at clustering
    time: the median pool pixel gets p(nearest) ~ 0.99).
    """
    from sfeditor.regions.masks import RegionModel

    regions = model.regions
    if images < 1:
        raise ValueError("the pool needs at least one image")
    t0 = time.perf_counter()
    with torch.no_grad():
        codes = model.G.random_styles(images, seed=seed, truncation=truncation)
    nearest = nearest_centroids(model, codes, top=top, batch=batch, progress=progress, cancel=cancel)
    region = model.cluster_leaf.cpu().numpy()
    keep = np.flatnonzero(prune_centroids(nearest, region, progress=progress, cancel=cancel))

    new = copy.copy(regions)
    new.centroids = regions.centroids[keep]
    new.clusters = {i: regions.clusters[int(c)] for i, c in enumerate(keep)}
    new.clustering, new.card = copy.deepcopy(regions.clustering), {}
    sizes = new.clustering.get("cluster_pixels")
    if isinstance(sizes, list) and len(sizes) == regions.num_clusters:
        new.clustering["cluster_pixels"] = [sizes[int(c)] for c in keep]
    new.validate()
    pruned = RegionModel(model.G, new, noise_mode=model.noise_mode)
    with torch.no_grad():
        _, feats = model.G.synthesis(codes[:8], model.noise_mode, return_features=True)
        d = pruned.distances(features=feats).permute(0, 2, 3, 1).reshape(-1, len(keep))
    pick = torch.randperm(len(d), generator=torch.Generator().manual_seed(seed))[:4096]
    new.temperature = round(soft_min_temperature(d[pick]), 6)
    report = {"from_clusters": regions.num_clusters, "clusters": int(len(keep)), "images": images, "seed": seed,
              "truncation": truncation, "top": int(nearest.shape[1]), "pool_pixels": int(len(nearest)),
              "seconds": round(time.perf_counter() - t0, 2),
              "method": "reduced nearest neighbour: every pool pixel keeps its region",
              "kept": [int(c) for c in keep]}
    new.clustering["pruning"] = report
    return new, report


__all__ = ["nearest_centroids", "prune_centroids", "prune_regions"]
