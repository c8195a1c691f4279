"""Tiny models shared by the tests (editor core, regions, inversion, cluster sheets)."""
from __future__ import annotations

import torch

from sfeditor.editor.composition import Composition
from sfeditor.fusion.fusion_net import FusionNetConfig
from sfeditor.model.generator import Generator
from sfeditor.fusion.hierarchy import FusionHierarchy
from sfeditor.regions.tree import node

torch.set_num_threads(1)

TREE4 = node("all", node("left", "a", "b"), node("right", "c", "d"))
TREE2 = node("all", "a", "b")


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(size=16, style_dim=16, n_mlp=1, channels={4: 16, 8: 16, 16: 8}).eval()
    G.requires_grad_(False)
    return G


SMALL = dict(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})


def small_generator(seed: int = 0) -> Generator:
    """A 32x32 generator with enough layers for DeepPixels, masks and inversion tests."""
    torch.manual_seed(seed)
    return Generator(**SMALL).eval()


def tiny_hierarchy(G: Generator, tree=TREE4, seed: int = 0) -> FusionHierarchy:
    torch.manual_seed(seed)
    cfg = FusionNetConfig.for_layout(G.layout, hidden=32)
    h = FusionHierarchy.with_random_nets(tree, cfg, layout=G.layout).eval()
    h.requires_grad_(False)
    return h


def composition(tree=TREE4, **kw) -> Composition:
    kw.setdefault("domain", "toy-faces")
    return Composition(tree, **kw)
