"""Region masks of generated images: hard (nearest centroid, Sec. 4.2) and soft (Appendix A.5).

Hard: every DeepPixel takes the region of its nearest cluster centroid.

Soft (differentiable, for the mask loss of Eq. 3): with d_k the distance of a
DeepPixel to centroid k (mean squared, normalised channels; see
:mod:`sfeditor.regions.clustering`),

    p_k = softmax_k(-d_k / tau),      m_R = sum of p_k over the clusters labelled with a leaf of R

so the soft masks of the leaves sum to 1 at every pixel.  ``tau`` (the
*temperature*) sets the sharpness: tau -> 0 gives the hard masks, large tau
blurs toward the cluster prior.  The default is the regions file's
``temperature`` (calibrated at clustering time so the median pixel gets
p(nearest) ~ 0.99), else 0.05.  Masks are computed at the DeepPixel size
(64x64, or the image size if smaller) and upsampled to the requested size
(bilinear for soft masks, nearest for hard ones).  Everything is batched and
gradients flow from the soft masks to the StyleCode.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

from .clustering import deep_pixel_size, squared_distances
from ..model.generator import resize_features
from .regions_file import RegionsFile, load_regions
from ..model.style_code import StyleCode

DEFAULT_TEMPERATURE = 0.05

Features = dict  # {"conv": [...], "rgb": [...]} from G.synthesis(..., return_features=True)


def deep_pixels_from_features(features: Features, size: int) -> torch.Tensor:
    """DeepPixels ``[B, C_conv, size, size]`` from a synthesis pass's features (same as ``G.deep_pixels``)."""
    return torch.cat([resize_features(f, size) for f in features["conv"]], dim=1)


class RegionModel:
    """A generator plus its regions file: segments generated images into the file's regions.

    ``regions`` arguments name leaves or internal tree nodes (an internal node
    is the union of its leaves, e.g. "face"); the default is every leaf in
    tree order (``self.leaves``).  Methods taking a StyleCode ``s`` run one
    synthesis pass; pass ``features=`` (from ``G.synthesis(s, return_features=True)``)
    to reuse one.
    """

    def __init__(self, G, regions: RegionsFile | str | os.PathLike, noise_mode: str = "const",
                 strict_fingerprint: bool = False):
        if not isinstance(regions, RegionsFile):
            regions = load_regions(regions)
        regions.check_generator(G, strict_fingerprint=strict_fingerprint)
        self.G, self.regions, self.noise_mode = G, regions, noise_mode
        self.size = deep_pixel_size(G, regions.deep_pixel_size)
        self.leaves = regions.leaves
        dev = G.device
        self.centroids = torch.from_numpy(regions.centroids).to(dev)                        # [K, C]
        scale = regions.channel_scale
        self.channel_scale = None if scale is None else torch.from_numpy(scale).to(dev)      # [C]
        self._init_active_channels(scale)
        self._nearest_weights: tuple[torch.Tensor, torch.Tensor] | None = None   # made on first use
        self.cluster_leaf = torch.tensor([self.leaves.index(regions.clusters[k])
                                          for k in range(regions.num_clusters)], device=dev)  # [K]
        self.temperature = float(regions.temperature or DEFAULT_TEMPERATURE)

    # ------------------------------------------------------------- basics
    def membership(self, regions: Sequence[str] | None = None) -> torch.Tensor:
        """[K, R] 0/1: cluster k lies in region r."""
        return torch.from_numpy(self.regions.membership(regions)).to(self.centroids.device)

    def _features(self, s: StyleCode | None, features: Features | None) -> Features:
        if features is None:
            if s is None:
                raise ValueError("give a StyleCode or synthesis features")
            _, features = self.G.synthesis(s, self.noise_mode, return_features=True)
        return features

    def deep_pixels(self, s: StyleCode | None = None, features: Features | None = None) -> torch.Tensor:
        return deep_pixels_from_features(self._features(s, features), self.size)

    def _init_active_channels(self, scale) -> None:
        """Which DeepPixel channels count in the distances (``RegionsFile.active_channels``).

        A regions file made with ``min_resolution`` gives the coarse layers'
        channels a scale ~1e6 times the others (:func:`~sfeditor.regions.clustering.channel_scale`):
        their weight 1/scale^2 is ~1e-12 of the largest, so leaving them
        out changes no distance by more than float rounding, and skips their
        resize and their share of the distance einsum (9x less work for the
        shipped toy files, which use 160 of 1,440 channels).
        """
        dims = list(self.G.layout.conv_dims)
        self._total_channels = sum(dims)
        if scale is None or self.centroids.shape[1] != self._total_channels:
            self._layer_channels = None
            self._active_centroids, self._active_scale = self.centroids, self.channel_scale
            return
        active = torch.from_numpy(self.regions.active_channels())
        self._layer_channels = [None if not a.any() else (slice(None) if a.all() else a.nonzero()[:, 0])
                                for a in torch.split(active, dims)]
        dev = self.centroids.device
        self._active_centroids = self.centroids[:, active.to(dev)]
        self._active_scale = self.channel_scale[active.to(dev)]

    @property
    def layer_channels(self) -> list | None:
        """Per conv layer, the DeepPixel channels that count in distances: ``None`` (none of
        them), a slice (all) or an index tensor; ``None`` overall when every channel counts."""
        return None if self._layer_channels is None else list(self._layer_channels)

    def _active_deep_pixels(self, s: StyleCode | None, features: Features | None) -> torch.Tensor:
        if self._layer_channels is None:
            return self.deep_pixels(s, features)
        features = self._features(s, features)
        parts = [resize_features(f if isinstance(idx, slice) else f[:, idx], self.size)
                 for f, idx in zip(features["conv"], self._layer_channels) if idx is not None]
        return torch.cat(parts, dim=1)

    def distances(self, s: StyleCode | None = None, features: Features | None = None) -> torch.Tensor:
        """[B, K, h, w] distances of every DeepPixel to every centroid (mean over all C channels)."""
        dp = self._active_deep_pixels(s, features)
        d = squared_distances(dp, self._active_centroids, self._active_scale)
        return d * (dp.shape[1] / self._total_channels)

    def _resize(self, x: torch.Tensor, size: int | None, mode: str) -> torch.Tensor:
        size = self.G.size if size is None else int(size)
        if x.shape[-1] == size:
            return x
        if mode == "nearest":
            return F.interpolate(x, size=(size, size), mode="nearest")
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=size < x.shape[-1])

    # -------------------------------------------------------------- hard
    def centroid_scores(self, s: StyleCode | None = None, features: Features | None = None) -> torch.Tensor:
        """``[B, h*w, K]``, pixels first: ``|c_k|^2 - 2 x.c_k`` (scaled channels), which orders the
        centroids of each DeepPixel x as the distances do (``|x|^2`` is the same for every k).

        One matrix product: about half the time of :meth:`distances` for hundreds of centroids.
        """
        dp = self._active_deep_pixels(s, features)                                 # [B, C, h, w]
        b, _, h, w = dp.shape
        if self._nearest_weights is None:        # the scale folded into the weights: x . c / scale^2
            c = self._active_centroids.float()
            s = 1.0 if self._active_scale is None else self._active_scale.float()
            self._nearest_weights = (-2 * c / s ** 2).t().contiguous(), (c / s).pow(2).sum(1)   # [C, K], [K]
        wt, cc = self._nearest_weights
        x = dp.float().flatten(2).transpose(1, 2)                                   # [B, h*w, C]
        return torch.addmm(cc.to(x.device), x.reshape(b * h * w, -1), wt.to(x.device)).reshape(b, h * w, -1)

    @torch.no_grad()
    def cluster_labels(self, s: StyleCode | None = None, features: Features | None = None) -> torch.Tensor:
        """[B, h, w] nearest-centroid cluster ids at the DeepPixel size."""
        scores = self.centroid_scores(s, features)
        return scores.argmin(2).reshape(scores.shape[0], self.size, self.size)

    @torch.no_grad()
    def hard_labels(self, s: StyleCode | None = None, size: int | None = None,
                    features: Features | None = None) -> torch.Tensor:
        """[B, H, W] leaf index (into ``self.leaves``) per pixel; H = ``size`` (default image size)."""
        leaf = self.cluster_leaf[self.cluster_labels(s, features)]
        return self._resize(leaf[:, None].float(), size, "nearest")[:, 0].long()

    @torch.no_grad()
    def hard_masks(self, s: StyleCode | None = None, regions: Sequence[str] | None = None, size: int | None = None,
                   features: Features | None = None) -> torch.Tensor:
        """[B, R, H, W] 0/1 masks of the given regions."""
        labels = self.cluster_labels(s, features)                                   # [B, h, w]
        member = self.membership(regions)                                           # [K, R]
        masks = member[labels].permute(0, 3, 1, 2)                                  # [B, R, h, w]
        return self._resize(masks, size, "nearest")

    # -------------------------------------------------------------- soft
    def cluster_probs(self, s: StyleCode | None = None, temperature: float | None = None,
                      features: Features | None = None) -> torch.Tensor:
        """[B, K, h, w] soft-min over centroid distances (differentiable)."""
        tau = self.temperature if temperature is None else float(temperature)
        if tau <= 0:
            raise ValueError("temperature must be positive")
        return torch.softmax(-self.distances(s, features) / tau, dim=1)

    def soft_masks(self, s: StyleCode | None = None, regions: Sequence[str] | None = None,
                   temperature: float | None = None, size: int | None = None,
                   features: Features | None = None) -> torch.Tensor:
        """[B, R, H, W] differentiable masks in [0, 1] (Appendix A.5); leaves sum to 1 per pixel."""
        p = self.cluster_probs(s, temperature, features)                            # [B, K, h, w]
        member = self.membership(regions).to(p.dtype)                               # [K, R]
        masks = torch.einsum("bkhw,kr->brhw", p, member)
        return self._resize(masks, size, "bilinear")


__all__ = ["RegionModel", "deep_pixels_from_features", "DEFAULT_TEMPERATURE"]
