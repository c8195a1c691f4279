"""Centroid pruning (reduced nearest neighbour after labelling): every pool pixel keeps its region."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sfeditor import Generator
from trainer.centroid_pruning import nearest_centroids, prune_centroids, prune_regions
from sfeditor.regions.clustering import Cancelled, ClusteringOptions, cluster_generator
from sfeditor.regions.masks import RegionModel
from sfeditor.regions.regions_file import RegionsFile
from sfeditor.regions.tree import node

TINY = dict(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})


def _nearest(points: np.ndarray, centroids: np.ndarray, m: int) -> np.ndarray:
    d = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :m]


def _regions_of_nearest(points, centroids, region, alive):
    ids = np.flatnonzero(alive)
    d = ((points[:, None, :] - centroids[ids][None]) ** 2).sum(-1)
    return region[ids[d.argmin(1)]]


@pytest.mark.parametrize("m", [4, 16, 200])
def test_every_pool_point_keeps_its_region(m):
    rng = np.random.default_rng(0)
    centroids = rng.uniform(-1, 1, (200, 2))
    region = (centroids[:, 0] > 0.3).astype(int) + 2 * (np.hypot(*centroids.T) < 0.25)   # 3 regions, 2 boundaries
    pool = rng.uniform(-1, 1, (4000, 2))
    alive = prune_centroids(_nearest(pool, centroids, m), region)
    before = region[_nearest(pool, centroids, 1)[:, 0]]
    np.testing.assert_array_equal(_regions_of_nearest(pool, centroids, region, alive), before)
    assert set(region[alive]) == {0, 1, 2}
    if m >= 16:                                      # interior centroids go; the boundary ones stay
        assert alive.sum() < 0.6 * len(alive)
        fresh = rng.uniform(-1, 1, (4000, 2))        # not in the pool: nearly all unchanged
        same = _regions_of_nearest(fresh, centroids, region, alive) == region[_nearest(fresh, centroids, 1)[:, 0]]
        assert same.mean() > 0.97


def test_unused_centroids_go_but_a_region_keeps_its_last():
    centroids = np.array([[0.0], [1.0], [5.0], [50.0]])
    region = np.array([0, 0, 1, 2])                  # region 2 is never nearest to a pool point
    pool = np.array([[0.1], [0.2], [4.0], [5.5]])
    alive = prune_centroids(_nearest(pool, centroids, 4), region)
    assert alive.tolist() == [True, False, True, True]


def test_bad_input_is_refused_and_cancel_stops():
    with pytest.raises(ValueError, match="outside"):
        prune_centroids(np.array([[0, 5]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="no pixels"):
        prune_centroids(np.zeros((0, 2), dtype=int), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[P, m\]"):
        prune_centroids(np.zeros(3, dtype=int), np.array([0, 1]))

    class Stop:
        requested = True

    with pytest.raises(Cancelled):
        prune_centroids(np.array([[0, 1]]), np.array([0, 1]), cancel=Stop())


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    G = Generator(**TINY).eval()
    result = cluster_generator(G, ClusteringOptions(samples=12, pixels=800, pca=12, batch=6))
    k = 40
    rf = result.to_regions("tiny", k)
    # two regions by the Ward tree's top split, so that each is spatially coherent
    top = result.tree.unit_labels(2)
    fine = result.tree.unit_labels(k)
    side = {int(f): "ab"[int(t)] for f, t in zip(fine, top)}
    return RegionModel(G, rf.relabelled({c: side[c] for c in range(k)}, node("all", "a", "b")))


def test_prune_regions_keeps_the_pool_masks(model):
    with torch.no_grad():
        new, report = prune_regions(model, images=6, seed=5, top=40, batch=4)
        pruned = RegionModel(model.G, new)
        codes = model.G.random_styles(6, seed=5)
        assert torch.equal(pruned.hard_labels(codes), model.hard_labels(codes))
    assert report["from_clusters"] == 40 and report["clusters"] == new.num_clusters < 40
    assert [new.clusters[i] for i in range(new.num_clusters)] == [model.regions.clusters[c] for c in report["kept"]]
    np.testing.assert_array_equal(new.centroids, model.regions.centroids[report["kept"]])
    assert new.clustering["pruning"]["kept"] == report["kept"] and new.card == {}
    assert len(new.clustering["cluster_pixels"]) == new.num_clusters
    assert new.temperature > 0 and new.tree == model.regions.tree
    assert model.regions.num_clusters == 40                               # the input is not touched


def test_prune_regions_round_trips_through_a_file(model, tmp_path):
    with torch.no_grad():
        new, _ = prune_regions(model, images=3, seed=1, top=8, batch=3)
    new.save(tmp_path / "r.json")
    back = RegionsFile.load(tmp_path / "r.json")
    assert back.num_clusters == new.num_clusters and back.clustering["pruning"]["images"] == 3


def test_nearest_centroids_are_sorted_nearest_first(model):
    with torch.no_grad():
        codes = model.G.random_styles(2, seed=3)
        nn = nearest_centroids(model, codes, top=5, batch=1)
        d = model.distances(codes).permute(0, 2, 3, 1).reshape(-1, model.regions.num_clusters)
    assert nn.shape == (2 * 32 * 32, 5) and nn.dtype == np.int32
    picked = torch.gather(d, 1, torch.from_numpy(nn).long())
    assert (picked[:, 1:] >= picked[:, :-1]).all()
    torch.testing.assert_close(picked[:, 0], d.min(1).values)
