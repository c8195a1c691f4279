"""Channel-region matrix M (Eq. 1) and fusion weights w_R (Eq. 8) vs a per-pixel Python-loop reference."""
from __future__ import annotations

import pytest
import torch

from sfeditor import Generator
from sfeditor.regions.clustering import ClusteringOptions, cluster_generator
from sfeditor.regions.correlation import (code_correlation, correlation, layer_means, mean_correlation, region_weights,
                                  resize_regions)
from sfeditor.regions.masks import RegionModel
from sfeditor.regions.tree import node

MICRO = dict(size=16, style_dim=8, n_mlp=1, channels={4: 4, 8: 3, 16: 2})


@pytest.fixture(scope="module")
def G():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = Generator(**MICRO).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("activate.bias"):
                p.normal_(0, 0.3)
    return g


def reference_M(features: dict, U: torch.Tensor) -> torch.Tensor:
    """Eq. 1 by loops: for each layer, region and channel, sum A^2 U over pixels / sum A^2 over pixels."""
    B, K, H, _ = U.shape
    rows = []
    for A in list(features["conv"]) + list(features["rgb"]):
        _, C, h, w = A.shape
        f = H // h if h <= H else None
        out = torch.zeros(B, K, C, dtype=torch.float64)
        for b in range(B):
            for c in range(C):
                total = 0.0
                inside = [0.0] * K
                for y in range(h):
                    for x in range(w):
                        a2 = float(A[b, c, y, x]) ** 2
                        total += a2
                        for k in range(K):
                            if f is not None:  # area average of the f x f block of U under this pixel
                                u = float(U[b, k, y * f:(y + 1) * f, x * f:(x + 1) * f].mean())
                            else:              # nearest when the layer is larger than U
                                u = float(U[b, k, y * H // h, x * H // w])
                            inside[k] += a2 * u
                for k in range(K):
                    out[b, k, c] = inside[k] / total if total > 0 else 0.0
        rows.append(out)
    return torch.cat(rows, dim=2)


def random_partition(B: int, K: int, H: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, K, (B, H, H), generator=g)
    return torch.nn.functional.one_hot(lab, K).permute(0, 3, 1, 2).float()


def test_M_matches_the_loop_reference_for_conv_and_trgb_channels(G):
    with torch.no_grad():
        s = G.random_styles(2, seed=4)
        _, feats = G.synthesis(s, "const", return_features=True)
    U = random_partition(2, 3, 16, seed=1)
    M = correlation(feats, U)
    assert M.shape == (2, 3, G.layout.size)
    ref = reference_M(feats, U)
    torch.testing.assert_close(M.double(), ref, rtol=1e-4, atol=1e-6)
    rgb = slice(G.layout.conv_size, G.layout.size)
    assert M[:, :, rgb].abs().sum() > 0                          # tRGB channels are covered too
    torch.testing.assert_close(M.sum(1), torch.ones(2, G.layout.size))   # a partition: shares sum to 1


def test_M_with_regions_coarser_than_some_layers(G):
    with torch.no_grad():
        _, feats = G.synthesis(G.random_styles(1, seed=2), "const", return_features=True)
    U = random_partition(1, 2, 8, seed=3)                         # 8x8 regions, layers up to 16x16
    torch.testing.assert_close(correlation(feats, U).double(), reference_M(feats, U), rtol=1e-4, atol=1e-6)


def test_region_weights_eq8(G):
    M = torch.tensor([[[0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 0.75, 0.5, 0.25, 0.0]]])
    torch.testing.assert_close(region_weights(M, 0), torch.tensor([[0.0, 0.0, 0.0, 0.5, 1.0]]))
    ref = torch.tensor([[2 * max(float(m), 0.5) - 1 for m in M[0, 1]]])
    torch.testing.assert_close(region_weights(M, 1), ref)
    torch.testing.assert_close(region_weights(M, [0, 1]), torch.ones(1, 5))  # union of a partition
    with pytest.raises(ValueError):
        region_weights(M, [])


def test_mean_and_layer_means(G):
    M = torch.rand(4, 3, G.layout.size)
    torch.testing.assert_close(mean_correlation(M), M.mean(0))
    lm = layer_means(M, G.layout)
    assert lm.shape == (4, 3, G.layout.n_layers)
    first = G.layout.dims[0]
    torch.testing.assert_close(lm[..., 0], M[..., :first].mean(-1))


def test_resize_regions_keeps_a_partition():
    U = random_partition(2, 4, 16, seed=0)
    for size in (4, 8, 16, 32):
        r = resize_regions(U, size)
        assert r.shape == (2, 4, size, size)
        torch.testing.assert_close(r.sum(1), torch.ones(2, size, size))


def test_code_correlation_through_a_region_model(G):
    result = cluster_generator(G, ClusteringOptions(samples=6, pixels=300, pca=None, batch=3))
    rf = result.to_regions("micro", 4).relabelled({0: "a", 1: "b", 2: "a", 3: "b"}, node("all", "a", "b"))
    model = RegionModel(G, rf)
    with torch.no_grad():
        s = G.random_styles(3, seed=9)
        M = code_correlation(model, s, batch=2)
        _, feats = G.synthesis(s, "const", return_features=True)
        U = model.hard_masks(regions=["a", "b"], size=model.size, features=feats)
    assert M.shape == (3, 2, G.layout.size)
    torch.testing.assert_close(M, correlation(feats, U))
    torch.testing.assert_close(code_correlation(model, s, regions=["all"])[:, 0], torch.ones(3, G.layout.size))
    w = region_weights(mean_correlation(M), 0)
    assert w.shape == (G.layout.size,) and (w >= 0).all() and (w <= 1).all()
