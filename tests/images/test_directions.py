"""GANSpace PCA directions (orthonormal, cached) and InterFaceGAN-style direction files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sfeditor import Generator
from sfeditor.images import directions as dirs
from sfeditor.images.directions import (DirectionError, apply_direction, load_direction, parse_layers, pca_directions,
                                 save_direction, validate_direction)

TINY = dict(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})


@pytest.fixture(scope="module")
def G():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Generator(**TINY).eval()


def test_pca_orthonormal_sorted_and_cached(G, tmp_path, monkeypatch):
    pcs = pca_directions(G, n_components=10, n_samples=2000, cache_dir=tmp_path)
    assert pcs.components.shape == (10, 32) and pcs.components.dtype == np.float32 and not pcs.from_cache
    assert np.allclose(pcs.components @ pcs.components.T, np.eye(10), atol=1e-5)
    assert np.all(np.diff(pcs.stdev) <= 1e-6) and np.all(pcs.stdev > 0)
    # the top component explains more variance of fresh samples than a random direction
    with torch.no_grad():
        w = G.sample_w(2000, seed=99).numpy()
    wc = w - pcs.mean
    rnd = np.random.default_rng(0).normal(size=32)
    rnd /= np.linalg.norm(rnd)
    assert (wc @ pcs.components[0]).var() > 2 * (wc @ rnd).var()
    assert len(list(tmp_path.glob("pca-*.npz"))) == 1

    import sklearn.decomposition

    monkeypatch.setattr(sklearn.decomposition, "PCA", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    again = pca_directions(G, n_components=10, n_samples=2000, cache_dir=tmp_path)
    assert again.from_cache and np.array_equal(again.components, pcs.components)
    assert np.allclose(again.direction(0), pcs.components[0] * pcs.stdev[0])
    monkeypatch.undo()

    # a damaged cache file is recomputed (and rewritten), not trusted
    path = next(tmp_path.glob("pca-*.npz"))
    path.write_bytes(b"PK\x03\x04 broken zip")
    fresh = pca_directions(G, n_components=10, n_samples=2000, cache_dir=tmp_path)
    assert not fresh.from_cache and np.allclose(fresh.components, pcs.components, atol=1e-5)
    # another generator -> another entry
    other = Generator(**TINY).eval()
    pca_directions(other, n_components=10, n_samples=2000, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("pca-*.npz"))) == 2
    with pytest.raises(ValueError):
        pca_directions(G, n_components=33, cache_dir=False)


def test_direction_files_validated(G, tmp_path):
    def write(name, arr, **kw):
        p = tmp_path / name
        np.save(p, arr, **kw)
        return p

    d = np.random.default_rng(0).normal(size=32).astype(np.float32)
    assert np.array_equal(load_direction(write("ok.npy", d), G), d)
    assert load_direction(write("ifg.npy", d[None].astype(np.float64)), G).shape == (32,)      # InterFaceGAN [1, 512]
    per_layer = np.tile(d, (G.n_latent, 1))
    assert load_direction(write("pl.npy", per_layer), G).shape == (G.n_latent, 32)
    assert np.allclose(np.linalg.norm(load_direction(tmp_path / "ok.npy", G, normalize=True)), 1.0)

    cases = {
        "short.npy": (np.ones(31, np.float32), "has 31 values"),
        "rows.npy": (np.ones((G.n_latent + 1, 32), np.float32), "needs 8 rows"),
        "cube.npy": (np.ones((2, 2, 32), np.float32), "expected"),
        "nan.npy": (np.r_[d[:-1], np.nan].astype(np.float32), "NaN"),
        "zero.npy": (np.zeros(32, np.float32), "all values are zero"),
        "int.npy": (np.ones(32, np.int64), "floating-point"),
        "str.npy": (np.array(["a"] * 32), "numeric"),
    }
    for name, (arr, msg) in cases.items():
        with pytest.raises(DirectionError, match=msg):
            load_direction(write(name, arr), G)
    with pytest.raises(DirectionError, match="pickled"):
        load_direction(write("obj.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True), G)
    np.savez(tmp_path / "arch.npz", a=d)
    (tmp_path / "arch.npy").write_bytes((tmp_path / "arch.npz").read_bytes())
    with pytest.raises(DirectionError, match="npz"):
        load_direction(tmp_path / "arch.npy", G)
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DirectionError, match="not a readable"):
        load_direction(tmp_path / "junk.npy", G)
    with pytest.raises(FileNotFoundError):
        load_direction(tmp_path / "missing.npy", G)
    save_direction(tmp_path / "saved.npy", torch.from_numpy(d))
    assert np.array_equal(load_direction(tmp_path / "saved.npy", w_dim=32), d)


def test_apply_direction(G):
    w = torch.randn(2, G.n_latent, G.style_dim)
    d = np.zeros(32, np.float32)
    d[3] = 1.0
    out = apply_direction(G, w, d, 2.5)
    assert out.shape == w.shape and torch.allclose(out - w, 2.5 * torch.from_numpy(d).expand_as(w))
    assert torch.equal(apply_direction(G, w, d, 0.0), w)
    out = apply_direction(G, w, d, 1.0, layers=[0, 1, 2])
    moved = (out - w).abs().sum(-1)[0]
    assert (moved[:3] > 0).all() and (moved[3:] == 0).all()
    w1 = torch.randn(2, G.style_dim)
    assert apply_direction(G, w1, d, 1.0).shape == (2, G.style_dim)
    assert apply_direction(G, w1, d, 1.0, layers=[1]).shape == (2, G.n_latent, G.style_dim)
    per = np.zeros((G.n_latent, 32), np.float32)
    per[-1, 0] = 1
    out = apply_direction(G, w, per, 3.0)
    assert torch.equal(out[:, :-1], w[:, :-1]) and torch.allclose(out[:, -1, 0], w[:, -1, 0] + 3)
    with pytest.raises(DirectionError):
        apply_direction(G, w, np.zeros(32, np.float32), 1.0)
    with pytest.raises(ValueError):
        apply_direction(G, w, d, 1.0, layers=[99])
    with pytest.raises(ValueError):
        apply_direction(G, torch.randn(2, 3, 32), d, 1.0)


def test_parse_layers():
    assert parse_layers("0-2,5", 8) == [0, 1, 2, 5]
    assert parse_layers(None, 8) is None and parse_layers("all", 8) is None
    with pytest.raises(ValueError):
        parse_layers("3-1", 8)
    with pytest.raises(ValueError):
        parse_layers("9", 8)
    with pytest.raises(DirectionError):
        validate_direction(np.ones((3, 4), np.float32), 32)
    assert dirs.default_directions_cache().name == "directions"
