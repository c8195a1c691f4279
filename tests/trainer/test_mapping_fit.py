"""The toy mapping's fit codes (trainer/mapping_fit.py): projection, its resume, the shrunk Gaussian."""
from __future__ import annotations

import json

import pytest
import torch

from sfeditor.model.checkpoints import load_generator
from sfeditor.model.generator import Generator
from sfeditor.model.identity import generator_fingerprint, synthesis_fingerprint
from sfeditor.images.toy_encoder import ToyEncoder
from trainer.common import Cancelled, CancelToken
from trainer.generator import train_generator
from trainer.mapping_fit import (empirical_gaussian, project_batch, projected_codes, projected_mean_gaussian,
                                 shrunk_gaussian)

from test_generator_recipe import generator_cli_error, tiny_recipe

torch.set_num_threads(1)


def no_amp():
    return torch.autocast("cpu", enabled=False)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    r = tiny_recipe()
    return Generator(r.generator_config()).eval(), ToyEncoder(r.size, r.style_dim).eval()


def test_projection_lowers_every_images_error_and_batches_like_one_by_one(tiny):
    G, _ = tiny
    torch.manual_seed(1)
    with torch.no_grad():
        w_true = G.style(torch.randn(3, G.style_dim))
        x = G.synthesis(G.styles(w_true))
        w0 = w_true + 0.5 * torch.randn_like(w_true)

    def err(w):
        with torch.no_grad():
            return (G.synthesis(G.styles(w)) - x).pow(2).flatten(1).mean(1)

    w = project_batch(G, x, w0, 40, 0.05, no_amp)
    assert (err(w) < 0.8 * err(w0)).all()
    one_by_one = torch.cat([project_batch(G, x[i:i + 1], w0[i:i + 1], 40, 0.05, no_amp) for i in range(3)])
    torch.testing.assert_close(w, one_by_one, atol=1e-5, rtol=1e-4)
    # restricted to a subspace: the move stays in it, and helps less than a free one
    B = torch.linalg.qr(torch.randn(G.style_dim, 3)).Q
    w_sub = project_batch(G, x, w0, 40, 0.05, no_amp, basis=B)
    moved = w_sub - w0
    torch.testing.assert_close(moved @ B @ B.T, moved, atol=1e-5, rtol=1e-4)
    assert moved.abs().sum() > 0 and err(w_sub).sum() >= err(w).sum()
    # never worse than where it started, even with a learning rate that overshoots
    assert (err(project_batch(G, x, w0, 5, 50.0, no_amp)) <= err(w0) + 1e-7).all()


def test_projected_codes_resume_after_a_cancel(tiny, tmp_path):
    G, E = tiny
    kw = dict(domain="toy-cars", size=G.size, n=128, steps=3, lr=0.05, dev="cpu", amp=no_amp, log=lambda *a: None)
    whole = projected_codes(G, E, cache=tmp_path / "whole.pt", **kw)
    assert whole.shape == (128, G.style_dim)

    cancel, seen = CancelToken(), []

    def stop_after_first(done, total, info):
        seen.append((done, total))
        assert info["psnr_projected"] >= info["psnr_encoder"] - 1e-6
        cancel.cancel()

    with pytest.raises(Cancelled, match="batch 1/2"):
        projected_codes(G, E, cache=tmp_path / "part.pt", cancel=cancel, progress=stop_after_first, **kw)
    assert seen == [(1, 2)]
    assert len(torch.load(tmp_path / "part.pt", weights_only=True)["codes"]) == 1
    seen.clear()
    resumed = projected_codes(G, E, cache=tmp_path / "part.pt", progress=lambda d, t, i: seen.append((d, t)), **kw)
    assert seen == [(2, 2)]                                    # only the missing batch was projected
    torch.testing.assert_close(resumed, whole)
    msgs = []
    projected_codes(G, E, cache=tmp_path / "part.pt", **{**kw, "steps": 4, "log": msgs.append})
    assert any("other settings" in m for m in msgs)            # another step count is not reused
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    msgs.clear()
    again = projected_codes(G, E, cache=tmp_path / "bad.pt", **{**kw, "log": msgs.append})
    assert any("unreadable" in m for m in msgs)                # a broken cache is replaced, not fatal
    torch.testing.assert_close(again, whole)
    with torch.no_grad():
        E2 = ToyEncoder(G.size, G.style_dim).eval()             # other weights: the cache is not reused
    msgs.clear()
    projected_codes(G, E2, cache=tmp_path / "whole.pt", **{**kw, "log": msgs.append})
    assert any("other settings or weights" in m for m in msgs)


def test_shrunk_gaussian_is_usable_with_fewer_codes_than_dimensions():
    torch.manual_seed(0)
    A = torch.randn(4, 4)
    cov = A @ A.T + torch.eye(4)
    w = torch.arange(4.0) + torch.randn(20000, 4) @ torch.linalg.cholesky(cov).T
    mu, L, shrink = shrunk_gaussian(w)
    torch.testing.assert_close(mu, torch.arange(4.0), atol=0.05, rtol=0)
    torch.testing.assert_close(L @ L.T, cov, atol=0.2, rtol=0.05)
    assert 0 <= shrink < 0.01                                   # plenty of codes: hardly shrunk

    few = torch.randn(20, 64) * torch.linspace(0.5, 2.0, 64)    # 20 codes, 64 dimensions
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(torch.cov(few.T))                 # the empirical covariance is singular
    mu, L, shrink = shrunk_gaussian(few)
    assert shrink > 0.1 and torch.isfinite(L).all() and (L.diagonal() > 0).all()
    torch.testing.assert_close(mu, few.mean(0))
    with pytest.raises(ValueError, match="two codes"):
        shrunk_gaussian(torch.randn(1, 4))
    with pytest.raises(ValueError, match="non-finite"):
        shrunk_gaussian(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


def test_projected_mean_keeps_the_encoder_codes_spread():
    torch.manual_seed(0)
    enc = torch.randn(500, 3) @ torch.tensor([[1.0, 0, 0], [0, 0.5, 0], [0, 0, 0.01]])
    proj = enc + torch.tensor([2.0, 0.0, 1.0]) + 0.3 * torch.randn(500, 3)
    mu, L = projected_mean_gaussian(proj, enc)
    torch.testing.assert_close(mu, proj.mean(0))
    torch.testing.assert_close(L @ L.T, empirical_gaussian(enc)[1] @ empirical_gaussian(enc)[1].T)
    assert float((L @ L.T)[2, 2]) < 0.01                       # the direction the encoder never uses stays shut
    with pytest.raises(ValueError, match="dimensions"):
        projected_mean_gaussian(proj, enc[:, :2])


@pytest.mark.parametrize("fit", ["projected", "projected-mean"])
def test_a_projected_refit_changes_the_mapping_only(tmp_path, fit):
    quiet = dict(log=lambda *a: None)
    first = load_generator(train_generator(tiny_recipe(mapping_steps=0, mix_steps=0), tmp_path / "a", **quiet),
                           device="cpu")
    r = tiny_recipe(ae_steps=0, mapping_steps=5, mix_steps=0, init_from=str(tmp_path / "a"),
                    mapping_fit=fit, mapping_fit_images=64, mapping_project_steps=2)
    refit = load_generator(train_generator(r, tmp_path / "b", **quiet), device="cpu")
    assert synthesis_fingerprint(refit) == synthesis_fingerprint(first)
    assert generator_fingerprint(refit) != generator_fingerprint(first)
    assert (tmp_path / "b" / "projected_codes.pt").is_file()
    recs = [json.loads(s) for s in (tmp_path / "b" / "stats.jsonl").read_text().splitlines()]
    assert [x["batch"] for x in recs if x["phase"] == "mapping-fit"] == [1]
    assert sum(x["phase"] == "mapping" for x in recs) == 5


def test_generator_cli_checks_the_mapping_fit_settings(tmp_path, capsys):
    assert "whole batches of 64" in generator_cli_error(tmp_path, capsys, mapping_fit_images=10)
    assert "mapping_project_steps" in generator_cli_error(tmp_path, capsys, mapping_project_steps=0)
    # the dropped fits are refused by name
    assert "mapping_fit must be one of" in generator_cli_error(tmp_path, capsys, mapping_fit="mixture-projected-mean")
