"""Contact sheets of DeepPixel clusters: the pictures a person labels a new domain from.

Paper Sec. 4.2: each Ward cluster is named with a semantic region by looking
at where it falls on generated images.  :func:`cluster_samples` renders N
images and gives every DeepPixel its nearest-centroid cluster id;
:func:`cluster_sheets` draws one *contact sheet* per cluster: the sample
images with the cluster's pixels in colour and outlined in magenta, the rest
dimmed, under a banner with the cluster id, its current region name and its
share of the pixels.  :func:`label_overview` shows all clusters colour-coded.

Used by ``sfeditor-train regions`` (``clusters/cluster_<id>.png``) and by the
app's labelling dialog.  Qt-free; pictures are uint8 RGB arrays.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

import numpy as np

from ..images.imageio import make_grid
from ..jobs import check_cancel

#: Cluster / region colours (more are drawn at random, seeded, past 16).
PALETTE = np.array([
    (95, 95, 95), (230, 160, 40), (60, 120, 220), (240, 200, 170), (40, 200, 80), (220, 40, 60),
    (150, 80, 200), (90, 200, 200), (250, 240, 90), (160, 100, 60), (255, 130, 200), (120, 120, 120),
    (0, 110, 90), (200, 200, 255), (130, 0, 40), (180, 255, 120)], dtype=np.uint8)

#: The outline colour of a contact sheet's cluster pixels.
OUTLINE = (255, 0, 255)

#: Height of the title bar on top of every contact sheet (the app's thumbnails leave it out).
BANNER_HEIGHT = 18


# ---------------------------------------------------------------- helpers
def colours(n: int) -> np.ndarray:
    """``n`` distinct RGB colours, uint8 [n, 3]: the palette, then seeded random ones."""
    if n <= len(PALETTE):
        return PALETTE[:n]
    rng = np.random.default_rng(0)
    return np.concatenate([PALETTE, rng.integers(30, 256, (n - len(PALETTE), 3), dtype=np.uint8)])


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask [..., H, W] (4-neighbourhood)."""
    m = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    inner = m[..., 1:-1, 1:-1] & m[..., :-2, 1:-1] & m[..., 2:, 1:-1] & m[..., 1:-1, :-2] & m[..., 1:-1, 2:]
    return mask & ~inner


def banner(width: int, text: str, height: int = BANNER_HEIGHT) -> np.ndarray:
    """A dark title bar [height, width, 3] with ``text``."""
    import cv2

    bar = np.full((height, width, 3), 24, dtype=np.uint8)
    cv2.putText(bar, text, (4, height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    return bar


def legend(width: int, names: list[str], chips: np.ndarray, cell: int = 150) -> np.ndarray:
    """Rows of (colour chip, name) entries, ``cell`` pixels each, wrapped to ``width``."""
    import cv2

    per_row = max(1, width // cell)
    rows = []
    for j in range(0, len(names), per_row):
        bar = np.full((18, width, 3), 24, dtype=np.uint8)
        for q, i in enumerate(range(j, min(j + per_row, len(names)))):
            x = 4 + q * cell
            bar[4:14, x:x + 10] = chips[i]
            cv2.putText(bar, names[i][:20], (x + 14, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (235, 235, 235), 1,
                        cv2.LINE_AA)
        rows.append(bar)
    return np.concatenate(rows)


def upscale(a: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour upscaling of [..., H, W, C] by an integer factor."""
    return a.repeat(k, axis=-3).repeat(k, axis=-2) if k > 1 else a


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of integer maps [..., h, w] to ``size`` = (H, W) (as torch's "nearest")."""
    labels = np.asarray(labels)
    h, w = labels.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return labels
    rows = (np.arange(H) * h) // H
    cols = (np.arange(W) * w) // W
    return labels[..., rows[:, None], cols[None, :]]


# ---------------------------------------------------------------- pictures
def contact_sheet(images: np.ndarray, labels: np.ndarray, cluster: int, title: str, scale: int = 2) -> np.ndarray:
    """Images [B, H, W, 3] with cluster ``cluster``'s pixels bright and outlined, the rest dimmed.

    ``labels`` [B, H, W] are cluster ids at the image size.
    """
    inside = labels == cluster
    grey = images.mean(-1, keepdims=True)
    dim = (0.25 * grey + 0.1 * images).astype(np.uint8)
    out = np.where(inside[..., None], images, dim)
    out = upscale(out, scale)
    edge = outline(upscale(inside[..., None], scale)[..., 0])
    out[edge] = OUTLINE
    grid = make_grid(out, cols=min(8, len(out)))
    return np.concatenate([banner(grid.shape[1], title), grid])


def label_overview(images: np.ndarray, labels: np.ndarray, names: list[str], scale: int = 2,
                   max_legend: int = 64) -> np.ndarray:
    """Pairs (image, colour-coded cluster map) plus a colour legend; ``names[k]`` names cluster k.

    With more than ``max_legend`` clusters (a fine cut, labelled) one colour per
    cluster is unreadable: the map is coloured by name, cluster borders drawn
    darker, and the legend counts each name's clusters.
    """
    if len(names) <= max_legend:
        col = colours(len(names))
        pairs = np.concatenate([images, col[labels]], axis=2)                 # [B, H, 2W, 3]
        grid = make_grid(upscale(pairs, scale), cols=4)
        return np.concatenate([grid, legend(grid.shape[1], [f"{i}: {n}" for i, n in enumerate(names)], col)])
    groups = list(dict.fromkeys(names))                                        # first-seen order
    group_of = np.array([groups.index(n) for n in names])
    col = colours(len(groups))
    big = upscale(labels[..., None], scale)[..., 0]                           # [B, sH, sW] cluster ids
    border = np.zeros(big.shape, dtype=bool)
    border[..., :, 1:] |= big[..., :, 1:] != big[..., :, :-1]
    border[..., 1:, :] |= big[..., 1:, :] != big[..., :-1, :]
    maps = col[group_of[big]]
    maps[border] = (maps[border] * 0.55).astype(np.uint8)
    pairs = np.concatenate([upscale(images, scale), maps], axis=2)
    grid = make_grid(pairs, cols=4)
    counts = np.bincount(group_of, minlength=len(groups))
    return np.concatenate([grid, legend(grid.shape[1], [f"{g} ({c} clusters)" for g, c in zip(groups, counts)],
                                        col, cell=190)])


# ---------------------------------------------------------------- samples
def cluster_samples(G, regions, n: int = 16, seed: int = 0, truncation: float = 0.7, progress=None,
                    cancel=None, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` generated images and their DeepPixels' nearest-centroid cluster ids.

    Codes are ``G.styles(G.sample_w(n, seed, truncation))`` (image i is the
    same for every batch size).  Returns uint8 images [N, H, W, 3] and int64
    cluster ids [N, h, w] at the regions file's DeepPixel size (see
    :func:`resize_labels` for the image size).  ``regions`` is a
    :class:`~sfeditor.regions.regions_file.RegionsFile` (or a path / shipped domain name).
    ``progress(done, total, "cluster sheets")`` is called per batch; a set
    ``cancel`` token (``.requested``) raises :class:`sfeditor.jobs.Cancelled`.
    """
    import torch

    from ..images.imageio import to_uint8
    from .masks import RegionModel

    n = int(n)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    batch = max(1, int(batch))
    model = RegionModel(G, regions)
    images, labels = [], []
    if progress is not None:
        progress(0, n, "cluster sheets")
    with torch.no_grad():
        w = G.sample_w(n, seed=seed, truncation=truncation)
        for start in range(0, n, batch):
            check_cancel(cancel, "cluster sheets cancelled")
            s = G.styles(w[start:start + batch])
            img, feats = G.synthesis(s, model.noise_mode, return_features=True)
            labels.append(model.cluster_labels(features=feats).cpu().numpy().astype(np.int64))
            images.append(to_uint8(img))
            del feats
            if progress is not None:
                progress(min(start + batch, n), n, "cluster sheets")
    return np.concatenate(images), np.concatenate(labels)


def cluster_shares(labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """Fraction of all pixels of ``labels`` in each cluster, float [K]."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_clusters)[:num_clusters]
    return counts / max(int(counts.sum()), 1)


def sheet_title(cluster: int, name: str, share: float) -> str:
    """``cluster 7: eyes, 1.3% of pixels`` (no name shown while it is the placeholder ``cluster_7``)."""
    named = "" if name == f"cluster_{cluster}" else f" {name},"
    return f"cluster {cluster}:{named} {100 * share:.1f}% of pixels"


class ContactSheets(Mapping):
    """Cluster id -> contact sheet, each rendered when first asked for (a few kept).

    A fine cut has hundreds of clusters and a sheet of 12 images is ~0.9 MB, so
    the labelling tool renders them on demand instead of holding them all
    (598 clusters: 520 MB).  ``images`` [N, H, W, 3] uint8 and ``labels``
    [N, h, w] cluster ids as for :func:`cluster_sheets`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, regions, scale: int = 2, keep: int = 16):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        labels = np.asarray(labels)
        if labels.ndim != 3 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N, h, w] with N = {images.shape[0]}, got {list(labels.shape)}")
        self.images, self.regions, self.scale, self.keep = images, regions, int(scale), max(0, int(keep))
        self.labels = resize_labels(labels, images.shape[1:3])
        self.shares = cluster_shares(self.labels, regions.num_clusters)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getitem__(self, k: int) -> np.ndarray:
        k = int(k)
        if not 0 <= k < len(self):
            raise KeyError(k)
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        sheet = contact_sheet(self.images, self.labels, k,
                              sheet_title(k, self.regions.clusters[k], self.shares[k]), scale=self.scale)
        if self.keep:
            self._cache[k] = sheet
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return sheet

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self)))

    def __len__(self) -> int:
        return self.regions.num_clusters


def cluster_sheets(images: np.ndarray, labels: np.ndarray, regions, scale: int = 2) -> dict[int, np.ndarray]:
    """One uint8 RGB contact sheet per cluster id of ``regions`` (every id, even ones with no pixels here).

    ``images`` [N, H, W, 3] uint8 and ``labels`` [N, h, w] cluster ids (e.g.
    from :func:`cluster_samples`; resized to the image size, nearest).  Each
    sheet's banner gives the cluster id, its current region name and its share
    of the pixels of these images.  At most 8 images per row.  (All at once:
    :class:`ContactSheets` renders them on demand.)
    """
    book = ContactSheets(images, labels, regions, scale=scale, keep=0)
    return {k: book[k] for k in book}


__all__ = ["PALETTE", "OUTLINE", "BANNER_HEIGHT", "colours", "outline", "banner", "legend", "upscale", "resize_labels",
           "contact_sheet", "label_overview", "cluster_samples", "cluster_shares", "sheet_title", "cluster_sheets",
           "ContactSheets"]
