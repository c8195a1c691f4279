"""Region-limited edits and region transfer: which codes go where (random-weight hierarchies, no quality claims)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sfeditor import Generator
from sfeditor.images.editing import (changed_nodes, check_region, composition_from, edit_regions, edit_whole, fuse,
                              hair_transfer, region_nodes, render, transfer_region)
from sfeditor.fusion.fusion_net import FusionNetConfig
from sfeditor.fusion.hierarchy import FusionHierarchy
from sfeditor.regions.tree import PAPER_TREES

TINY = dict(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})
FACE_NODES = {"face", "skin_mouth", "mouth", "skin", "eyes"}
ALL_NODES = {"all", "face", "skin_mouth", "mouth", "skin", "eyes", "bg_hair_clothes", "bg_clothes", "clothes", "bg",
             "hair"}


@pytest.fixture(scope="module")
def G():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Generator(**TINY).eval()


@pytest.fixture(scope="module", params=["paper", "official"])
def H(request, G):
    torch.manual_seed(1)
    h = FusionHierarchy.with_random_nets(PAPER_TREES["faces"], FusionNetConfig.for_layout(G.layout, request.param),
                                         layout=G.layout)
    return h.eval()


class Spy:
    """Wraps a hierarchy and records the StyleCodes it is given."""

    def __init__(self, h):
        self.h, self.calls = h, []

    def __getattr__(self, name):
        return getattr(self.h, name)

    def __call__(self, codes, collapsed=None):
        self.calls.append(dict(codes))
        return self.h(codes, collapsed=collapsed)


def _direction(G) -> np.ndarray:
    d = np.random.default_rng(0).normal(size=G.style_dim).astype(np.float32)
    return d / np.linalg.norm(d)


@torch.no_grad()
def test_identical_codes_reproduce_the_image(G, H):
    w = G.sample_w(1, seed=5)[:, None].expand(1, G.n_latent, G.style_dim).clone()
    comp = composition_from(H, w)
    assert set(comp) == ALL_NODES and all(c is w for c in comp.values())
    fused = fuse(G, H, comp)
    assert torch.allclose(fused.flat(), G.styles(w).flat(), atol=1e-5)


@torch.no_grad()
def test_region_edit_changes_only_the_chosen_codes(G, H):
    w = G.sample_w(1, seed=6)[:, None].expand(1, G.n_latent, G.style_dim).clone()
    comp = composition_from(H, w)
    d = _direction(G)
    edited = edit_regions(G, H, comp, d, 3.0, ["hair"])
    assert changed_nodes(comp, edited) == ["hair"]
    assert torch.allclose(edited["hair"], w + 3.0 * torch.from_numpy(d))
    assert all(edited[n] is w for n in ALL_NODES - {"hair"})

    spy = Spy(H)
    fused = fuse(G, spy, edited)
    got = spy.calls[-1]
    assert torch.allclose(got["hair"].flat(), G.styles(edited["hair"]).flat())
    for n in ALL_NODES - {"hair"}:
        assert torch.allclose(got[n].flat(), G.styles(w).flat())
    assert not torch.allclose(fused.flat(), G.styles(w).flat())        # the edit reaches the image code
    whole = edit_whole(G, w, d, 3.0)
    assert torch.allclose(whole, edited["hair"])

    face = edit_regions(G, H, comp, d, -2.0, ["face"])
    assert set(changed_nodes(comp, face)) == FACE_NODES                # face's global code and everything below
    both = edit_regions(G, H, comp, d, 1.0, ["face", "eyes", "hair"])
    assert set(changed_nodes(comp, both)) == FACE_NODES | {"hair"}
    assert torch.allclose(both["eyes"], w + torch.from_numpy(d))       # moved once, not twice
    assert both["eyes"] is both["mouth"]                               # shared codes stay shared

    layers = edit_regions(G, H, comp, d, 1.0, ["hair"], layers=[0, 1])
    delta = (layers["hair"] - w).abs().sum(-1)[0]
    assert (delta[:2] > 0).all() and (delta[2:] == 0).all()


def test_regions_hidden_by_collapse_or_missing_nets(G, H):
    w = torch.zeros(1, G.n_latent, G.style_dim)
    comp = composition_from(H, w)
    with pytest.raises(ValueError, match="no region 'beard'.*hair"):
        edit_regions(G, H, comp, _direction(G), 1.0, ["beard"])
    with pytest.raises(ValueError, match="'bg_hair_clothes' is collapsed"):
        edit_regions(G, H, comp, _direction(G), 1.0, ["hair"], collapsed={"bg_hair_clothes"})
    with pytest.raises(ValueError, match="'all' is collapsed"):
        check_region(H, "mouth", collapsed={"all", "face"})
    assert region_nodes(H, "bg_hair_clothes", collapsed={"bg_hair_clothes"})[0] == "bg_hair_clothes"
    torch.manual_seed(2)
    partial = FusionHierarchy.with_random_nets(PAPER_TREES["faces"], FusionNetConfig.for_layout(G.layout))
    partial.set_net("face", None)
    with pytest.raises(ValueError, match="'face' has no FusionNet"):
        region_nodes(partial, "eyes")
    with pytest.raises(ValueError, match="no regions"):
        edit_regions(G, H, comp, _direction(G), 1.0, [])
    s_comp = {n: G.styles(w) for n in comp}
    with pytest.raises(TypeError, match="S-space"):
        edit_regions(G, H, s_comp, _direction(G), 1.0, ["hair"])


@torch.no_grad()
def test_hair_transfer_puts_codes_where_the_tree_says(G, H):
    w_t = G.sample_w(1, seed=7)[:, None].expand(1, G.n_latent, G.style_dim).clone()
    w_r = G.sample_w(1, seed=8)[:, None].expand(1, G.n_latent, G.style_dim).clone()
    spy = Spy(H)
    comp, fused = hair_transfer(G, spy, w_t, w_r)
    assert comp["hair"] is w_r
    assert all(comp[n] is w_t for n in ALL_NODES - {"hair"})           # every global code is the target's
    got = spy.calls[-1]
    assert torch.allclose(got["hair"].flat(), G.styles(w_r).flat())
    assert torch.allclose(got["bg_hair_clothes"].flat(), G.styles(w_t).flat())
    assert fused.flat().shape == (1, G.layout.size)
    same, fused_same = hair_transfer(G, H, w_t, w_t)
    assert torch.allclose(fused_same.flat(), G.styles(w_t).flat(), atol=1e-5)

    face = transfer_region(H, "face", w_r, w_t)
    assert {n for n, c in face.items() if c is w_r} == FACE_NODES
    # compositions in, compositions out: the reference's own per-node codes are used for the region
    ref_comp = {n: torch.full_like(w_r, float(i)) for i, n in enumerate(sorted(ALL_NODES))}
    mixed = transfer_region(H, "bg_clothes", ref_comp, w_t)
    assert mixed["clothes"] is ref_comp["clothes"] and mixed["bg"] is ref_comp["bg"]
    assert mixed["bg_clothes"] is ref_comp["bg_clothes"] and mixed["hair"] is w_t
    with pytest.raises(ValueError, match="no code for node"):
        transfer_region(H, "hair", {"eyes": w_r}, w_t)
    img = render(G, fused)
    assert img.shape == (1, 3, G.size, G.size)


def test_transfer_in_any_domain_tree(G):
    torch.manual_seed(3)
    h = FusionHierarchy.with_random_nets(PAPER_TREES["cars"], FusionNetConfig.for_layout(G.layout)).eval()
    a, b = torch.zeros(1, G.n_latent, G.style_dim), torch.ones(1, G.n_latent, G.style_dim)
    comp = transfer_region(h, "wheels", a, b)
    assert [n for n, c in comp.items() if c is a] == ["wheels"]
    comp = transfer_region(h, "background", a, b)
    assert {n for n, c in comp.items() if c is a} == {"background", "background_top", "background_bottom"}
    with torch.no_grad():
        assert fuse(G, h, comp).flat().shape == (1, G.layout.size)
