"""Sec. 4.5 with the parent in the loop (trainer/fusion_parents.py) and Eq. 5 normalised to 1024 px."""
from __future__ import annotations

import pytest
import torch

from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig
from sfeditor.regions.tree import node
from trainer.fusion import train_hierarchy, train_node
from trainer.fusion_parents import ParentChain, ancestors_of
from trainer.fusion_stages import sample_codes
from trainer.losses import localization_loss

from tests.fusion_train_helpers import TREE, recipe, tiny_setup

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


def test_ancestors_are_listed_parent_first_with_the_slot_of_the_branch():
    deep = node("all", node("left", "a", node("bc", "b", "c")), "d")
    assert ancestors_of(deep, "bc") == [("left", 1), ("all", 0)]
    assert ancestors_of(deep, "left") == [("all", 0)]
    assert ancestors_of(deep, "all") == []
    with pytest.raises(KeyError):
        ancestors_of(deep, "nope")


def test_lift_runs_the_code_through_the_frozen_ancestors(tiny):
    G, _ = tiny
    torch.manual_seed(1)
    cfg = FusionNetConfig.for_layout(G.layout, "paper", hidden=16)
    root = FusionNet(cfg)
    chain = ParentChain.from_nets(TREE, "cd", {"all": root})
    assert [(a.name, a.slot) for a in chain.ancestors] == [("all", 1)]
    ctx = chain.sample(G, 2, 0.7, torch.Generator().manual_seed(0))
    s = sample_codes(G, 2, 0.7, torch.Generator().manual_seed(5)).s1
    want = root(ctx.other[0], s, ctx.align[0], align=True, fuse=True).result
    got = chain.lift(s, ctx)
    torch.testing.assert_close(got.flat(), want.flat())
    # a stacked batch (the stage-3 triples) reuses the same context for each third
    three = chain.lift(type(s).cat([s, s, s]), ctx)
    torch.testing.assert_close(three.flat()[4:], want.flat().repeat(1, 1))
    # gradients reach the child's code, never the frozen ancestor
    s_req = s.map(lambda t: t.clone().requires_grad_(True))
    chain.lift(s_req, ctx).flat().sum().backward()
    assert all(t.grad is not None for t in s_req.layers)
    assert all(p.grad is None and not p.requires_grad for p in chain.ancestors[0].net.parameters())
    with pytest.raises(ValueError, match="multiple"):
        chain.lift(s[:1].repeat(3), ctx)


def test_a_child_trains_on_the_trees_image_and_needs_its_parent(tiny, tmp_path):
    G, regions = tiny
    with pytest.raises(ValueError, match="ancestor 'all' is not trained"):
        train_node(recipe(node="ab", config="short", steps_scale=0.0004), tmp_path / "ab", G=G, regions=regions,
                   log=lambda *a: None)
    logs = []
    h = train_hierarchy(recipe(config="short", steps_scale=0.0004), tmp_path / "tree", G=G, regions=regions,
                        log=logs.append)
    assert any("ab: trained with its ancestors fixed in the loop (all" in m for m in logs)
    assert not any(m.startswith("all: trained with") for m in logs)
    # the child's run differs from one trained on its own output (same seed, same codes)
    alone = train_node(recipe(node="ab", config="short", steps_scale=0.0004, parent_in_loop=False),
                       tmp_path / "alone", G=G, regions=regions, log=lambda *a: None)
    diff = max(float((a - b).abs().max()) for a, b in zip(h.nets["ab"].state_dict().values(),
                                                          alone.state_dict().values()))
    assert diff > 0
    # a child retrained alone later finds its parent in the hierarchy file
    again = train_node(recipe(node="ab", config="short", steps_scale=0.0004), tmp_path / "again", G=G,
                       regions=regions, hierarchy=tmp_path / "tree" / "hierarchy.pt", log=lambda *a: None)
    for a, b in zip(again.state_dict().values(), h.nets["ab"].state_dict().values()):
        torch.testing.assert_close(a, b)


def test_localization_loss_is_resolution_independent_with_a_reference_size():
    def score(size, ref):
        torch.manual_seed(0)
        base = torch.zeros(1, 3, size, size)
        edited = base.clone()
        edited[:, :, : size // 2] += 0.3                 # the same edit: the top half moves by 0.3
        m1 = torch.zeros(1, size, size)
        m1[:, : size // 2] = 1                            # R1: the top half
        r1, _ = localization_loss(base, edited, edited, m1, 1 - m1, per_region=True, reference_size=ref)
        return float(r1)

    assert score(64, None) == pytest.approx(4 * score(256, None), rel=1e-4)     # literal Eq. 5: 1/sqrt(pixels)
    assert score(64, 1024) == pytest.approx(score(256, 1024), rel=1e-4)
    assert score(1024, 1024) == pytest.approx(score(1024, None), rel=1e-4)        # unchanged at the reference
    assert score(64, 1024) == pytest.approx(score(64, None) / 16, rel=1e-4)
