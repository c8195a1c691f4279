"""The mixture prior over W (sfeditor/model/latent_prior.py), its file format, its fit and its training phase."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sfeditor.model.checkpoints import CheckpointError, load_generator, save_generator
from sfeditor.model.generator import Generator
from sfeditor.model.latent_prior import MixturePrior, PriorError, split_prior_state
from sfeditor.model.identity import deep_pixel_fingerprint, generator_fingerprint, synthesis_fingerprint
from trainer.generator import train_generator
from trainer.mapping_fit import fit_mixture, select_mixture

from test_generator_recipe import generator_cli_error, tiny_recipe

torch.set_num_threads(1)


def three_modes(d: int = 4, rank: int | None = None) -> MixturePrior:
    means = torch.zeros(3, d)
    means[0, 0], means[1, 1], means[2, 0] = 10.0, -10.0, -10.0
    rank = rank or d
    factors = torch.zeros(3, d, rank)
    for k, scale in enumerate((0.5, 1.0, 2.0)):
        factors[k, :rank, :rank] = scale * torch.eye(rank)
    return MixturePrior(torch.tensor([2.0, 5.0, 3.0]), means, factors)   # weights need not sum to 1


def test_samples_follow_the_mixture():
    prior = three_modes()
    z = torch.randn(40_000, 4, generator=torch.Generator().manual_seed(0))
    k, zp = prior.components(z)
    w = prior(z)
    freq = torch.bincount(k, minlength=3).float() / len(k)
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.5, 0.3]), atol=0.01, rtol=0)
    for j, scale in enumerate((0.5, 1.0, 2.0)):
        wk = w[k == j]
        torch.testing.assert_close(wk.mean(0), prior.means[j], atol=0.06, rtol=0)
        torch.testing.assert_close(wk.std(0), torch.full((4,), scale), atol=0.06 * scale, rtol=0)
        # the remapped z_0 is a standard normal inside every component, not the slice of z_0 that chose it
        assert abs(float(zp[k == j, 0].mean())) < 0.05 and abs(float(zp[k == j, 0].std()) - 1) < 0.05
    torch.testing.assert_close(zp[:, 1:], z[:, 1:])
    torch.testing.assert_close(w.mean(0), prior.mean(), atol=0.15, rtol=0)
    # deterministic and per-sample: a sample does not depend on its batch
    torch.testing.assert_close(prior(z[:5]), prior(z[:20])[:5])


def test_truncation_pulls_toward_the_samples_own_mode():
    prior = three_modes()
    z = torch.randn(1000, 4, generator=torch.Generator().manual_seed(1))
    k, _ = prior.components(z)
    torch.testing.assert_close(prior(z, truncation=0.0), prior.means[k])
    half = prior(z, truncation=0.5)
    torch.testing.assert_close(half - prior.means[k], 0.5 * (prior(z) - prior.means[k]))
    # with one global mean (the MLP mapping's truncation) the same psi would average the modes together
    assert float((half - prior.means[k]).norm(dim=1).max()) < 5.0


def test_low_rank_components_stay_in_their_span():
    prior = three_modes(d=6, rank=2)
    z = torch.randn(500, 6, generator=torch.Generator().manual_seed(2))
    k, _ = prior.components(z)
    dev = prior(z) - prior.means[k]
    assert float(dev[:, 2:].abs().max()) == 0.0 and float(dev[:, :2].abs().min()) >= 0.0
    assert prior.rank == 2 and "rank=2" in repr(prior)


@pytest.mark.parametrize("bad, match", [
    (dict(weights=torch.tensor([-1.0, 2.0, 1.0])), "non-negative"),
    (dict(weights=torch.ones(2)), r"prior.means must be \[K=2"),
    (dict(factors=torch.zeros(3, 4, 5)), "1 <= r <= D"),
    (dict(means=torch.full((3, 4), float("nan"))), "NaN"),
    (dict(weights=torch.ones(3, dtype=torch.int64)), "floating-point"),
])
def test_bad_prior_tensors_are_named(bad, match):
    good = three_modes()
    t = {"weights": good.weights, "means": good.means, "factors": good.factors, **bad}
    with pytest.raises(PriorError, match=match):
        MixturePrior(t["weights"], t["means"], t["factors"])


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(tiny_recipe().generator_config()).eval()


def generator_prior(G: Generator, k: int = 3, rank: int = 4) -> MixturePrior:
    g = torch.Generator().manual_seed(3)
    return MixturePrior(torch.rand(k, generator=g) + 0.1, torch.randn(k, G.style_dim, generator=g),
                        0.3 * torch.randn(k, G.style_dim, rank, generator=g))


def test_the_prior_samples_in_float32_under_bf16_autocast():
    """A bf16 autocast around the generator (trainers, bench, inversion) must not break or round the prior."""
    prior = three_modes(d=6, rank=3)
    z = torch.randn(32, 6, generator=torch.Generator().manual_seed(2))
    plain = prior(z, truncation=0.8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = prior(z, truncation=0.8)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)


def test_a_generator_with_a_prior_samples_from_it():
    G = tiny_generator()
    z = torch.randn(8, G.style_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mlp = G.mapping(z)
        prior = generator_prior(G)
        G.set_prior(prior)
        torch.testing.assert_close(G.mapping(z, truncation=0.7), prior(z, truncation=0.7))
        torch.testing.assert_close(G.update_w_avg(20_000, seed=0), prior.mean(), atol=0.05, rtol=0)
        assert G(z).shape == (8, 3, G.size, G.size)
        G.set_prior(None)
        torch.testing.assert_close(G.mapping(z), mlp)
    with pytest.raises(ValueError, match="dim"):
        G.set_prior(three_modes(d=G.style_dim + 1))


def test_the_prior_is_saved_loaded_and_fingerprinted_as_part_of_the_mapping(tmp_path):
    G = tiny_generator()
    plain = (synthesis_fingerprint(G), deep_pixel_fingerprint(G), generator_fingerprint(G))
    G.set_prior(generator_prior(G))
    G.update_w_avg(512)
    assert synthesis_fingerprint(G) == plain[0] and deep_pixel_fingerprint(G) == plain[1]
    assert generator_fingerprint(G) != plain[2]
    save_generator(G, tmp_path / "g.pt", half=True)
    H = load_generator(tmp_path / "g.pt", device="cpu")
    assert isinstance(H.prior, MixturePrior) and H.prior.n_components == 3 and H.prior.rank == 4
    z = torch.randn(6, G.style_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(H.mapping(z, 0.5), G.mapping(z, 0.5), atol=5e-3, rtol=5e-3)
    assert generator_fingerprint(H) == generator_fingerprint(G)


@pytest.mark.parametrize("tamper, match", [
    (lambda sd: sd.pop("prior.factors"), "missing prior.factors"),
    (lambda sd: sd.__setitem__("prior.extra", torch.ones(1)), "unexpected prior.extra"),
    (lambda sd: sd.__setitem__("prior.weights", -sd["prior.weights"]), "non-negative"),
    (lambda sd: sd.__setitem__("prior.means", torch.zeros(3, 7)), "7-dim codes"),
])
def test_a_broken_prior_in_a_file_is_refused_with_its_name(tmp_path, tamper, match):
    G = tiny_generator()
    G.set_prior(generator_prior(G))
    save_generator(G, tmp_path / "g.pt")
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    tamper(payload["state_dict"])
    if match == "7-dim codes":
        payload["state_dict"]["prior.factors"] = torch.zeros(3, 7, 2)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=match):
        load_generator(tmp_path / "bad.pt", device="cpu")


def test_split_prior_state_leaves_plain_states_alone():
    sd = tiny_generator().state_dict()
    rest, prior = split_prior_state(sd)
    assert prior is None and rest.keys() == sd.keys()


def test_fit_mixture_finds_the_modes_and_beats_one_gaussian():
    rng = np.random.default_rng(0)
    centres = np.array([[8.0] + [0] * 7, [0, 8.0] + [0] * 6, [0, 0, -8.0] + [0] * 5])
    x = np.concatenate([c + rng.normal(0, s, (700, 8)) for c, s in zip(centres, (0.5, 1.0, 1.5))])
    x = torch.from_numpy(x[rng.permutation(len(x))]).float()
    logs = []
    prior, report = fit_mixture(x, 3, rank=8, held_out=300, log=logs.append)
    found = prior.means.numpy()
    for c in centres:
        assert np.linalg.norm(found - c, axis=1).min() < 0.3
    torch.testing.assert_close(prior.weights / prior.weights.sum(), torch.full((3,), 1 / 3), atol=0.05, rtol=0)
    assert report["held_out_loglik"] > report["held_out_loglik_one_gaussian"] + 1.0
    assert report["variance_kept"] > 0.999 and "held-out log-likelihood" in logs[0]
    low, rep_low = fit_mixture(x, 3, rank=2)
    assert low.rank == 2 and rep_low["variance_kept"] < 0.5
    with pytest.raises(ValueError, match="too few"):
        fit_mixture(x[:5], 3)


def test_select_mixture_keeps_the_number_of_components_that_generalises(tmp_path):
    rng = np.random.default_rng(1)
    centres = np.array([[8.0] + [0] * 7, [0, 8.0] + [0] * 6, [0, 0, -8.0] + [0] * 5])
    modes = np.concatenate([c + rng.normal(0, 1.0, (400, 8)) for c in centres])
    modes = torch.from_numpy(modes[rng.permutation(len(modes))]).float()
    logs = []
    prior, report = select_mixture(modes, [1, 3], rank=8, held_out=200, log=logs.append, state_dir=tmp_path)
    assert prior.n_components == 3 and report["components"] == 3
    assert report["candidates"]["3"] > report["candidates"]["1"] + 1.0
    assert "3 components chosen" in logs[-1]
    # one Gaussian with few codes per component: more components only overfit
    blob = torch.from_numpy(rng.normal(0, 1.0, (400, 8))).float()
    prior, report = select_mixture(blob, [8, 1], rank=8, held_out=100, log=logs.append)
    assert prior.n_components == 1 and set(report["candidates"]) == {"1", "8"}
    # a single number behaves as fit_mixture does; choosing needs held-out codes
    one, rep = select_mixture(blob, 2, rank=4, log=logs.append)
    assert one.n_components == 2 and "candidates" not in rep
    with pytest.raises(ValueError, match="held-out"):
        select_mixture(blob, [1, 2], rank=4)
    assert not list(tmp_path.glob("mixture-em*.pt"))       # finished fits leave no EM state behind


def test_recipe_mapping_components_takes_a_number_or_a_list():
    from trainer.generator_recipe import GeneratorRecipe
    from trainer.recipe import RecipeError, build

    assert GeneratorRecipe(mapping_components=4).component_choices == (4,)
    r = build(GeneratorRecipe, {"mapping_components": [1, 8, 16]}, "test").validate()
    assert r.component_choices == (1, 8, 16)
    with pytest.raises(RecipeError, match="mapping_components"):
        build(GeneratorRecipe, {"mapping_components": ["8"]}, "test")
    with pytest.raises(ValueError, match="mapping_components"):
        GeneratorRecipe(mapping_components=[0, 4]).validate()


def test_the_mixture_mapping_phase_replaces_the_mapping_only(tmp_path):
    quiet = dict(log=lambda *a: None)
    first = load_generator(train_generator(tiny_recipe(mapping_steps=0, mix_steps=0), tmp_path / "a", **quiet),
                           device="cpu")
    r = tiny_recipe(ae_steps=0, mix_steps=0, init_from=str(tmp_path / "a"), mapping_fit="mixture",
                    mapping_fit_images=128, mapping_components=2, mapping_rank=3)
    G = load_generator(train_generator(r, tmp_path / "b", **quiet), device="cpu")
    assert isinstance(G.prior, MixturePrior) and G.prior.n_components == 2 and G.prior.rank == 3
    assert synthesis_fingerprint(G) == synthesis_fingerprint(first)
    recs = [json.loads(s) for s in (tmp_path / "b" / "stats.jsonl").read_text().splitlines()]
    fits = [x["mixture"] for x in recs if "mixture" in x]
    assert len(fits) == 1 and fits[0]["codes"] + fits[0]["held_out"] == 128
    # a finished run resumes (its checkpoint carries the prior) and writes the same generator
    again = load_generator(train_generator(r, tmp_path / "b", **quiet), device="cpu")
    assert generator_fingerprint(again) == generator_fingerprint(G)
    # the mixing fine-tune samples its codes through the prior
    mixed = train_generator(tiny_recipe(ae_steps=0, mapping_steps=0, mix_steps=1, init_from=str(tmp_path / "b"),
                                        mapping_fit="mixture", mapping_fit_images=128, mapping_components=2),
                            tmp_path / "m", **quiet)
    assert load_generator(mixed, device="cpu").prior is not None
    # a run started from it with the Gaussian fit trains the mapping MLP and drops the prior
    r2 = tiny_recipe(ae_steps=0, mapping_steps=2, mix_steps=0, init_from=str(tmp_path / "b"))
    H = load_generator(train_generator(r2, tmp_path / "c", **quiet), device="cpu")
    assert H.prior is None and synthesis_fingerprint(H) == synthesis_fingerprint(first)
    # a list of candidates: each fitted, the best on the held-out codes kept and the scores logged
    r3 = tiny_recipe(ae_steps=0, mix_steps=0, init_from=str(tmp_path / "a"), mapping_fit="mixture",
                     mapping_fit_images=128, mapping_components=[1, 2], mapping_rank=3)
    J = load_generator(train_generator(r3, tmp_path / "d", **quiet), device="cpu")
    recs = [json.loads(s) for s in (tmp_path / "d" / "stats.jsonl").read_text().splitlines()]
    fit = [x["mixture"] for x in recs if "mixture" in x][0]
    scores = fit["candidates"]
    assert set(scores) == {"1", "2"} and J.prior.n_components == fit["components"]
    assert scores[str(fit["components"])] == max(scores.values())


def test_the_mixture_fit_is_cached_and_refitted_when_stale(tmp_path):
    logs = []
    train_generator(tiny_recipe(mapping_steps=0, mix_steps=0), tmp_path / "a", log=lambda *a: None)
    kw = dict(ae_steps=0, mix_steps=0, mapping_fit_images=128, mapping_components=2, mapping_rank=3)
    plain = load_generator(train_generator(tiny_recipe(init_from=str(tmp_path / "a"), mapping_fit="mixture", **kw),
                                           tmp_path / "b", log=logs.append), device="cpu")
    assert (tmp_path / "b" / "mixture.pt").is_file() and any("EM iterations" in m for m in logs)
    # the same settings again: the cached fit is read, not fitted again
    logs.clear()
    again = load_generator(train_generator(tiny_recipe(init_from=str(tmp_path / "a"), mapping_fit="mixture", **kw),
                                           tmp_path / "b", from_phase="mapping", log=logs.append), device="cpu")
    assert any("components from" in m for m in logs) and not any("EM iterations" in m for m in logs)
    torch.testing.assert_close(again.prior.means, plain.prior.means, atol=0, rtol=0)
    # other settings make the cached fit stale, and so does a damaged file: it is fitted again
    logs.clear()
    train_generator(tiny_recipe(init_from=str(tmp_path / "a"), mapping_fit="mixture", **{**kw, "mapping_rank": 2}),
                    tmp_path / "b", from_phase="mapping", log=logs.append)
    assert any("other settings" in m for m in logs) and any("EM iterations" in m for m in logs)
    (tmp_path / "b" / "mixture.pt").write_bytes(b"not a torch file")
    logs.clear()
    train_generator(tiny_recipe(init_from=str(tmp_path / "a"), mapping_fit="mixture", **kw), tmp_path / "b",
                    from_phase="mapping", log=logs.append)
    assert any("unreadable" in m for m in logs) and any("EM iterations" in m for m in logs)


def test_generator_cli_checks_the_mixture_settings(tmp_path, capsys):
    assert "must be >= 1" in generator_cli_error(tmp_path, capsys, mapping_components=0)
    assert "needs at least 1024" in generator_cli_error(tmp_path, capsys, mapping_fit="mixture",
                                                        mapping_fit_images=512)


def test_info_command_reports_the_prior(tmp_path, capsys):
    from sfeditor.cli import main

    G = tiny_generator()
    G.set_prior(generator_prior(G))
    save_generator(G, tmp_path / "g.pt")
    assert main(["info", str(tmp_path / "g.pt")]) == 0
    assert "mixture prior, 3 Gaussians of rank 4" in capsys.readouterr().out


def test_fit_mixture_reports_progress_stops_and_resumes_to_the_same_fit(tmp_path):
    from sfeditor.jobs import CancelToken, Cancelled

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 6, (4, 6))
    x = torch.from_numpy(np.concatenate([c + rng.normal(0, 1, (150, 6)) for c in centres])[rng.permutation(600)])
    quiet = lambda *a: None                                               # noqa: E731
    whole, rep = fit_mixture(x, 4, rank=6, seed=3, log=quiet, chunk=1000)
    assert rep["iterations"] >= 3                                         # enough EM iterations to interrupt

    token, seen = CancelToken(), []

    def progress(done, total, info):
        seen.append((done, total, info["lower_bound"]))
        if done >= 2:
            token.cancel()
    state = tmp_path / "em.pt"
    with pytest.raises(Cancelled, match="EM iteration 2/200"):
        fit_mixture(x, 4, rank=6, seed=3, log=quiet, chunk=1, progress=progress, cancel=token, state=state)
    assert [s[0] for s in seen] == [1, 2] and seen[1][2] >= seen[0][2] and state.is_file()
    logs = []
    resumed, rep2 = fit_mixture(x, 4, rank=6, seed=3, log=logs.append, chunk=1, state=state)
    assert "resuming the EM fit at iteration 2" in logs[0] and not state.exists()
    assert rep2["iterations"] == rep["iterations"]
    for a, b in zip(resumed.tensors().values(), whole.tensors().values()):
        torch.testing.assert_close(a, b)
    # a state file of another fit (seed) is not resumed from; a broken one neither
    token = CancelToken()
    with pytest.raises(Cancelled):
        fit_mixture(x, 4, rank=6, seed=4, log=quiet, chunk=1, progress=progress, cancel=token, state=state)
    logs.clear()
    fit_mixture(x, 4, rank=6, seed=3, log=logs.append, chunk=1, state=state)
    assert not any("resuming" in m for m in logs) and not state.exists()
    state.write_bytes(b"junk")
    logs.clear()
    fit_mixture(x, 4, rank=6, seed=3, log=logs.append, state=state)
    assert "unreadable" in logs[0]
