"""Hard and soft region masks (Sec. 4.2, Appendix A.5) on a tiny random generator."""
from __future__ import annotations

import pytest
import torch

from sfeditor import Generator, StyleCode
from sfeditor.regions.clustering import ClusteringOptions, cluster_generator
from sfeditor.regions.masks import RegionModel, deep_pixels_from_features
from sfeditor.regions.tree import node

TINY = dict(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    G = Generator(**TINY).eval()
    result = cluster_generator(G, ClusteringOptions(samples=12, pixels=600, pca=12, batch=6))
    rf = result.to_regions("tiny", 6).relabelled({0: "a", 1: "b", 2: "c", 3: "a", 4: "b", 5: "c"},
                                                 node("all", node("ab", "a", "b"), "c"))
    return RegionModel(G, rf)


@pytest.fixture(scope="module")
def codes(model):
    with torch.no_grad():
        return model.G.random_styles(3, seed=11)


def test_soft_masks_sum_to_one_and_unions_add(model, codes):
    with torch.no_grad():
        leaves = model.soft_masks(codes)                                       # [B, 3, 32, 32]
        both = model.soft_masks(codes, ["ab", "c", "all"], size=64)
        small = model.soft_masks(codes, size=8)
    assert leaves.shape == (3, 3, 32, 32) and both.shape == (3, 3, 64, 64) and small.shape == (3, 3, 8, 8)
    torch.testing.assert_close(leaves.sum(1), torch.ones(3, 32, 32))
    torch.testing.assert_close(small.sum(1), torch.ones(3, 8, 8))
    torch.testing.assert_close(both[:, 2], torch.ones(3, 64, 64))
    torch.testing.assert_close(both[:, 0] + both[:, 1], torch.ones(3, 64, 64))
    up = torch.nn.functional.interpolate(leaves[:, :2].sum(1, keepdim=True), size=64, mode="bilinear",
                                         align_corners=False)[:, 0]
    torch.testing.assert_close(both[:, 0], up)
    assert (leaves >= 0).all() and (leaves <= 1).all()


def test_hard_masks_and_labels(model, codes):
    labels = model.hard_labels(codes)                                          # [B, 32, 32] leaf ids
    masks = model.hard_masks(codes)
    assert labels.dtype == torch.int64 and labels.shape == (3, 32, 32)
    torch.testing.assert_close(masks, torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float())
    clusters = model.cluster_labels(codes)
    assert torch.equal(model.cluster_leaf[clusters], labels)
    ab = model.hard_masks(codes, ["ab"], size=64)[:, 0]
    big = model.hard_labels(codes, size=64)
    assert torch.equal(ab.bool(), big < 2)
    assert set(labels.unique().tolist()) <= {0, 1, 2} and len(labels.unique()) > 1


def test_hard_masks_are_the_low_temperature_limit_of_soft_masks(model, codes):
    with torch.no_grad():
        soft = model.soft_masks(codes, temperature=1e-4)
    agree = (soft.argmax(1) == model.hard_labels(codes)).float().mean()
    assert agree > 0.999
    with pytest.raises(ValueError):
        model.soft_masks(codes, temperature=0)


def test_features_can_be_reused(model, codes):
    with torch.no_grad():
        _, feats = model.G.synthesis(codes, "const", return_features=True)
        torch.testing.assert_close(deep_pixels_from_features(feats, 32), model.G.deep_pixels(codes, 32))
        torch.testing.assert_close(deep_pixels_from_features(feats, 16), model.G.deep_pixels(codes, 16))
        a = model.soft_masks(codes, ["ab"])
        b = model.soft_masks(regions=["ab"], features=feats)
    torch.testing.assert_close(a, b)


def test_soft_masks_are_differentiable_an_optimised_code_grows_its_region(model, codes):
    s = codes[0].detach().clone()
    region = "c"
    with torch.no_grad():
        start = model.soft_masks(s, [region]).mean().item()
    s.requires_grad_(True)
    opt = torch.optim.Adam(s.layers, lr=0.05)
    for _ in range(8):
        loss = -model.soft_masks(s, [region]).mean()
        opt.zero_grad()
        loss.backward()
        # DeepPixels are conv-layer *inputs*: every conv style but the last shapes them;
        # the last conv and the tRGB styles only act after them
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in s.conv[:-1])
        assert all(t.grad is None for t in s.rgb + s.conv[-1:])
        opt.step()
    with torch.no_grad():
        end = model.soft_masks(s, [region]).mean().item()
        hard_end = model.hard_masks(StyleCode(s.conv, s.rgb, s.layout), [region]).mean().item()
    assert end > start + 0.05, (start, end)
    assert hard_end > start


def test_min_resolution_files_skip_coarse_layers_exactly():
    """A file clustered on the fine layers only: RegionModel leaves the coarse channels out of the
    distances (their weight is ~1e-12), and gets the full computation's distances and masks."""
    from sfeditor.regions.clustering import squared_distances

    torch.manual_seed(1)
    G = Generator(**TINY).eval()
    result = cluster_generator(G, ClusteringOptions(samples=8, pixels=400, pca=8, batch=4, min_resolution=16))
    m = RegionModel(G, result.to_regions("tiny", 5))
    assert m._active_centroids.shape[1] == 16 + 16 + 16          # the conv inputs at 16 and 32 px
    s = G.random_styles(2, seed=3)
    with torch.no_grad():
        full = squared_distances(m.deep_pixels(s), m.centroids, m.channel_scale)
        fast = m.distances(s)
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-6)
    assert torch.equal(fast.argmin(1), full.argmin(1))
    assert torch.equal(m.cluster_labels(s), full.argmin(1))     # the matrix-product path picks the same centroids


def test_cluster_labels_are_the_nearest_centroids(model, codes):
    with torch.no_grad():
        d = model.distances(codes)
    assert (model.cluster_labels(codes) == d.argmin(1)).float().mean() > 0.999
