"""Sec. 4.5 read literally: a child node trains with its already-trained ancestors fixed in the loop.

"Each FusionNet is trained after its parent, which is kept fixed": the image a child's losses see is
then the image the *whole tree* makes, ``G(FN_root(..., FN_parent(FN_child(s1, s2, s_align), s_other,
s_align_parent), ...))``, with fresh random codes for the other branches and the ancestors' global
codes.  A child that changes channels its parent does not pass on is then neither rewarded nor
punished for them; before (each node trained on its own output) the root passed only 117 of the
toy face side's channels, and the face node's locality was measured on channels that never reached
the image.

The ancestors are frozen (no parameter trains) but differentiable: gradients flow through them to
the child's output code.  The context codes are drawn from the run's sampler right after the step's
own codes, so a resumed run sees the same ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfeditor.fusion.fusion_net import FusionNet
from sfeditor.model.style_code import StyleCode
from sfeditor.regions.tree import find_node


@dataclass
class Ancestor:
    """One ancestor of the node being trained: its frozen net and the input slot the node's branch
    feeds (0: s1, the first child; 1: s2)."""

    name: str
    net: FusionNet
    slot: int


@dataclass
class ParentContext:
    """The codes the ancestors need for one batch: per ancestor (parent first), the other branch's
    code and the ancestor's global code."""

    other: list[StyleCode]
    align: list[StyleCode]


def ancestors_of(tree, node: str) -> list[tuple[str, int]]:
    """``[(ancestor, slot)]`` from ``node``'s parent up to the root (slot: which child leads to ``node``)."""
    path: list[tuple[str, int]] = []

    def walk(n, target) -> bool:
        if n.name == target:
            return True
        for i, c in enumerate(n.children):
            if walk(c, target):
                path.append((n.name, i))
                return True
        return False

    find_node(tree, node)          # KeyError naming the nodes when ``node`` is not in the tree
    walk(tree, node)
    return path


class ParentChain:
    """The frozen ancestors of a node, parent first; :meth:`lift` runs a node output through them."""

    def __init__(self, ancestors: list[Ancestor]):
        self.ancestors = ancestors
        for a in ancestors:
            a.net.eval().requires_grad_(False)

    def __len__(self) -> int:
        return len(self.ancestors)

    @classmethod
    def from_nets(cls, tree, node: str, nets: dict, where: str = "the hierarchy file") -> "ParentChain":
        """The chain of ``node`` from trained ``nets`` (name -> FusionNet); ValueError naming the first
        ancestor not trained yet."""
        chain = []
        for name, slot in ancestors_of(tree, node):
            if name not in nets:
                raise ValueError(f"node {node!r} trains with its parent in the loop (Sec. 4.5), but its ancestor "
                                 f"{name!r} is not trained in {where}: train the parents first "
                                 "(sfeditor-train hierarchy does) or set parent_in_loop false in the recipe")
            src = nets[name]
            net = FusionNet(src.config).to(next(src.parameters()).device)
            net.load_state_dict({k: v.float() for k, v in src.state_dict().items()})
            chain.append(Ancestor(name, net, slot))
        return cls(chain)

    @torch.no_grad()
    def sample(self, G, n: int, truncation: float, generator: torch.Generator) -> ParentContext:
        """Fresh codes for the other branches and the ancestors' global codes (z -> w with psi -> S)."""
        k = len(self.ancestors)
        if k == 0:
            return ParentContext([], [])
        z = torch.randn(2 * k * n, G.style_dim, generator=generator).to(G.device)
        s = G.styles(G.mapping(z, truncation))
        other = [s[2 * i * n:(2 * i + 1) * n] for i in range(k)]
        align = [s[(2 * i + 1) * n:(2 * i + 2) * n] for i in range(k)]
        return ParentContext(other, align)

    def lift(self, s: StyleCode, context: ParentContext | None) -> StyleCode:
        """The code the whole tree makes when ``s`` (a batch that is a multiple of the context's: stacked
        triples are tiled) fills the node's slot."""
        if not self.ancestors or context is None:
            return s
        n = len(context.other[0])
        if len(s) % n:
            raise ValueError(f"a batch of {len(s)} codes is not a multiple of the context's {n}")
        reps = len(s) // n
        for a, other, align in zip(self.ancestors, context.other, context.align):
            other, align = (other, align) if reps == 1 else (other.repeat(reps), align.repeat(reps))
            first, second = (s, other) if a.slot == 0 else (other, s)
            s = a.net(first, second, align, align=True, fuse=True).result
        return s
