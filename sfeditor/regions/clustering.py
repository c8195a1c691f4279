"""DeepPixel Ward clustering: discover a generator's semantic regions (paper Sec. 4.2, Appendix A.5).

1. Sample N codes (seeded, domain truncation, paper A.6) and compute their
   DeepPixels (every conv layer's input feature map resized to 64x64 and
   concatenated: C = |S_conv| channels, Fig. 18).
2. Keep a random subsample of pixels (``pixels`` in total, spread over the N
   images) so memory and Ward's O(P^2) cost stay bounded.
3. Rescale channels (``normalization``), optionally PCA-reduce them, and build
   the *full* Ward merge tree (sklearn ``AgglomerativeClustering``).  The tree
   is kept, so ``cut(K)`` gives the centroids for any K without re-clustering.
4. A new image is segmented by nearest centroid (:func:`assign`).

Distances (here, in :mod:`sfeditor.regions.masks` and in the regions file) are
``d(x, c) = mean_ch ((x_ch - c_ch) / scale_ch) ** 2`` in raw DeepPixel space.
``scale`` always has mean per-channel variance 1 over the sample, so d is
about 2 between unrelated DeepPixels whatever the generator; how the variance
is shared out is the ``normalization``:

* ``"none"``: one global factor (the paper's plain Euclidean distance);
* ``"channel"``: every channel standardised (each channel weighs the same);
* ``"layer"``: every layer's block scaled to the same total variance (each of
  the synthesis layers weighs the same, whatever its width).

``min_resolution`` drops the layers whose feature maps are coarser (their
channels get a scale so large they no longer count); the others share the
variance as above.  On the toy generators the fine layers carry the region
boundaries: measured against the region oracle, ``min_resolution=32`` gave a
higher mIoU than all layers (see the regions files' ``clustering`` records).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from ..jobs import Cancelled, check_cancel
from .regions_file import NORMALIZATIONS, RegionsFile
from ..model.identity import generator_identity
from .tree import RegionNode

#: progress(done, total, stage)
ProgressFn = Callable[[int, int, str], None]


def _check_cancel(cancel) -> None:
    check_cancel(cancel, "clustering cancelled")     # raises sfeditor.jobs.Cancelled (also exported here)


@dataclass
class ClusteringOptions:
    """How DeepPixels are sampled and clustered (defaults: < 60 s for a 64x64 toy on one core)."""

    samples: int = 256            # N generated images
    pixels: int = 6000            # DeepPixels kept for Ward, in total
    size: int = 64                # DeepPixel resolution (capped at the generator's)
    truncation: float = 1.0       # psi (shipped domains: 0.7 faces, 0.5 cars)
    seed: int = 0
    normalization: str = "layer"  # "none" | "channel" | "layer" (module docstring)
    min_resolution: int = 0       # ignore layers whose feature maps are coarser (0 = all, the paper)
    pca: int | None = 64          # PCA dimensions Ward runs in; None = all channels
    batch: int = 8                # images per synthesis pass
    noise_mode: str = "const"

    def __post_init__(self) -> None:
        if self.samples < 1 or self.pixels < 2 or self.size < 1 or self.batch < 1:
            raise ValueError("samples, pixels, size and batch must be positive (pixels >= 2)")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.pca is not None and self.pca < 1:
            raise ValueError("pca must be a positive number of dimensions or None")


def deep_pixel_size(G, size: int = 64) -> int:
    """The DeepPixel resolution used for ``G``: ``size``, or the image size if smaller."""
    return min(int(size), int(G.size))


# ---------------------------------------------------------------- sampling
@torch.no_grad()
def sample_deep_pixels(G, options: ClusteringOptions, progress: ProgressFn | None = None,
                       cancel=None, codes=None) -> tuple[np.ndarray, np.ndarray]:
    """Random DeepPixels of N generated images.

    Returns ``(X, where)``: float32 ``[P, C]`` features and int ``[P, 3]``
    (image index, y, x) with P = ``options.pixels`` (at most N * size^2).
    Codes are ``G.random_styles(N, seed, truncation)`` (image n is the same
    image every caller of that seed sees), or the given StyleCode ``codes``
    (e.g. inverted images; then N = len(codes)).
    """
    o = options
    size = deep_pixel_size(G, o.size)
    n = o.samples if codes is None else len(codes)
    hw = size * size
    total = min(o.pixels, n * hw)
    per_image = math.ceil(total / n)
    gen = torch.Generator().manual_seed(o.seed + 1)
    if codes is None:
        codes = G.random_styles(n, seed=o.seed, truncation=o.truncation)
    if progress is not None:
        progress(0, n, "deep pixels")
    feats, where = [], []
    for start in range(0, n, o.batch):
        _check_cancel(cancel)
        s = codes[start:start + o.batch]
        dp = G.deep_pixels(s, size, noise_mode=o.noise_mode).flatten(2)         # [b, C, hw]
        idx = torch.stack([torch.randperm(hw, generator=gen)[:per_image] for _ in range(len(s))])  # [b, p]
        picked = torch.gather(dp, 2, idx.to(dp.device)[:, None, :].expand(-1, dp.shape[1], -1))
        feats.append(picked.permute(0, 2, 1).reshape(-1, dp.shape[1]).float().cpu())
        img = torch.arange(start, start + len(s))[:, None].expand_as(idx)
        where.append(torch.stack([img, idx // size, idx % size], dim=-1).reshape(-1, 3))
        if progress is not None:
            progress(min(start + o.batch, n), n, "deep pixels")
    X, W = torch.cat(feats).numpy(), torch.cat(where).numpy()
    keep = np.sort(np.random.default_rng(o.seed).permutation(len(X))[:total])
    return np.ascontiguousarray(X[keep]), W[keep]


def used_channels(layout, min_resolution: int = 0) -> np.ndarray:
    """Bool ``[C_conv]``: DeepPixel channels of layers whose feature maps are ``min_resolution`` or finer."""
    return np.concatenate([np.full(d, r >= min_resolution) for d, r in zip(layout.conv_dims, layout.conv_res)])


def channel_scale(X: np.ndarray, normalization: str, layer_dims: tuple[int, ...] | None = None,
                  layer_res: tuple[int, ...] | None = None, min_resolution: int = 0) -> np.ndarray:
    """Per-channel divisors ``[C]`` for distances (module doc).

    The channels that count (layers at ``min_resolution`` or finer) get mean
    per-channel variance 1; the others a scale 1e6 times the largest.
    """
    X = X.astype(np.float64)
    c = X.shape[1]
    if layer_dims is None:
        layer_dims, layer_res = (c,), (min_resolution,)
    if sum(layer_dims) != c or layer_res is None or len(layer_res) != len(layer_dims):
        raise ValueError(f"need layer widths summing to {c} and one resolution per layer")
    bounds = np.cumsum((0,) + tuple(layer_dims))
    used = [r >= min_resolution for r in layer_res]
    if not any(used):
        raise ValueError(f"no layer is at resolution {min_resolution} or finer")
    on = np.repeat(np.array(used), np.diff(bounds))
    n_on, n_layers = int(on.sum()), sum(used)
    var = X.var(axis=0)
    floor = max(float(var[on].mean()) * 1e-6, 1e-12)      # constant channels must not explode
    scale = np.ones(c)
    if normalization == "none":
        scale[:] = math.sqrt(max(var[on].mean(), floor))
    elif normalization == "channel":
        scale[:] = np.sqrt(np.maximum(var, floor))
    elif normalization == "layer":
        for a, b, u in zip(bounds[:-1], bounds[1:], used):
            # every used layer gets total variance C_used / L_used: mean per-channel variance 1
            block_var = max(float(var[a:b].sum()), floor * (b - a))
            scale[a:b] = math.sqrt(block_var * n_layers / n_on) if u else 1.0
    else:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    scale[~on] = 1e6 * scale[on].max()
    return scale.astype(np.float32)


# --------------------------------------------------------------- the tree
class MergeTree:
    """A Ward merge tree over ``m`` units (pixels, or clusters of a compacted tree).

    ``children[i]`` are the two nodes merged at step i into node ``m + i``
    (sklearn's ``children_`` convention; units are nodes 0..m-1); merges are
    in increasing Ward distance.  ``unit_sums`` / ``unit_counts`` hold each
    unit's summed raw DeepPixel and pixel count, enough to give any cut's
    centroids.
    """

    def __init__(self, children: np.ndarray, distances: np.ndarray | None, unit_sums: np.ndarray,
                 unit_counts: np.ndarray):
        self.children = np.asarray(children, dtype=np.int64).reshape(-1, 2)
        self.unit_sums = np.asarray(unit_sums, dtype=np.float32)
        self.unit_counts = np.asarray(unit_counts, dtype=np.int64)
        m = len(self.unit_sums)
        if m < 1 or len(self.children) != m - 1 or len(self.unit_counts) != m:
            raise ValueError(f"a merge tree over {m} units needs {m - 1} merges and {m} counts")
        if m > 1 and (self.children.min() < 0 or self.children.max() >= 2 * m - 2):
            raise ValueError("merge tree children out of range")
        self.distances = None if distances is None else np.asarray(distances, dtype=np.float64)
        self._node_counts: np.ndarray | None = None

    @property
    def num_units(self) -> int:
        return len(self.unit_sums)

    @property
    def channels(self) -> int:
        return self.unit_sums.shape[1]

    def node_counts(self) -> np.ndarray:
        """Pixels under every node ``[2m - 1]``."""
        if self._node_counts is None:
            m = self.num_units
            counts = np.zeros(2 * m - 1, dtype=np.int64)
            counts[:m] = self.unit_counts
            for i, (a, b) in enumerate(self.children):
                counts[m + i] = counts[a] + counts[b]
            self._node_counts = counts
        return self._node_counts

    def cut_nodes(self, k: int) -> list[int]:
        """The K nodes left when the last K - 1 merges are undone, largest first."""
        m = self.num_units
        if not 1 <= k <= m:
            raise ValueError(f"can cut this tree into 1..{m} clusters, not {k}")
        nodes = {2 * m - 2}
        for i in range(m - 2, m - k - 1, -1):
            nodes.remove(m + i)
            nodes.update(int(c) for c in self.children[i])
        counts = self.node_counts()
        return sorted(nodes, key=lambda nd: (-counts[nd], nd))

    def unit_labels(self, k: int) -> np.ndarray:
        """Cluster id (0..K-1, largest cluster first) of every unit for a cut into K."""
        m = self.num_units
        label = np.full(2 * m - 1, -1, dtype=np.int64)
        for cid, nd in enumerate(self.cut_nodes(k)):
            label[nd] = cid
        for i in range(m - k - 1, -1, -1):       # merges below the cut, parents before children
            label[self.children[i]] = label[m + i]
        return label[:m]

    def cut(self, k: int) -> np.ndarray:
        """Centroids ``[K, C]`` (mean raw DeepPixel of each cluster) of the cut into K clusters."""
        labels = self.unit_labels(k)
        onehot = (labels[None, :] == np.arange(k)[:, None]).astype(np.float64)       # [K, m]
        sums = onehot @ self.unit_sums.astype(np.float64)
        counts = onehot @ self.unit_counts.astype(np.float64)
        return (sums / counts[:, None]).astype(np.float32)

    def cluster_sizes(self, k: int) -> np.ndarray:
        """Pixels per cluster of the cut into K (non-increasing)."""
        return self.node_counts()[self.cut_nodes(k)]

    def hierarchy(self, k: int, names: list[str] | None = None) -> RegionNode:
        """The Ward tree above a cut into K, as a region tree (leaves ``cluster_<id>`` by default)."""
        names = names or [f"cluster_{i}" for i in range(k)]
        m = self.num_units
        nodes = {nd: RegionNode(names[cid]) for cid, nd in enumerate(self.cut_nodes(k))}
        for i in range(m - k, m - 1):                  # the merges above the cut, in order
            a, b = (int(c) for c in self.children[i])
            nodes[m + i] = RegionNode("", (nodes.pop(a), nodes.pop(b)))
        (root,) = nodes.values()
        return _name_groups(root)

    def compact(self, max_k: int = 64) -> "MergeTree":
        """The same tree above its cut into ``max_k`` clusters (cuts for K <= max_k are unchanged)."""
        m = self.num_units
        k = min(max_k, m)
        base = self.cut_nodes(k)
        labels = self.unit_labels(k)
        onehot = (labels[None, :] == np.arange(k)[:, None]).astype(np.float64)
        sums = onehot @ self.unit_sums.astype(np.float64)
        counts = (onehot @ self.unit_counts.astype(np.float64)).round().astype(np.int64)
        new_id = {nd: cid for cid, nd in enumerate(base)}
        first = m - k                                  # first merge above the cut
        for i in range(first, m - 1):
            new_id[m + i] = k + (i - first)
        children = np.array([[new_id[int(a)], new_id[int(b)]] for a, b in self.children[first:]],
                            dtype=np.int64).reshape(-1, 2)
        dist = None if self.distances is None else self.distances[first:]
        return MergeTree(children, dist, sums, counts)

    def save(self, path: str | os.PathLike, meta: dict | None = None, **arrays: np.ndarray) -> None:
        """``.npz`` (no pickles); ``meta`` is stored as JSON, extra ``arrays`` alongside."""
        from ..atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, children=self.children, unit_sums=self.unit_sums, unit_counts=self.unit_counts,
                         distances=self.distances if self.distances is not None else np.zeros(0),
                         meta=np.array(json.dumps(meta or {})), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["MergeTree", dict]:
        try:
            with np.load(path, allow_pickle=False) as z:
                dist = z["distances"]
                tree = cls(z["children"], dist if len(dist) else None, z["unit_sums"], z["unit_counts"])
                meta = json.loads(str(z["meta"]))
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"{os.fspath(path)}: not a readable merge-tree file ({e})") from None
        return tree, meta


def _name_groups(root: RegionNode) -> RegionNode:
    """Name internal nodes breadth-first: "all", "group_1", "group_2", ..."""
    order = {id(n): i for i, n in enumerate(n for n in root if not n.is_leaf)}

    def rebuild(n: RegionNode) -> RegionNode:
        if n.is_leaf:
            return n
        i = order[id(n)]
        return RegionNode("all" if i == 0 else f"group_{i}", tuple(rebuild(c) for c in n.children))

    return rebuild(root)


def ward_tree(X_ward: np.ndarray, X_raw: np.ndarray | None = None) -> MergeTree:
    """Full Ward merge tree of the rows of ``X_ward``; centroids are means of ``X_raw`` rows."""
    from sklearn.cluster import AgglomerativeClustering

    X_raw = X_ward if X_raw is None else X_raw
    if len(X_ward) != len(X_raw) or len(X_ward) < 2:
        raise ValueError("need at least 2 pixels, the same number in both feature arrays")
    agg = AgglomerativeClustering(n_clusters=1, linkage="ward", compute_full_tree=True, compute_distances=True)
    agg.fit(np.asarray(X_ward, dtype=np.float64))
    return MergeTree(agg.children_, agg.distances_, X_raw, np.ones(len(X_raw), dtype=np.int64))


def pca_reduce(X: np.ndarray, dims: int | None, seed: int = 0) -> np.ndarray:
    """Project rows onto their top ``dims`` principal components (no whitening)."""
    if dims is None or dims >= min(X.shape):
        return X
    from sklearn.decomposition import PCA

    return PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit_transform(X).astype(np.float32)


# -------------------------------------------------------------- the pipeline
@dataclass
class ClusteringResult:
    """A clustered generator: the merge tree, the distance scale and how they were made."""

    tree: MergeTree
    channel_scale: np.ndarray
    options: ClusteringOptions
    deep_pixel_size: int
    seconds: dict = field(default_factory=dict)
    generator: dict = field(default_factory=dict)
    calibration: np.ndarray | None = None   # [<=512, C] raw DeepPixels for the temperature

    def cut(self, k: int) -> np.ndarray:
        return self.tree.cut(k)

    def temperature(self, k: int, quantile: float = 0.5) -> float:
        """A soft-min temperature for the cut into K: the median pixel gets p(nearest) ~ 0.99.

        tau = median(d2 - d1) / ln 99 over the calibration pixels, with d1 <= d2
        the two smallest distances to the centroids.
        """
        if k < 2 or self.calibration is None or len(self.calibration) == 0:
            return 1.0
        x = torch.from_numpy(self.calibration.astype(np.float32))[:, :, None, None]
        d = squared_distances(x, torch.from_numpy(self.cut(k)), torch.from_numpy(self.channel_scale))[:, :, 0, 0]
        return soft_min_temperature(d, quantile)

    def to_regions(self, domain: str, k: int, clusters: dict[int, str] | None = None,
                   tree: RegionNode | None = None) -> RegionsFile:
        """A regions file for the cut into K; unlabelled (``cluster_<id>``, Ward tree) by default."""
        if clusters is None:
            clusters = {i: f"cluster_{i}" for i in range(k)}
        if tree is None:
            tree = self.tree.hierarchy(k, [clusters[i] for i in range(k)]) if len(set(clusters.values())) == k \
                else None
        if tree is None:
            raise ValueError("several clusters share a label: give the region tree")
        info = asdict(self.options)
        info.update(clusters=k, seconds=self.seconds, cluster_pixels=[int(c) for c in self.tree.cluster_sizes(k)])
        return RegionsFile(domain=domain, generator=dict(self.generator), centroids=self.cut(k),
                           clusters=clusters, tree=tree, deep_pixel_size=self.deep_pixel_size,
                           normalization=self.options.normalization, channel_scale=self.channel_scale,
                           temperature=round(self.temperature(k), 6), clustering=info)

    def save(self, path: str | os.PathLike, max_k: int = 64) -> None:
        """The compacted tree (any K <= max_k can be cut later) with scale and options."""
        meta = {"options": asdict(self.options), "deep_pixel_size": self.deep_pixel_size,
                "seconds": self.seconds, "generator": self.generator}
        meta["channel_scale"] = self.channel_scale.tolist()
        cal = np.zeros((0, self.tree.channels)) if self.calibration is None else self.calibration
        self.tree.compact(max_k).save(path, meta=meta, calibration=cal.astype(np.float16))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ClusteringResult":
        tree, meta = MergeTree.load(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                cal = z["calibration"].astype(np.float32) if "calibration" in z.files else None
            return cls(tree, np.asarray(meta["channel_scale"], dtype=np.float32),
                       ClusteringOptions(**meta["options"]), int(meta["deep_pixel_size"]),
                       dict(meta.get("seconds", {})), dict(meta.get("generator", {})), cal)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{os.fspath(path)}: merge-tree metadata incomplete ({e})") from None


def cluster_generator(G, options: ClusteringOptions | None = None, progress: ProgressFn | None = None,
                      cancel=None, codes=None) -> ClusteringResult:
    """Sample DeepPixels of ``G`` (of random codes, or of ``codes``) and build their full Ward tree (Sec. 4.2)."""
    o = options or ClusteringOptions()
    t0 = time.perf_counter()
    X, _ = sample_deep_pixels(G, o, progress, cancel, codes)
    t1 = time.perf_counter()
    _check_cancel(cancel)
    scale = channel_scale(X, o.normalization, G.layout.conv_dims, G.layout.conv_res, o.min_resolution)
    used = used_channels(G.layout, o.min_resolution)
    Xn = (X / scale)[:, used]
    if progress is not None:
        progress(0, 1, "ward")
    tree = ward_tree(pca_reduce(Xn, o.pca, o.seed), X)
    t2 = time.perf_counter()
    if progress is not None:
        progress(1, 1, "ward")
    cal = X[np.random.default_rng(o.seed + 2).permutation(len(X))[:512]]
    return ClusteringResult(tree, scale, o, deep_pixel_size(G, o.size),
                            {"deep_pixels": round(t1 - t0, 2), "ward": round(t2 - t1, 2)},
                            generator_identity(G), cal)


# -------------------------------------------------------------- assignment
def squared_distances(deep_pixels: torch.Tensor, centroids: torch.Tensor,
                      channel_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, C, H, W]`` DeepPixels, ``[K, C]`` centroids -> ``[B, K, H, W]`` distances (module doc).

    Batched (one einsum), differentiable, on the DeepPixels' device.
    """
    x = deep_pixels
    c = centroids.to(device=x.device, dtype=x.dtype)
    if c.ndim != 2 or c.shape[1] != x.shape[1]:
        raise ValueError(f"centroids must be [K, {x.shape[1]}], got {tuple(c.shape)}")
    if channel_scale is not None:
        inv = 1.0 / channel_scale.to(device=x.device, dtype=x.dtype)
        x = x * inv[None, :, None, None]
        c = c * inv[None, :]
    xx = x.pow(2).sum(1, keepdim=True)                                  # [B, 1, H, W]
    xc = torch.einsum("bchw,kc->bkhw", x, c)
    cc = c.pow(2).sum(1)[None, :, None, None]
    return (xx - 2 * xc + cc).clamp_min(0) / x.shape[1]


def soft_min_temperature(distances: torch.Tensor, quantile: float = 0.5) -> float:
    """tau such that the ``quantile`` pixel gets p(nearest) ~ 0.99 under the soft-min (A.5).

    ``distances``: ``[P, K]`` (K >= 2) of P calibration DeepPixels to the centroids;
    tau = quantile(d2 - d1) / ln 99 with d1 <= d2 the two smallest distances of a pixel.
    """
    if distances.ndim != 2 or distances.shape[1] < 2 or distances.shape[0] < 1:
        return 1.0
    two = distances.float().topk(2, dim=1, largest=False).values
    gap = float(torch.quantile(two[:, 1] - two[:, 0], quantile))
    return max(gap / math.log(99.0), 1e-6)


@torch.no_grad()
def assign(deep_pixels: torch.Tensor, centroids, channel_scale=None, batch: int = 16) -> torch.Tensor:
    """Hard labels ``[B, H, W]`` (int64): the nearest centroid of every DeepPixel (Sec. 4.2)."""
    c = torch.as_tensor(centroids)
    s = None if channel_scale is None else torch.as_tensor(channel_scale)
    out = [squared_distances(deep_pixels[i:i + batch], c, s).argmin(1) for i in range(0, len(deep_pixels), batch)]
    return torch.cat(out) if out else torch.zeros((0,) + tuple(deep_pixels.shape[-2:]), dtype=torch.int64)


__all__ = ["ClusteringOptions", "ClusteringResult", "MergeTree", "Cancelled", "cluster_generator",
           "sample_deep_pixels", "channel_scale", "used_channels", "ward_tree", "pca_reduce", "squared_distances", "assign",
           "soft_min_temperature", "deep_pixel_size"]
