"""Draft synthesis (``Generator.synthesis(max_resolution=...)``) and the preview's progressive frames:
a draft first, then the full frame unless a newer request came; thumbnails at a capped size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editor_core_helpers import composition, tiny_hierarchy
from sfeditor import Generator
from sfeditor.editor.commands import SetSeed
from sfeditor.images.imageio import to_uint8
from sfeditor.editor.locality import locality_heatmap
from sfeditor.editor.render_service import (RenderRequest, RenderResult, RenderService, default_draft_resolution,
                                     draft_psnr, render_request)
from sfeditor.model.style_code import StyleCode

torch.set_num_threads(1)

CH = {4: 16, 8: 16, 16: 8, 32: 8, 64: 4}


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    G = Generator(size=64, style_dim=16, n_mlp=1, channels=CH).eval()
    G.requires_grad_(False)
    return G


@pytest.fixture(scope="module")
def H(G):
    return tiny_hierarchy(G)


def truncated_copy(G: Generator, r: int) -> Generator:
    """A generator of size ``r`` holding ``G``'s weights of every layer up to ``r`` (written out by
    state-dict names, independently of ``synthesis``)."""
    small = Generator(size=r, style_dim=G.style_dim, n_mlp=G.config.n_mlp,
                      channels={k: v for k, v in CH.items() if k <= r}).eval()
    own = small.state_dict()
    small.load_state_dict({k: v for k, v in G.state_dict().items() if k in own})
    return small


def test_full_resolution_is_unchanged(G):
    s = G.random_styles(2, seed=1)
    with torch.no_grad():
        full = G.synthesis(s)
        assert torch.equal(G.synthesis(s, max_resolution=64), full)
        assert torch.equal(G.synthesis(s, max_resolution=1024), full)


@pytest.mark.parametrize("r", [4, 8, 16, 32])
def test_draft_is_the_smaller_generators_image(G, r):
    """A draft at r is exactly what a generator of size r with the same weights draws: the skip
    branch's image after the toRGB layer of resolution r."""
    small = truncated_copy(G, r)
    s = G.random_styles(2, seed=2)
    n_conv, n_rgb = len(small.layout.conv_dims), len(small.layout.rgb_dims)
    with torch.no_grad():
        draft = G.synthesis(s, max_resolution=r)
        ref = small.synthesis(StyleCode(s.conv[:n_conv], s.rgb[:n_rgb], small.layout))
    assert draft.shape == (2, 3, r, r)
    assert torch.allclose(draft, ref, atol=1e-6)


def test_draft_arguments_are_checked(G):
    s = G.random_styles(1, seed=0)
    for bad in (0, 2, 3, 48, 31.5, -8):
        with pytest.raises(ValueError, match="power of two"):
            G.synthesis(s, max_resolution=bad)
    with pytest.raises(ValueError, match="return_features"):
        G.synthesis(s, max_resolution=32, return_features=True)
    _, feats = G.synthesis(s, max_resolution=64, return_features=True)     # full size: allowed
    assert len(feats["conv"]) == len(G.layout.conv_dims)


def test_auto_draft_only_for_large_models_on_cpu(G):
    assert default_draft_resolution(G) is None
    big = Generator(size=512, style_dim=8, n_mlp=1,
                    channels={4: 4, 8: 4, 16: 4, 32: 4, 64: 4, 128: 4, 256: 4, 512: 4})
    assert default_draft_resolution(big) == 256
    with RenderService(big) as s:
        assert s.draft_resolution == 256
    with RenderService(G) as s:
        assert s.draft_resolution is None
    with RenderService(G, draft_resolution=64) as s:            # not smaller than the model: no draft
        assert s.draft_resolution is None
    for bad in (3, 0, "big", 48):
        with pytest.raises(ValueError, match="power of two"):
            RenderService(G, draft_resolution=bad)
        with pytest.raises(ValueError, match="power of two"):
            RenderService(G, thumbnail_resolution=bad)


def test_draft_then_full_frame(G, H):
    results = []
    comp = composition()
    with RenderService(G, H, on_result=results.append, draft_resolution=16, draft_min_psnr=None,
                       draft_bf16=False) as s:
        stamp = s.submit(comp)
        assert s.wait_until_idle()
    assert [(r.stamp, r.draft) for r in results] == [(stamp, True), (stamp, False)]
    draft, full = results
    assert draft.ok and full.ok and draft.full_size == full.full_size == 64
    assert draft.image.shape == (16, 16, 3) and full.image.shape == (64, 64, 3)
    assert full.render_ms >= draft.render_ms
    assert draft.recomputed_nodes == full.recomputed_nodes       # one fusion for both images
    assert np.array_equal(full.image, render_request(G, H, RenderRequest(comp, 0)).image)
    assert np.array_equal(draft.image, render_request(G, H, RenderRequest(comp, 0), max_resolution=16).image)
    assert s.latest is full and s.drafts == 1 and s.renders == 1 and s.finals_skipped == 0


def test_drafts_and_small_thumbnails_in_bf16_full_frames_in_float32(G, H):
    results, thumbs = [], {}
    comp = composition()
    with RenderService(G, H, on_result=results.append, on_thumbnail=lambda n, img: thumbs.__setitem__(n, img),
                       draft_resolution=16, thumbnail_resolution=32, draft_min_psnr=None, draft_bf16=True) as s:
        s.submit(comp)
        assert s.wait_until_idle()
    draft, full = results
    fused = render_request(G, H, RenderRequest(comp, 0))
    assert np.array_equal(full.image, fused.image)                     # float32, bit for bit
    name = comp.leaves[0]
    code = comp.code_for(name, G)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        thumb_bf16 = to_uint8(G.synthesis(code, max_resolution=32))[0]
    with torch.no_grad():
        thumb_f32 = to_uint8(G.synthesis(code, max_resolution=32))[0]
    assert np.array_equal(thumbs[name], thumb_bf16) and not np.array_equal(thumb_bf16, thumb_f32)
    f32 = render_request(G, H, RenderRequest(comp, 0), max_resolution=16).image
    assert draft.image.shape == f32.shape and np.abs(draft.image.astype(int) - f32).max() <= 16


def test_newer_request_skips_the_full_frame(G, H):
    """A request arriving while the draft is delivered wins: the stale full frame is never rendered."""
    results = []
    comp = composition()
    newer = {}

    def on_result(r):
        results.append(r)
        if r.draft and not newer:
            c2 = comp.snapshot()
            SetSeed(c2.tree.name, 12345).apply(c2)
            newer["stamp"] = s.submit(c2)

    with RenderService(G, H, on_result=on_result, draft_resolution=16, draft_min_psnr=None) as s:
        first = s.submit(comp)
        assert s.wait_until_idle()
    assert [(r.stamp, r.draft) for r in results] == [(first, True), (newer["stamp"], True),
                                                     (newer["stamp"], False)]
    assert s.finals_skipped == 1 and s.latest.stamp == newer["stamp"] and not s.latest.draft


def fine_detail_only(G: Generator) -> Generator:
    """A copy of ``G`` whose finest toRGB layer adds nothing: its 32 px draft is the frame, downsampled
    (as in a model whose finest layers add detail, not colour)."""
    import copy

    G2 = copy.deepcopy(G)
    with torch.no_grad():
        G2.to_rgbs[-1].conv.weight.zero_()
        G2.to_rgbs[-1].bias.zero_()
    return G2


def test_drafts_are_checked_on_the_first_frame(G, H):
    """A model whose draft is far from its frame (random weights: every toRGB layer adds as much) gets
    no drafts; one whose finest layer adds only detail does, from its second frame on."""
    comp = composition()
    for model, ok in ((G, False), (fine_detail_only(G), True)):
        results = []
        with RenderService(model, H, on_result=results.append, draft_resolution=32) as s:
            assert s.drafts_ok is None and s.draft_note == ""
            first = s.submit(comp)
            assert s.wait_until_idle()
            c2 = comp.snapshot()
            SetSeed(c2.tree.name, 99).apply(c2)
            second = s.submit(c2)
            assert s.wait_until_idle()
        assert s.drafts_ok is ok
        assert (s.fidelity[32] >= 20) is ok and s.low_resolution_ok(32) is ok
        assert ("shown before each frame" if ok else "off") in s.draft_note
        expect = [(first, False)] + ([(second, True)] if ok else []) + [(second, False)]
        assert [(r.stamp, r.draft) for r in results] == expect


def test_draft_psnr():
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    assert draft_psnr(x, torch.nn.functional.interpolate(x, size=4, mode="area")) == float("inf")
    assert abs(draft_psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 4, 4), 0.2)) - 20.0) < 1e-4


def test_a_late_draft_never_replaces_its_full_frame(G):
    """Delivery order is (stamp, draft before full): an old stamp's result, or a draft after its own
    full frame, counts as stale."""
    seen = []
    with RenderService(G, on_result=seen.append) as s:
        img = np.zeros((8, 8, 3), np.uint8)
        s._deliver(RenderResult(5, img, 1.0, draft=False, full_size=64))
        s._deliver(RenderResult(5, img, 1.0, draft=True, full_size=64))
        s._deliver(RenderResult(4, img, 1.0, draft=False, full_size=64))
        s._deliver(RenderResult(6, img, 1.0, draft=True, full_size=64))
    assert [(r.stamp, r.draft) for r in seen] == [(5, False), (6, True)] and s.stale == 2


def test_thumbnails_are_capped_where_the_model_allows(G, H):
    """Thumbnails at 32 px for a model whose 32 px image stands in for its frame; full size for one
    whose does not (checked on the first frame)."""
    comp = composition()
    name = comp.leaves[0]
    for model, side in ((fine_detail_only(G), 32), (G, 64)):
        thumbs = {}
        with RenderService(model, H, on_thumbnail=lambda n, img: thumbs.__setitem__(n, img),
                           thumbnail_resolution=32, draft_bf16=False) as s:
            s.submit(comp)
            assert s.wait_until_idle()
        assert set(thumbs) == set(comp.node_names)
        assert all(t.shape == (side, side, 3) for t in thumbs.values())
        with torch.no_grad():
            own = to_uint8(model.synthesis(comp.code_for(name, model), max_resolution=side))[0]
        assert np.array_equal(thumbs[name], own)
    full = {}
    with RenderService(G, H, on_thumbnail=lambda n, img: full.__setitem__(n, img),
                       thumbnail_resolution=None) as s:
        s.submit(comp)
        assert s.wait_until_idle()
    assert all(t.shape == (64, 64, 3) for t in full.values())


def test_heatmap_on_drafts(G, H):
    comp = composition()
    node = comp.leaves[0]
    *_, small = locality_heatmap(G, H, comp, node, "fixed", samples=2, batch=2, max_resolution=16)
    *_, big = locality_heatmap(G, H, comp, node, "fixed", samples=2, batch=2)
    assert small.values.shape == (16, 16) and big.values.shape == (64, 64)
    assert np.isfinite(small.values).all() and small.values.max() > 0
