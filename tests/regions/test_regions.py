"""Regions file (format, validation, paper trees) and DeepPixel Ward clustering."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from editor_core_helpers import SMALL as TINY, small_generator

from sfeditor import Generator
from sfeditor.regions.clustering import (ClusteringOptions, ClusteringResult, MergeTree, assign, channel_scale,
                                 cluster_generator, sample_deep_pixels, squared_distances, ward_tree)
from sfeditor.regions.regions_file import RegionsFile, encode_array, load_regions
from sfeditor.model.identity import deep_pixel_fingerprint, generator_fingerprint, synthesis_fingerprint
from sfeditor.regions.tree import PAPER_TREES, RegionNode, internal_nodes, leaves, node, paper_tree, region_of
from sfeditor.toy import region_names

OPTS = dict(samples=12, pixels=600, pca=12, batch=6)


@pytest.fixture(scope="module")
def G():
    torch.set_num_threads(1)
    return small_generator()


@pytest.fixture(scope="module")
def result(G):
    return cluster_generator(G, ClusteringOptions(**OPTS))


def three_leaf_file(result, G) -> RegionsFile:
    rf = result.to_regions("tiny", 6)
    return rf.relabelled({0: "a", 1: "b", 2: "c", 3: "a", 4: "b", 5: "c"}, node("all", node("ab", "a", "b"), "c"))


# ------------------------------------------------------------------ trees
def test_paper_trees_leaves_match_the_paper_and_toy_domains():
    assert set(leaves(PAPER_TREES["faces"])) == {"mouth", "skin", "eyes", "clothes", "bg", "hair"}
    assert set(leaves(paper_tree("toy-faces"))) == set(region_names("toy-faces"))
    assert set(leaves(paper_tree("toy-cars"))) == set(region_names("toy-cars"))
    assert leaves(PAPER_TREES["churches"]) == ["church", "background"]
    faces = PAPER_TREES["faces"]
    assert region_of(faces, "face") == {"mouth", "skin", "eyes"}
    assert region_of(faces, "bg_clothes") == {"clothes", "bg"}
    assert region_of(faces, "hair") == {"hair"}
    assert [n.name for n in internal_nodes(faces)] == ["all", "face", "bg_hair_clothes", "skin_mouth", "bg_clothes"]
    assert [n.name for n in internal_nodes(PAPER_TREES["cars"])] == ["all", "car", "background"]
    assert str(PAPER_TREES["cars"]) == "all(car(car_body, wheels), background(background_top, background_bottom))"
    with pytest.raises(KeyError):
        region_of(faces, "nose")


def test_tree_dict_forms():
    t = PAPER_TREES["faces"]
    assert RegionNode.from_dict(t.to_dict()) == t
    assert RegionNode.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    # leaves as {"name": ...} objects are accepted too
    assert RegionNode.from_dict({"name": "all", "children": [{"name": "a"}, "b"]}) == node("all", "a", "b")


# --------------------------------------------------------------- the file
def test_regions_file_round_trip(tmp_path, result, G):
    rf = three_leaf_file(result, G)
    rf.card["oracle_miou"] = 0.5
    p = tmp_path / "r.json"
    rf.save(p, array_dtype="float32")
    back = RegionsFile.load(p)
    assert back.clusters == rf.clusters and back.tree == rf.tree and back.card == rf.card
    np.testing.assert_array_equal(back.centroids, rf.centroids)
    np.testing.assert_array_equal(back.channel_scale, rf.channel_scale)
    assert back.leaves == ["a", "b", "c"] and back.region_of("ab") == {"a", "b"}
    assert back.clusters_of("ab") == [0, 1, 3, 4]
    assert back.membership(["ab", "c"]).tolist() == [[1, 0], [1, 0], [0, 1], [1, 0], [1, 0], [0, 1]]
    rf.save(p)  # default float16 centroids: small and close
    back = load_regions(p)
    np.testing.assert_allclose(back.centroids, rf.centroids, rtol=2e-3, atol=1e-4)
    back.check_generator(G, strict_fingerprint=True)
    assert back.generator["fingerprint"] == generator_fingerprint(G)


def _broken(d: dict, edit) -> dict:
    d = copy.deepcopy(d)
    edit(d)
    return d


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(version=3), "version"),
    (lambda d: d.update(version=True), "version"),
    (lambda d: d.update(format="something-else"), "format"),
    (lambda d: d.pop("centroids"), "centroids: missing"),
    (lambda d: d["clusters"].update({"0": "z"}), "leaf names must equal the cluster labels"),
    (lambda d: d["clusters"].pop("5"), "every cluster id"),
    (lambda d: d["clusters"].update({"x": "a"}), "integer cluster ids"),
    (lambda d: d["clusters"].update({"0": ""}), "non-empty string"),
    (lambda d: d.update(tree={"name": "all", "children": ["a", "b", "c"]}), "exactly 2 children"),
    (lambda d: d.update(tree={"name": "all", "children": ["a"]}), "exactly 2 children"),
    (lambda d: d.update(tree={"name": "all", "children": [{"name": "a", "children": ["b", "c"]}, "a"]}),
     "duplicate node name"),
    (lambda d: d.update(tree={"name": "all", "children": [{"name": "ab", "children": ["a", "b"]}, 3]}),
     "must be an object"),
    (lambda d: d["generator"].update(deep_pixel_channels=99), "width"),
    (lambda d: d["generator"].update(resolution="big"), "generator.resolution"),
    (lambda d: d["centroids"].update(shape=[6, 7]), "bytes do not hold"),
    (lambda d: d["centroids"].update(dtype="int8"), "dtype"),
    (lambda d: d.update(centroids=[[1.0, float("nan")]]), "non-finite"),
    (lambda d: d.update(channel_scale=[1.0, 2.0]), "channel_scale"),
    (lambda d: d.update(normalization="fancy"), "normalization"),
    (lambda d: d.update(temperature=-1), "temperature"),
    (lambda d: d.update(surprise=1), "unknown top-level keys"),
])
def test_regions_file_validation_errors(result, G, edit, message):
    good = three_leaf_file(result, G).to_dict()
    RegionsFile.from_dict(good)
    with pytest.raises(ValueError, match=message):
        RegionsFile.from_dict(_broken(good, edit))


@pytest.fixture(scope="module")
def compact_file(G):
    """A labelled file clustered on the finest layer only: the other channels weigh nothing."""
    res = cluster_generator(G, ClusteringOptions(**OPTS, min_resolution=32))
    rf = res.to_regions("tiny", 6)
    return rf.relabelled({0: "a", 1: "b", 2: "c", 3: "a", 4: "b", 5: "c"}, node("all", node("ab", "a", "b"), "c"))


def test_compact_regions_file_keeps_every_decision(tmp_path, G, compact_file):
    rf = compact_file
    active = rf.active_channels()
    assert 0 < active.sum() < rf.channels
    d = rf.to_dict("float32")
    assert d["version"] == 2 and d["centroids"]["shape"] == [6, int(active.sum())]
    assert sum(b - a for a, b in d["active_channels"]) == active.sum()
    full = copy.deepcopy(d)
    full.update(version=1, centroids=encode_array(rf.centroids, "float32"))
    del full["active_channels"], full["inactive_fill"]
    assert len(json.dumps(d)) < 0.5 * len(json.dumps(full))
    p = tmp_path / "compact.json"
    rf.save(p, array_dtype="float32")
    back = RegionsFile.load(p)
    np.testing.assert_array_equal(back.centroids[:, active], rf.centroids[:, active])
    assert np.ptp(back.centroids[:, ~active], axis=0).max() == 0      # one shared value per inactive channel
    torch.manual_seed(3)
    with torch.no_grad():
        dp = sample_deep_pixels(G, ClusteringOptions(**{**OPTS, "samples": 4, "seed": 9}))[0]
    x = torch.as_tensor(dp[:400]).T.reshape(1, -1, 20, 20)
    a = assign(x, rf.centroids, rf.channel_scale)
    b = assign(x, back.centroids, back.channel_scale)
    assert torch.equal(a, b)
    d0 = squared_distances(x, torch.as_tensor(rf.centroids), torch.as_tensor(rf.channel_scale))
    d1 = squared_distances(x, torch.as_tensor(back.centroids), torch.as_tensor(back.channel_scale))
    diff = d1 - d0                          # at most a constant per pixel: soft masks are unchanged
    assert float((diff - diff.mean(1, keepdim=True)).abs().max()) < 1e-5 * float(d0.abs().max())
    rf2 = RegionsFile.load(p)
    rf2.save(tmp_path / "again.json", array_dtype="float32")          # a re-save is the same file
    assert (tmp_path / "again.json").read_text() == p.read_text()
    # a file whose channels all count stays version 1, readable by older versions
    assert three_leaf_file(cluster_generator(G, ClusteringOptions(**OPTS)), G).to_dict()["version"] == 1


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("active_channels"), "active_channels: missing"),
    (lambda d: d.pop("inactive_fill"), "inactive_fill: missing"),
    (lambda d: d.update(active_channels=[]), "non-empty list"),
    (lambda d: d.update(active_channels=[[0, "5"]]), "integer pairs"),
    (lambda d: d.update(active_channels=[[5, 2]]), "out of order"),
    (lambda d: d.update(active_channels=[[0, 10**6]]), "outside"),
    (lambda d: d["active_channels"].append(list(d["active_channels"][-1])), "overlapping"),
    (lambda d: d["active_channels"][-1].__setitem__(1, d["active_channels"][-1][1] - 1), "active channels"),
    (lambda d: d["inactive_fill"].update(shape=[1], base64="AAA8"), "inactive_fill"),
])
def test_compact_regions_file_validation(compact_file, edit, message):
    good = compact_file.to_dict()
    RegionsFile.from_dict(good)
    with pytest.raises(ValueError, match=message):
        RegionsFile.from_dict(_broken(good, edit))


def test_regions_file_against_the_generator(tmp_path, result, G):
    rf = three_leaf_file(result, G)
    other = Generator(**{**TINY, "channels": {4: 32, 8: 32, 16: 16, 32: 8}})
    with pytest.raises(ValueError, match="width"):
        rf.check_generator(other)
    torch.manual_seed(1)
    same_shape = Generator(**TINY)
    with pytest.warns(UserWarning, match="fingerprint"):
        rf.check_generator(same_shape)
    with pytest.raises(ValueError, match="fingerprint"):
        rf.check_generator(same_shape, strict_fingerprint=True)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RegionsFile.load(bad)
    with pytest.raises(FileNotFoundError):
        load_regions(tmp_path / "missing.json")


def _refit_mapping(G, seed=5):
    g2 = Generator(**TINY)
    g2.load_state_dict(G.state_dict())
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in g2.style.parameters():
            p.add_(torch.randn_like(p))
        g2.w_avg.add_(1.0)
    return g2


def test_synthesis_fingerprint_ignores_the_mapping_only(G):
    g2 = _refit_mapping(G)
    assert generator_fingerprint(g2) != generator_fingerprint(G)
    assert synthesis_fingerprint(g2) == synthesis_fingerprint(G)
    with torch.no_grad():
        g2.conv1.conv.modulation.bias.add_(0.5)          # an affine layer: S space itself changes
    assert synthesis_fingerprint(g2) != synthesis_fingerprint(G)


def test_regions_file_survives_a_refitted_mapping(result, G, recwarn):
    rf = three_leaf_file(result, G)
    assert rf.generator["synthesis_fingerprint"] == synthesis_fingerprint(G)
    back = RegionsFile.from_dict(rf.to_dict())
    back.check_generator(_refit_mapping(G), strict_fingerprint=True)        # same S space: fits
    # a file from before the synthesis fingerprint (the full one only) still checks the full one
    d = rf.to_dict()
    del d["generator"]["synthesis_fingerprint"], d["generator"]["deep_pixel_fingerprint"]
    old = RegionsFile.from_dict(d)
    old.check_generator(G, strict_fingerprint=True)
    with pytest.raises(ValueError, match="fingerprint"):
        old.check_generator(_refit_mapping(G), strict_fingerprint=True)
    d["generator"]["synthesis_fingerprint"] = 3
    with pytest.raises(ValueError, match="synthesis_fingerprint"):
        RegionsFile.from_dict(d)


def _new_image_head(G):
    g2 = _refit_mapping(G)
    last = len(g2.convs) - 1
    with torch.no_grad():
        g2.convs[last].conv.weight.mul_(1.3)
        g2.convs[last].activate.bias.add_(0.1)
        for rgb in [g2.to_rgb1, *g2.to_rgbs]:
            rgb.conv.weight.mul_(0.7)
            rgb.bias.add_(0.2)
    return g2


def test_deep_pixel_fingerprint_ignores_the_mapping_and_the_image_head_only(G):
    g2 = _new_image_head(G)
    s = G.random_styles(2, seed=0)
    with torch.no_grad():
        img_a, f_a = G.synthesis(s, return_features=True)
        img_b, f_b = g2.synthesis(s, return_features=True)
    assert all(torch.equal(a, b) for a, b in zip(f_a["conv"], f_b["conv"]))   # same DeepPixels...
    assert not torch.allclose(img_a, img_b)                                   # ... other pixels
    assert synthesis_fingerprint(g2) != synthesis_fingerprint(G)
    assert deep_pixel_fingerprint(g2) == deep_pixel_fingerprint(G)
    for change in (lambda g: g.convs[-2].conv.weight.mul_(1.1),          # feeds the last DeepPixel
                   lambda g: g.to_rgbs[-1].conv.modulation.bias.add_(0.5)):  # an affine: S space
        g3 = _new_image_head(G)
        with torch.no_grad():
            change(g3)
        assert deep_pixel_fingerprint(g3) != deep_pixel_fingerprint(G)


def test_regions_file_survives_a_new_image_head(result, G):
    rf = three_leaf_file(result, G)
    assert rf.generator["deep_pixel_fingerprint"] == deep_pixel_fingerprint(G)
    RegionsFile.from_dict(rf.to_dict()).check_generator(_new_image_head(G), strict_fingerprint=True)
    d = rf.to_dict()
    del d["generator"]["deep_pixel_fingerprint"]          # an older file: the synthesis one decides
    with pytest.raises(ValueError, match="fingerprint"):
        RegionsFile.from_dict(d).check_generator(_new_image_head(G), strict_fingerprint=True)
    d["generator"]["deep_pixel_fingerprint"] = ["x"]
    with pytest.raises(ValueError, match="deep_pixel_fingerprint"):
        RegionsFile.from_dict(d)


def test_fingerprint_ignores_fp16_rounding(G):
    g2 = Generator(**TINY)
    g2.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in G.state_dict().items()})
    assert generator_fingerprint(g2) == generator_fingerprint(G)


# ------------------------------------------------------------- clustering
def test_sampled_deep_pixels_are_the_generators(G):
    o = ClusteringOptions(samples=4, pixels=50, batch=3, truncation=0.7, seed=3)
    X, where = sample_deep_pixels(G, o)
    assert X.shape == (50, G.layout.conv_size) and where.shape == (50, 3)
    with torch.no_grad():
        dp = G.deep_pixels(G.random_styles(4, seed=3, truncation=0.7), 32)
    for (n, y, x), row in zip(where[:10], X[:10]):
        np.testing.assert_allclose(row, dp[n, :, y, x].numpy(), rtol=1e-5, atol=1e-5)


def test_channel_scales_give_unit_mean_variance():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 10)) * np.array([1, 1, 1, 1, 10, 10, 0.1, 0.1, 0.1, 0.1])
    for norm in ("none", "channel", "layer"):
        s = channel_scale(X.astype(np.float32), norm, (4, 2, 4), (4, 8, 16))
        assert (X / s).var(0).mean() == pytest.approx(1.0, rel=1e-3)
    s = channel_scale(X.astype(np.float32), "layer", (4, 2, 4), (4, 8, 16))
    blocks = [((X / s)[:, a:b]).var(0).sum() for a, b in ((0, 4), (4, 6), (6, 10))]
    np.testing.assert_allclose(blocks, blocks[0], rtol=1e-3)          # every layer weighs the same
    for norm in ("none", "channel", "layer"):                          # coarse layers dropped
        s = channel_scale(X.astype(np.float32), norm, (4, 2, 4), (4, 8, 16), min_resolution=8)
        assert (X / s)[:, 4:].var(0).mean() == pytest.approx(1.0, rel=1e-3)
        assert (X / s)[:, :4].var(0).max() < 1e-9
    with pytest.raises(ValueError):
        channel_scale(X.astype(np.float32), "layer", (4, 2, 4), (4, 8, 16), min_resolution=32)


def test_ward_tree_cuts(result):
    tree = result.tree
    P = tree.num_units
    assert P == OPTS["pixels"]
    X = tree.unit_sums
    np.testing.assert_allclose(tree.cut(1)[0], X.mean(0), rtol=1e-4, atol=1e-5)
    prev = None
    for k in (2, 3, 5, 8, 20):
        labels = tree.unit_labels(k)
        cents = tree.cut(k)
        assert cents.shape == (k, X.shape[1]) and sorted(set(labels)) == list(range(k))
        sizes = tree.cluster_sizes(k)
        assert sizes.sum() == P and (np.diff(sizes) <= 0).all() and np.bincount(labels).tolist() == sizes.tolist()
        for c in range(k):
            np.testing.assert_allclose(cents[c], X[labels == c].mean(0), rtol=1e-4, atol=1e-5)
        if prev is not None:  # a finer cut only splits clusters
            pairs = {(a, b) for a, b in zip(labels, prev)}
            assert len({a for a, _ in pairs}) == len(pairs)
        prev = labels
    with pytest.raises(ValueError):
        tree.cut(P + 1)


def test_ward_tree_matches_scipy_partitions():
    from scipy.cluster.hierarchy import fcluster, linkage

    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(m, 1.0, size=(40, 3)) for m in (0, 6, 12, 20)]).astype(np.float64)
    tree = ward_tree(X)
    Z = linkage(X, method="ward")
    for k in (2, 3, 4, 7):
        ours, ref = tree.unit_labels(k), fcluster(Z, k, criterion="maxclust")
        pairs = set(zip(ours, ref))
        assert len(pairs) == k == len(set(ours)) == len(set(ref))


def test_compact_tree_keeps_cuts_and_saves(tmp_path, result):
    small = result.tree.compact(16)
    assert small.num_units == 16
    for k in (1, 4, 9, 16):
        np.testing.assert_allclose(small.cut(k), result.tree.cut(k), rtol=1e-4, atol=1e-5)
        assert small.cluster_sizes(k).tolist() == result.tree.cluster_sizes(k).tolist()
    assert str(small.hierarchy(5)) == str(result.tree.hierarchy(5))
    p = tmp_path / "tree.npz"
    result.save(p, max_k=16)
    back = ClusteringResult.load(p)
    assert back.options == result.options and back.generator == result.generator
    np.testing.assert_allclose(back.cut(7), result.cut(7), rtol=1e-4, atol=1e-5)
    assert back.temperature(7) == pytest.approx(result.temperature(7), rel=0.05)


def test_unlabelled_regions_file_uses_the_ward_hierarchy(result):
    rf = result.to_regions("tiny", 5)
    assert sorted(rf.leaves) == [f"cluster_{i}" for i in range(5)]
    assert rf.tree.name == "all" and len(rf.internal_nodes()) == 4
    assert rf.temperature > 0 and rf.clustering["clusters"] == 5
    assert sum(rf.clustering["cluster_pixels"]) == OPTS["pixels"]


def test_assign_is_nearest_centroid(G, result):
    with torch.no_grad():
        dp = G.deep_pixels(G.random_styles(2, seed=5), 32)
    cents, scale = result.cut(6), result.channel_scale
    labels = assign(dp, cents, scale, batch=1)
    x = dp.permute(0, 2, 3, 1).reshape(-1, dp.shape[1]).numpy().astype(np.float64) / scale
    d = np.stack([((x - c / scale) ** 2).mean(1) for c in cents.astype(np.float64)], 1)
    np.testing.assert_array_equal(labels.reshape(-1).numpy(), d.argmin(1))
    dist = squared_distances(dp, torch.from_numpy(cents), torch.from_numpy(scale))
    np.testing.assert_allclose(dist.permute(0, 2, 3, 1).reshape(-1, 6).numpy(), d, rtol=1e-3, atol=1e-4)


def test_cancel_and_progress(G):
    from sfeditor.regions.clustering import Cancelled

    seen = []

    class Token:
        requested = False

    token = Token()

    def progress(done, total, stage):
        seen.append((done, total, stage))
        token.requested = done > 0          # cancel after the first batch

    with pytest.raises(Cancelled):
        cluster_generator(G, ClusteringOptions(**OPTS), progress=progress, cancel=token)
    assert seen == [(0, 12, "deep pixels"), (6, 12, "deep pixels")]


def test_merge_tree_rejects_bad_input():
    with pytest.raises(ValueError):
        MergeTree(np.zeros((3, 2)), None, np.zeros((3, 2)), np.ones(3))
