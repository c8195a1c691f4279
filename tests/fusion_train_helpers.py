"""Tiny FusionNet training setups shared by tests/trainer/test_fusion_*.py."""
from __future__ import annotations

import math

import torch

from sfeditor.model.generator import Generator
from sfeditor.model.identity import generator_identity
from sfeditor.regions.clustering import squared_distances
from sfeditor.regions.regions_file import RegionsFile
from sfeditor.regions.tree import node
from trainer.fusion import FusionRecipe

TINY = dict(size=16, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16})
TREE = node("all", node("ab", "a", "b"), node("cd", "c", "d"))
TRUNC = 0.7
#: 0.0006 x (5000, 10000, 10000) -> 3, 6, 6 steps
SCALE = 0.0006


def tiny_regions(G) -> RegionsFile:
    """A regions file for a tiny generator: 8 random DeepPixel centroids over leaves a-d of TREE."""
    with torch.no_grad():
        dp = G.deep_pixels(G.random_styles(4, seed=3), size=G.size)
    x = dp.permute(0, 2, 3, 1).reshape(-1, dp.shape[1])
    cent = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:8]]
    d = squared_distances(x[:512, :, None, None], cent)[:, :, 0, 0]
    two = d.topk(2, dim=1, largest=False).values
    tau = float((two[:, 1] - two[:, 0]).median() / math.log(99))
    return RegionsFile(domain="tiny", generator=generator_identity(G), centroids=cent.numpy(),
                       clusters={i: "abcd"[i % 4] for i in range(8)}, tree=TREE, deep_pixel_size=G.size,
                       temperature=tau)


def recipe(**kw) -> FusionRecipe:
    """A FusionRecipe of a few steps on the tiny setup (keys override)."""
    base = dict(domain="tiny", node="all", steps_scale=SCALE, batch=2, lr=1.0, truncation=TRUNC, sample_every=5,
                sample_count=2, checkpoint_every=4, device="cpu")
    base.update(kw)
    return FusionRecipe(**base)


def tiny_setup():
    """(G, regions): a frozen tiny generator with its w_avg and a regions file over TREE."""
    torch.manual_seed(0)
    G = Generator(**TINY).eval().requires_grad_(False)
    G.update_w_avg(256, seed=0)
    return G, tiny_regions(G)
