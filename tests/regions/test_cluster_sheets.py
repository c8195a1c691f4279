"""Cluster contact sheets (sfeditor.regions.cluster_sheets) on a tiny random generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from editor_core_helpers import small_generator
from sfeditor.regions.cluster_sheets import (ContactSheets, cluster_samples, cluster_shares, cluster_sheets, colours,
                                     contact_sheet, label_overview, resize_labels, sheet_title)
from sfeditor.jobs import Cancelled, CancelToken
from sfeditor.regions.regions_file import RegionsFile
from sfeditor.model.identity import generator_identity
from sfeditor.regions.tree import node

K = 4


@pytest.fixture(scope="module")
def G():
    torch.set_num_threads(1)
    return small_generator()


@pytest.fixture(scope="module")
def regions(G):
    """K centroids = DeepPixels of one image (so every cluster is someone's nearest)."""
    with torch.no_grad():
        dp = G.deep_pixels(G.random_styles(1, seed=5), 32)[0].flatten(1).T      # [hw, C]
    centroids = dp[torch.linspace(0, dp.shape[0] - 1, K).long()].numpy()
    return RegionsFile(domain="tiny", generator=generator_identity(G), centroids=centroids,
                       clusters={0: "a", 1: "b", 2: "c", 3: "cluster_3"},
                       tree=node("all", node("ab", "a", "b"), node("rest", "c", "cluster_3")), deep_pixel_size=32)


def test_cluster_samples_shapes_and_determinism(G, regions):
    calls = []
    images, labels = cluster_samples(G, regions, n=5, seed=3, truncation=0.7, batch=2,
                                     progress=lambda d, t, s: calls.append((d, t, s)))
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (5, 32, 32) and np.issubdtype(labels.dtype, np.integer)
    assert labels.min() >= 0 and labels.max() < K
    assert calls[0] == (0, 5, "cluster sheets") and calls[-1] == (5, 5, "cluster sheets") and len(calls) == 4
    # the batch size does not change which images are drawn (up to batched-float noise)
    images1, labels1 = cluster_samples(G, regions, n=5, seed=3, truncation=0.7, batch=5)
    assert np.abs(images.astype(int) - images1).max() <= 1                     # float rounding only
    assert (labels == labels1).mean() > 0.98


def test_cluster_samples_cancel_and_bad_n(G, regions):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        cluster_samples(G, regions, n=2, cancel=token)
    with pytest.raises(ValueError):
        cluster_samples(G, regions, n=0)


def test_cluster_sheets_one_per_cluster(G, regions):
    images, labels = cluster_samples(G, regions, n=3, seed=0)
    sheets = cluster_sheets(images, labels, regions)
    assert sorted(sheets) == list(range(K))
    for sheet in sheets.values():
        assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
        # banner (18) + one row of 3 images at scale 2 with 2-pixel padding
        assert sheet.shape == (18 + 2 + 64 + 2, 2 + 3 * 66, 3)
    shares = cluster_shares(labels, K)
    assert shares.shape == (K,) and abs(shares.sum() - 1) < 1e-9
    # the cluster's own pixels keep their colours; the others are dimmed
    k = int(np.argmax(shares))
    assert (sheets[k][20:84, 2:66] == np.repeat(np.repeat(images[0], 2, 0), 2, 1)).mean() > 0.3 * shares[k]


def test_titles_and_label_resize():
    assert sheet_title(7, "eyes", 0.0134) == "cluster 7: eyes, 1.3% of pixels"
    assert sheet_title(3, "cluster_3", 0.5) == "cluster 3: 50.0% of pixels"
    lab = np.arange(4).reshape(1, 2, 2)
    big = resize_labels(lab, (4, 4))
    assert big.tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]]
    t = torch.nn.functional.interpolate(torch.arange(9.).reshape(1, 1, 3, 3), size=(7, 7), mode="nearest")
    np.testing.assert_array_equal(resize_labels(np.arange(9).reshape(3, 3), (7, 7)), t[0, 0].long().numpy())
    assert resize_labels(lab, (2, 2)) is lab


def test_drawing_helpers():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (3, 8, 8))
    sheet = contact_sheet(images, labels, 1, "cluster 1", scale=1)
    assert sheet.shape == (18 + 2 + 8 + 2, 2 + 3 * 10, 3)
    over = label_overview(images, labels, ["x", "y", "z"], scale=1)
    assert over.dtype == np.uint8 and over.shape[1] == 2 + 4 * 18
    # a fine labelled cut: the map is coloured by name (borders darker), not one colour per cluster
    fine = rng.integers(0, 80, (3, 8, 8))
    names = ["x" if k % 2 else "y" for k in range(80)]
    by_name = label_overview(images, fine, names, scale=2, max_legend=16)
    shown = by_name[2:18, 18:34].astype(int)                                   # first image's map, 16x16
    x, y = colours(2)[[1, 0]].astype(int)                                      # "y" is seen first: colour 0
    want = np.where((fine[0] % 2 == 1)[..., None], x, y).repeat(2, 0).repeat(2, 1)
    plain, dark = (shown == want).all(-1), (shown == (want * 0.55).astype(np.uint8)).all(-1)
    assert (plain | dark).all() and plain.any() and dark.any()
    with pytest.raises(ValueError):
        cluster_sheets(images.astype(np.float32), labels, None)


def test_contact_sheets_on_demand_equal_the_eager_ones():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (4, 4, 4))                      # coarser than the images, as DeepPixel labels can be
    rf = RegionsFile(domain="t", generator={"resolution": 8, "style_size": 1, "deep_pixel_channels": 2},
                     centroids=np.zeros((5, 2)), clusters={k: "ab"[k % 2] for k in range(5)}, tree=node("all", "a", "b"))
    eager = cluster_sheets(images, labels, rf, scale=1)
    book = ContactSheets(images, labels, rf, scale=1, keep=2)
    assert len(book) == 5 and list(book) == [0, 1, 2, 3, 4] and book.get(7) is None
    for k in (3, 0, 3, 4, 1):
        np.testing.assert_array_equal(book[k], eager[k])
    assert len(book._cache) == 2                                 # only the last few are kept
    with pytest.raises(KeyError):
        book[5]
    with pytest.raises(ValueError, match="uint8"):
        ContactSheets(images.astype(np.float32), labels, rf)
