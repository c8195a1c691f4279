"""Blend statistics of a FusionNet (sfeditor.fusion.blend_stats): the numbers, their meaning in both variants, warnings."""
from __future__ import annotations

import pytest
import torch

from sfeditor import StyleCode, StyleLayout
from sfeditor.fusion.blend_stats import blend_stats, hierarchy_blend_stats, sampled_blend_stats
from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig
from sfeditor.fusion.hierarchy import FusionHierarchy

torch.set_num_threads(1)
LAYOUT = StyleLayout.for_channels({4: 32, 8: 32, 16: 16, 32: 8})


def codes(b: int, seed: int) -> StyleCode:
    g = torch.Generator().manual_seed(seed)
    return StyleCode.from_flat(LAYOUT, torch.randn(b, LAYOUT.size, generator=g) * 0.7 + 1.0)


def net_for(variant: str, seed: int = 0) -> FusionNet:
    torch.manual_seed(seed)
    return FusionNet(FusionNetConfig.for_layout(LAYOUT, variant, hidden=48)).eval()


def force_q(blender, value: float) -> None:
    """Make a blender output the constant q = sigmoid(value) (final layer: zero weight, bias = value)."""
    last = blender.disentangle_net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(value / last.lr_mul)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_q_meanings_in_both_variants(variant):
    """q_fuse = 1 selects child 2 and q_align = 1 selects the global code, whatever the variant."""
    s1, s2, sa = codes(3, 1), codes(3, 2), codes(3, 3)
    net = net_for(variant)
    force_q(net.lb_fuse, 30.0)
    force_q(net.lb_align, 30.0)
    with torch.no_grad():
        out = net(s1, s2, sa)
    st = blend_stats(net, s1, s2, sa)
    assert torch.allclose(out.result.flat(), out.s2_aligned.flat(), atol=1e-5)
    assert st.fuse_share > 0.999 and st.fuse_channels_child2 == LAYOUT.size == st.channels
    coarse = net.coarse_layers(LAYOUT)
    n_coarse = sum(LAYOUT.dims[i] for i in coarse)
    assert st.coarse_channels == n_coarse and st.align_channels == n_coarse and st.align_share > 0.999
    for i in coarse:       # both intermediate codes took the global code's coarse layers
        assert torch.allclose(out.s1_aligned.layers[i], sa.layers[i], atol=1e-5)
    assert st.fuse_saturated == 1.0 and st.fuse_input_dependence < 1e-6
    w = st.warnings("car", "background")
    assert any("every channel from background" in x and "car's code changes nothing" in x for x in w)
    assert any("fixed channel mask" in x for x in w)
    assert "global code sets" in st.summary("car", "background")


def test_numbers_match_a_direct_computation():
    s1, s2, sa = codes(6, 4), codes(6, 5), codes(6, 6)
    net = net_for("paper", seed=3)
    with torch.no_grad():
        for name, p in net.named_parameters():      # spread q away from 0.5 and make it input-dependent
            if name.endswith("bias"):
                p.normal_(0, 80.0)
    st = blend_stats(net, s1, s2, sa)
    with torch.no_grad():
        out = net(s1, s2, sa)
    qf = out.q_fuse.flat()
    qa = torch.cat([out.q_align[0].flat(), out.q_align[1].flat()])
    assert st.samples == 6
    assert st.fuse_share == pytest.approx(float(qf.mean()), abs=1e-6)
    assert st.fuse_channels_child2 == pytest.approx(float((qf > 0.5).sum(1).float().mean()), abs=1e-6)
    assert st.fuse_input_dependence == pytest.approx(float(qf.std(0, unbiased=False).mean()), abs=1e-6)
    assert st.align_share == pytest.approx(float(qa.mean()), abs=1e-6)
    assert st.align_saturated == pytest.approx(float(((qa < 0.01) | (qa > 0.99)).float().mean()), abs=1e-6)
    assert 0 < st.fuse_channels_child2 < st.channels
    assert st.to_dict()["channels"] == LAYOUT.size


def test_identity_alignment_and_no_global():
    s1, s2, sa = codes(2, 7), codes(2, 8), codes(2, 9)
    net = net_for("paper")
    force_q(net.lb_align, -30.0)
    st = blend_stats(net, s1, s2, sa)
    assert st.align_channels == 0 and any("global code changes nothing" in x for x in st.warnings())
    no_global = blend_stats(net, s1, s2, None)
    assert no_global.align_share is None and no_global.coarse_channels == 0
    assert "global code" not in no_global.summary()


class TinyG(torch.nn.Module):
    """mapping / styles with the interface blend statistics need (z -> w -> S, linear)."""

    style_dim = 8

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, LAYOUT.size)

    @property
    def device(self):
        return self.proj.weight.device

    def mapping(self, z, truncation=1.0):
        return z * truncation

    def styles(self, w):
        return StyleCode.from_flat(LAYOUT, 1.0 + 0.3 * self.proj(w))


def test_hierarchy_stats_cover_nodes_with_nets_only():
    tree = {"name": "all", "children": [{"name": "a"}, {"name": "bc", "children": [{"name": "b"}, {"name": "c"}]}]}
    h = FusionHierarchy(tree, {"all": net_for("paper", 1)})
    stats = hierarchy_blend_stats(h, _same_g(), samples=4, truncation=0.5, seed=1)
    assert list(stats) == ["all"] and stats["all"].samples == 4
    assert stats == hierarchy_blend_stats(h, _same_g(), samples=4, truncation=0.5, seed=1)     # seeded
    assert stats != hierarchy_blend_stats(h, _same_g(), samples=4, truncation=0.5, seed=2)
    assert stats["all"] == sampled_blend_stats(h.nets["all"], _same_g(), samples=4, truncation=0.5, seed=1)
    no_global = sampled_blend_stats(h.nets["all"], _same_g(), samples=4, truncation=0.5, seed=1, align=False)
    assert no_global.align_share is None and no_global.channels == stats["all"].channels


def _same_g() -> TinyG:
    torch.manual_seed(0)
    return TinyG()
