"""Region masks for training, computed without materialising the DeepPixels.

:class:`sfeditor.masks.RegionModel` resizes every synthesis feature map to the
DeepPixel size, concatenates them (``[B, C_conv, 64, 64]``: 1,440 channels for
the 64x64 toys, 6,048 at 1024) and measures distances to the centroids.  In a
training step that tensor and its distance einsum dominate the cost (about 90%
of a stage-2 step on toy-faces).  Two facts give the same masks much cheaper:

* the distance is ``(|x|^2 - 2 x.c_k + |c_k|^2) / C``; ``|x|^2`` does not depend on
  the cluster k, so it cancels in the soft-min over k (A.5) and in the nearest
  centroid (Sec. 4.2);
* the resize (bilinear, antialiased when shrinking) is linear and acts on every
  channel alike, so ``resize(x_l) . c = resize(x_l . c)``: the dot product can be
  taken per layer at the layer's own resolution and only the K score maps resized;
* layers a regions file weighs ~0 (``min_resolution``: the shipped toy files use
  the 32- and 64-px layers only) are skipped, as in RegionModel.

:class:`RegionScorer` computes ``score_k = (|c_k|^2 - 2 x.c_k) / C`` (the distance
minus its k-independent part; channel scale included) that way; its soft and
hard masks equal RegionModel's (up to float rounding and RegionModel's
``clamp_min(0)`` of distances, which never binds for real DeepPixels).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from sfeditor.generator import resize_features


class RegionScorer:
    """Soft / hard masks of a :class:`~sfeditor.masks.RegionModel` from synthesis features."""

    def __init__(self, model, regions: Sequence[str] | None = None):
        self.model = model
        self.size = model.size
        self.temperature = model.temperature
        c = model.centroids.float()                                        # [K, C]
        scale = model.channel_scale
        inv2 = 1.0 if scale is None else scale.float().pow(-2)
        cs = c * (1.0 if scale is None else scale.float().reciprocal())
        self.cc = cs.pow(2).sum(1)                                          # [K]
        self.channels = c.shape[1]
        dims = list(model.G.layout.conv_dims)
        if sum(dims) != self.channels:
            raise ValueError("centroid width does not match the generator's conv channels")
        weights = torch.split(c * inv2, dims, dim=1)                        # per layer [K, C_l], c / scale^2
        active = model.layer_channels or [slice(None)] * len(dims)          # the layers and channels that count
        self.layers = [(i, idx, w[:, idx]) for i, (w, idx) in enumerate(zip(weights, active)) if idx is not None]
        self.member = model.membership(regions).float()                     # [K, R]
        self.cluster_leaf = model.cluster_leaf
        self.regions = None if regions is None else list(regions)

    def scores(self, features: dict) -> torch.Tensor:
        """``[B, K, s, s]``: squared distance to each centroid minus its k-independent part."""
        conv = features["conv"]
        if len(conv) != len(self.model.G.layout.conv_dims):
            raise ValueError("features do not come from this generator")
        acc = None
        for i, idx, w in self.layers:
            f = conv[i] if isinstance(idx, slice) else conv[i][:, idx.to(conv[i].device)]
            d = resize_features(torch.einsum("bchw,kc->bkhw", f.float(), w.to(f.device)), self.size)
            acc = d if acc is None else acc + d
        return (self.cc.to(acc.device)[None, :, None, None] - 2 * acc) / self.channels

    def _resize(self, x: torch.Tensor, size: int | None, mode: str) -> torch.Tensor:
        size = self.size if size is None else int(size)
        if x.shape[-1] == size:
            return x
        if mode == "nearest":
            return F.interpolate(x, size=(size, size), mode="nearest")
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])

    def soft_masks(self, features: dict, temperature: float | None = None, size: int | None = None) -> torch.Tensor:
        """``[B, R, H, W]`` differentiable masks (A.5), as ``RegionModel.soft_masks``."""
        tau = self.temperature if temperature is None else float(temperature)
        if tau <= 0:
            raise ValueError("temperature must be positive")
        p = torch.softmax(-self.scores(features) / tau, dim=1)
        masks = torch.einsum("bkhw,kr->brhw", p, self.member.to(p.device))
        return self._resize(masks, size, "bilinear")

    @torch.no_grad()
    def hard_labels(self, features: dict, size: int | None = None) -> torch.Tensor:
        """``[B, H, W]`` leaf index (into ``model.leaves``) of the nearest centroid, as ``RegionModel.hard_labels``."""
        leaf = self.cluster_leaf.to(self.cc.device)[self.scores(features).argmin(1)]
        return self._resize(leaf[:, None].float(), size, "nearest")[:, 0].long()

    @torch.no_grad()
    def hard_masks(self, features: dict, size: int | None = None) -> torch.Tensor:
        """``[B, R, H, W]`` 0/1 masks of the nearest centroid (Sec. 4.2), as ``RegionModel.hard_masks``."""
        labels = self.scores(features).argmin(1)                           # [B, s, s]
        masks = self.member.to(labels.device)[labels].permute(0, 3, 1, 2)
        return self._resize(masks, size, "nearest")


__all__ = ["RegionScorer"]
