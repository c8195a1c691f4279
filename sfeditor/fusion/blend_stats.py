"""What a trained FusionNet actually does with its inputs: its blend coefficients q, summarised.

A LatentBlender (Sec. 4.3, Eq. 2) outputs one coefficient per style channel,
``s' = q s_A + (1 - q) s_B``.  In a FusionNet

* ``q_align`` (LB_align, the coarse layers of A.4) is the weight of the node's
  global code s_align in s'1 and s'2: how much of the layout the global code sets;
* ``q_fuse`` (LB_fuse) is the weight of s'2 (the second child's code) in s_result.

Both variants (paper and official) are reported with these meanings.  The numbers
explain locality results that images alone do not: a net whose LB_align gives
``q_align = 0`` everywhere has a global code that changes nothing (the paper's
alignment is off), one whose LB_fuse gives ``q_fuse = 1`` everywhere ignores its
first child, and ``q`` that is the same for every input makes the net a fixed
channel mask (the per-channel argmax of M, Eq. 1, is such a mask).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..model.style_code import StyleCode

#: ``q`` within this distance of 0 or 1 counts as saturated
SATURATION = 0.01
#: below this mean per-channel std over inputs, ``q`` is called input-independent
INPUT_INDEPENDENT = 0.01


@dataclass(frozen=True)
class BlendStats:
    """Summary of one FusionNet's coefficients over a batch of sampled inputs."""

    samples: int
    channels: int                       # |S|: channels LB_fuse blends
    fuse_share: float                   # mean q_fuse: share of s_result taken from child 2
    fuse_channels_child2: float         # mean number of channels with q_fuse > 0.5
    fuse_saturated: float               # share of q_fuse within SATURATION of 0 or 1
    fuse_input_dependence: float        # mean over channels of q_fuse's std over inputs
    coarse_channels: int = 0            # channels LB_align blends (0: no LB_align / disabled)
    align_share: float | None = None    # mean q_align: share of s'1, s'2 taken from the global code
    align_channels: float | None = None  # mean number of coarse channels (per code) with q_align > 0.5
    align_saturated: float | None = None
    align_input_dependence: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def warnings(self, child1: str = "child 1", child2: str = "child 2") -> list[str]:
        """Plain-language signs of a collapsed net (empty when none)."""
        out = []
        if self.fuse_channels_child2 < 0.5:
            out.append(f"LB_fuse takes every channel from {child1}: {child2}'s code changes nothing")
        elif self.fuse_channels_child2 > self.channels - 0.5:
            out.append(f"LB_fuse takes every channel from {child2}: {child1}'s code changes nothing")
        if self.align_share is not None and self.align_channels is not None and self.align_channels < 0.5:
            out.append("LB_align is the identity: the global code changes nothing")
        dep = [self.fuse_input_dependence] + ([self.align_input_dependence]
                                              if self.align_input_dependence is not None else [])
        if max(dep) < INPUT_INDEPENDENT:
            out.append("q is the same for every input: the net acts as a fixed channel mask")
        return out

    def summary(self, child1: str = "child 1", child2: str = "child 2") -> str:
        """One or two lines for a user: where the channels come from."""
        c2 = self.fuse_channels_child2
        text = (f"channels: {self.channels - c2:.0f} from {child1}, {c2:.0f} from {child2} "
                f"(q_fuse mean {self.fuse_share:.2f})")
        if self.align_channels is not None:
            text += (f"; global code sets {self.align_channels:.0f} of {self.coarse_channels} coarse channels "
                     f"(q_align mean {self.align_share:.2f})")
        return text


def _describe(q: torch.Tensor) -> tuple[float, float, float, float]:
    """``q [B, C]`` -> (mean, mean count > 0.5 per row, saturated share, mean per-channel std over rows)."""
    q = q.detach().float()
    sat = ((q < SATURATION) | (q > 1 - SATURATION)).float().mean()
    std = q.std(dim=0, unbiased=False).mean() if q.shape[0] > 1 else q.new_zeros(())
    return float(q.mean()), float((q > 0.5).float().sum(dim=1).mean()), float(sat), float(std)


@torch.no_grad()
def blend_stats(net, s1: StyleCode, s2: StyleCode, s_align: StyleCode | None = None) -> BlendStats:
    """Run ``net`` (a :class:`~sfeditor.fusion.fusion_net.FusionNet`) on a batch and summarise its q.

    ``s_align=None`` runs it without LB_align (the "No Global" ablation).
    """
    out = net(s1, s2, s_align, align=s_align is not None, fuse=True)
    qf = out.q_fuse.flat()
    f_mean, f_c2, f_sat, f_std = _describe(qf)
    kw = {}
    if out.q_align is not None:
        qa = torch.cat([out.q_align[0].flat(), out.q_align[1].flat()], dim=0)   # s'1 and s'2 rows
        a_mean, a_n, a_sat, a_std = _describe(qa)
        kw = dict(coarse_channels=int(qa.shape[1]), align_share=a_mean, align_channels=a_n,
                  align_saturated=a_sat, align_input_dependence=a_std)
    return BlendStats(samples=len(s1), channels=int(qf.shape[1]), fuse_share=f_mean, fuse_channels_child2=f_c2,
                      fuse_saturated=f_sat, fuse_input_dependence=f_std, **kw)


@torch.no_grad()
def sampled_blend_stats(net, G, samples: int = 16, truncation: float = 0.7, seed: int = 0,
                        align: bool = True) -> BlendStats:
    """:func:`blend_stats` of ``net`` on s1, s2, s_align sampled from ``G`` (z -> w with truncation, seeded).

    ``align=False`` runs the net without LB_align (the "No Global" ablation)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(3 * samples, G.style_dim, generator=gen).to(G.device)
    s = G.styles(G.mapping(z, truncation))
    p = next(net.parameters(), None)
    if p is not None:
        s = s.to(device=p.device, dtype=p.dtype)
    return blend_stats(net, s[:samples], s[samples:2 * samples], s[2 * samples:] if align else None)


def node_blend_stats(hierarchy, G, name: str, samples: int = 16, truncation: float = 0.7,
                     seed: int = 0) -> BlendStats:
    """:func:`sampled_blend_stats` of node ``name``'s net in a hierarchy."""
    if not hierarchy.has_net(name):
        raise ValueError(f"node {name!r} has no FusionNet")
    return sampled_blend_stats(hierarchy.nets[name], G, samples, truncation, seed)


def hierarchy_blend_stats(hierarchy, G, samples: int = 16, truncation: float = 0.7,
                          seed: int = 0) -> dict[str, BlendStats]:
    """:func:`node_blend_stats` of every node with a net (each node on the same sampled codes)."""
    return {name: node_blend_stats(hierarchy, G, name, samples, truncation, seed)
            for name in hierarchy.internal_nodes if hierarchy.has_net(name)}


__all__ = ["BlendStats", "blend_stats", "sampled_blend_stats", "node_blend_stats", "hierarchy_blend_stats", "SATURATION", "INPUT_INDEPENDENT"]
