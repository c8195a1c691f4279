"""Region masks for training, computed without materialising the DeepPixels.

:class:`sfeditor.regions.masks.RegionModel` resizes every synthesis feature map to the
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
* a layer larger than the DeepPixel size is shrunk before its dot product when it has fewer
  channels than there are clusters, so no K-map is ever made above the DeepPixel size (masks at a
  bounded resolution whatever the generator size, issue 40);
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

from sfeditor.model.generator import resize_features


class RegionScorer:
    """Soft / hard masks of a :class:`~sfeditor.regions.masks.RegionModel` from synthesis features.

    ``dense``: score the resized active DeepPixels with one matrix product (True) or
    per layer at each layer's resolution (False); by default whichever does less work.
    """

    def __init__(self, model, regions: Sequence[str] | None = None, dense: bool | None = None):
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
        k = c.shape[0]
        n_active = sum(w.shape[1] for _, _, w in self.layers)
        # Per layer, the work on K score maps (einsum, resize, sum) grows with the number of layers;
        # resizing the active channels once and one matrix product cost less when K is large
        # (a fine cut: K ~ 600 on 160 channels) - the "dense" path, RegionModel.centroid_scores; both give
        # the same scores.
        self.dense = len(self.layers) * k > n_active if dense is None else bool(dense)
        self.member = model.membership(regions).float()                     # [K, R]
        self.cluster_leaf = model.cluster_leaf
        self.regions = None if regions is None else list(regions)

    def _check(self, features: dict) -> list:
        conv = features["conv"]
        if len(conv) != len(self.model.G.layout.conv_dims):
            raise ValueError("features do not come from this generator")
        return conv

    def _raw_maps(self, conv: list) -> torch.Tensor:
        """``[B, K, s, s]``: C x :meth:`scores`, per layer at each layer's resolution."""
        acc = None
        for i, idx, w in self.layers:
            f = conv[i] if isinstance(idx, slice) else conv[i][:, idx.to(conv[i].device)]
            if f.shape[-1] > self.size and f.shape[1] <= w.shape[0]:
                # a layer larger than the DeepPixel size with fewer channels than clusters (the 256-1024 px
                # layers of a config-f generator): shrink its C_l maps first, never make K maps at full size
                # (resize and dot product commute; [B, K, 1024, 1024] would be ~3 GB at K = 100, batch 8)
                d = torch.einsum("bchw,kc->bkhw", resize_features(f.float(), self.size), w.to(f.device))
            else:
                d = resize_features(torch.einsum("bchw,kc->bkhw", f.float(), w.to(f.device)), self.size)
            acc = d if acc is None else acc + d
        return self.cc.to(acc.device)[None, :, None, None] - 2 * acc

    def _raw_flat(self, features: dict) -> torch.Tensor:
        """``[B, s*s, K]``: C x :meth:`scores`, pixels first (the layout softmax and argmin over K like).
        The dense path is ``RegionModel.centroid_scores``; the 1/C is left to the callers, which fold
        it into one smaller operation (the temperature) or need none (argmin)."""
        conv = self._check(features)
        if self.dense:
            return self.model.centroid_scores(features=features)
        return self._raw_maps(conv).flatten(2).transpose(1, 2)

    def scores(self, features: dict) -> torch.Tensor:
        """``[B, K, s, s]``: squared distance to each centroid minus its k-independent part."""
        conv = self._check(features)
        if self.dense:
            raw = self._raw_flat(features)
            return raw.transpose(1, 2).reshape(raw.shape[0], -1, self.size, self.size) / self.channels
        return self._raw_maps(conv) / self.channels

    def _resize(self, x: torch.Tensor, size: int | None, mode: str) -> torch.Tensor:
        size = self.size if size is None else int(size)
        if x.shape[-1] == size:
            return x
        if mode == "nearest":
            return F.interpolate(x, size=(size, size), mode="nearest")
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])

    def _maps(self, flat: torch.Tensor) -> torch.Tensor:
        """``[B, s*s, R]`` -> ``[B, R, s, s]``."""
        return flat.transpose(1, 2).reshape(flat.shape[0], flat.shape[2], self.size, self.size)

    def soft_masks(self, features: dict, temperature: float | None = None, size: int | None = None) -> torch.Tensor:
        """``[B, R, H, W]`` differentiable masks (A.5), as ``RegionModel.soft_masks``."""
        tau = self.temperature if temperature is None else float(temperature)
        if tau <= 0:
            raise ValueError("temperature must be positive")
        p = torch.softmax(self._raw_flat(features) / (-tau * self.channels), dim=2)  # [B, s*s, K]
        return self._resize(self._maps(p @ self.member.to(p.device)), size, "bilinear")

    @torch.no_grad()
    def hard_labels(self, features: dict, size: int | None = None) -> torch.Tensor:
        """``[B, H, W]`` leaf index (into ``model.leaves``) of the nearest centroid, as ``RegionModel.hard_labels``."""
        nearest = self._raw_flat(features).argmin(2)                              # [B, s*s]
        leaf = self.cluster_leaf.to(nearest.device)[nearest].reshape(-1, self.size, self.size)
        return self._resize(leaf[:, None].float(), size, "nearest")[:, 0].long()

    @torch.no_grad()
    def hard_masks(self, features: dict, size: int | None = None) -> torch.Tensor:
        """``[B, R, H, W]`` 0/1 masks of the nearest centroid (Sec. 4.2), as ``RegionModel.hard_masks``."""
        nearest = self._raw_flat(features).argmin(2)                              # [B, s*s]
        masks = self.member.to(nearest.device)[nearest]                             # [B, s*s, R]
        return self._resize(self._maps(masks), size, "nearest")


__all__ = ["RegionScorer"]
