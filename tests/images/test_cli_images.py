"""``invert`` / ``edit`` / ``transfer`` end to end on a tiny generator; ``sfeditor-train encoder`` on a tiny one."""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import torch

from sfeditor import Generator
from sfeditor.model.checkpoints import save_generator
from sfeditor.cli_images import add_parsers
from sfeditor.fusion.fusion_net import FusionNetConfig
from sfeditor.fusion.hierarchy import FusionHierarchy
from sfeditor.regions.tree import PAPER_TREES
from sfeditor.images.intake import read_image
from sfeditor.images.imageio import save_png, to_uint8
from sfeditor.images.inversion import load_latents
from sfeditor.model.style_code import StyleCode
from sfeditor.images.toy_encoder import load_toy_encoder

TINY = dict(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})


def run(argv) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cli")
    G = Generator(**TINY).eval()
    save_generator(G, d / "g.pt")
    with torch.no_grad():
        imgs = to_uint8(G.synthesis(G.styles(G.sample_w(2, seed=3, truncation=0.5))))
    save_png(d / "a.png", imgs[0])
    wide = cv2.resize(imgs[1], (48, 40))
    cv2.imwrite(str(d / "b.jpg"), wide[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    (d / "bad.png").write_bytes(b"garbage")
    torch.manual_seed(1)
    h = FusionHierarchy.with_random_nets(PAPER_TREES["faces"], FusionNetConfig.for_layout(G.layout),
                                         layout=G.layout)
    h.save(d / "h.pt")
    return d, G


def common(d):
    return ["--model", str(d / "g.pt"), "--device", "cpu"]


def inv_opts(d):
    return ["--steps", "6", "--no-encoder", "--cache-dir", str(d / "cache"), "-q"]


def test_invert_edit_transfer(files, capsys):
    d, G = files
    out = d / "inv"
    rc = run(["invert", str(d / "a.png"), str(d / "bad.png"), str(d / "b.jpg"), "--out", str(out)]
             + common(d) + inv_opts(d))
    assert rc == 1                                         # the garbage file is reported, the others done
    err = capsys.readouterr().err
    assert "bad.png" in err and "not an image" in err
    for stem in ("a", "b"):
        assert read_image(out / f"{stem}.png").shape == (32, 32, 3)
        assert read_image(out / f"{stem}-input.png").shape == (32, 32, 3)
        assert StyleCode.load(out / f"{stem}.pt").layout.dims == G.layout.dims
        w, _, meta = load_latents(out / f"{stem}-wplus.pt", G)
        assert w.shape == (1, G.n_latent, G.style_dim) and meta["steps"] == 6
    assert load_latents(out / "b-wplus.pt")[2]["alignment"] == "center"
    capsys.readouterr()
    assert run(["invert", str(d / "a.png"), "--out", str(out)] + common(d) + inv_opts(d)) == 0
    assert "cache hit" in capsys.readouterr().out

    direction = np.random.default_rng(0).normal(size=32).astype(np.float32)
    np.save(d / "dir.npy", direction)
    wfile = str(out / "a-wplus.pt")
    assert run(["edit", wfile, "--direction", str(d / "dir.npy"), "--strength", "2", "--out", str(d / "e1.png"),
                "--compare"] + common(d)) == 0
    assert read_image(d / "e1-compare.png", min_side=1).shape[1] > 2 * 32
    assert run(["edit", wfile, "--direction", str(d / "dir.npy"), "--strength", "2", "--regions", "hair,eyes",
                "--hierarchy", str(d / "h.pt"), "--layers", "0-3", "--out", str(d / "e2.png"), "--compare"]
               + common(d)) == 0
    assert read_image(d / "e2.png").shape == (32, 32, 3)
    assert run(["edit", wfile, "--pca", "0", "--pca-components", "4", "--pca-samples", "500", "--strength", "1",
                "--cache-dir-directions", str(d / "dirs"), "--out", str(d / "e3.png")] + common(d)) == 0
    with pytest.raises(ValueError, match="needs --hierarchy"):
        run(["edit", wfile, "--pca", "0", "--strength", "1", "--regions", "hair", "--out", str(d / "x.png"),
             "--cache-dir-directions", str(d / "dirs"), "--pca-components", "4", "--pca-samples", "500"] + common(d))
    with pytest.raises(ValueError, match="exactly one"):
        run(["edit", wfile, "--strength", "1"] + common(d))
    with pytest.raises(ValueError, match="S-space style code"):
        run(["edit", str(out / "a.pt"), "--pca", "0", "--strength", "1"] + common(d))

    assert run(["transfer", str(d / "b.jpg"), wfile, "--hierarchy", str(d / "h.pt"), "--out", str(d / "t.png"),
                "--compare"] + common(d) + inv_opts(d)) == 0
    assert read_image(d / "t.png").shape == (32, 32, 3)
    assert read_image(d / "t-compare.png", min_side=1).shape[1] > 3 * 32
    with pytest.raises(ValueError, match="no region 'beard'"):
        run(["transfer", wfile, wfile, "--hierarchy", str(d / "h.pt"), "--region", "beard",
             "--out", str(d / "t2.png")] + common(d))


def test_train_encoder_resumes(files, tmp_path, monkeypatch):
    from trainer.common import Cancelled, CancelToken
    from trainer.encoder import EncoderRecipe, add_parsers as add_trainer_parsers, train_encoder

    d, G = files
    monkeypatch.chdir(tmp_path)                    # no runs/generator-<domain>/ defaults from the checkout
    logs = []
    recipe = EncoderRecipe(domain="toy-faces", generator=str(d / "g.pt"), init="none", steps=3, batch=2,
                           latent_batch=2, eval_images=2, eval_every=2, checkpoint_every=1, threads=1)
    path = train_encoder(recipe, tmp_path / "run", log=logs.append)
    E = load_toy_encoder(path, G=G)
    assert E.size == 32 and E.style_dim == 32 and "held-out" in logs[-1]
    recipe.steps = 5
    train_encoder(recipe, tmp_path / "run", log=logs.append)
    assert any("resuming" in m and "step 3" in m for m in logs)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled, match="stopped at encoder step 1"):
        train_encoder(EncoderRecipe(domain="toy-faces", generator=str(d / "g.pt"), init="none", steps=4, batch=2,
                                    latent_batch=2, eval_images=2), tmp_path / "run2", cancel=token, log=logs.append)
    assert (tmp_path / "run2" / "checkpoint.pt").exists()
    # fine-tuning from an existing encoder file
    train_encoder(EncoderRecipe(domain="toy-faces", generator=str(d / "g.pt"), init=str(path), steps=1, batch=2,
                                latent_batch=2, eval_images=2), tmp_path / "run3", log=logs.append)
    assert any("fine-tuning" in m for m in logs)
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    add_trainer_parsers(sub)
    args = p.parse_args(["encoder", "--recipe", "encoder-finetune", "--domain", "toy-cars", "--steps-scale", "0.5"])
    assert args.steps_scale == 0.5 and callable(args.func)
    from trainer.recipe import flag_overrides, load_recipe

    shipped = load_recipe(args.recipe, EncoderRecipe)                 # the shipped TOML recipe, by name
    mine = load_recipe(args.recipe, EncoderRecipe, overrides=flag_overrides(args))
    assert mine.domain == "toy-cars" and mine.steps == shipped.steps and mine.lr == shipped.lr


def test_region_edit_defaults_to_the_shipped_hierarchy(tmp_path):
    """``--model toy-faces`` without ``--hierarchy``: the shipped toy-faces hierarchy is used."""
    from sfeditor.model.checkpoints import load_generator
    from sfeditor.images.inversion import save_latents

    G = load_generator("toy-faces", device="cpu")
    with torch.no_grad():
        w = G.mapping(torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(3)), 0.7)
    save_latents(tmp_path / "w.pt", w[:, None].repeat(1, G.n_latent, 1))
    direction = np.random.default_rng(0).normal(size=G.style_dim).astype(np.float32)
    np.save(tmp_path / "dir.npy", direction)
    assert run(["edit", str(tmp_path / "w.pt"), "--model", "toy-faces", "--device", "cpu", "--direction",
                str(tmp_path / "dir.npy"), "--strength", "3", "--regions", "hair", "--compare",
                "--out", str(tmp_path / "e.png")]) == 0
    from sfeditor.images.editing import render

    assert read_image(tmp_path / "e-compare.png", min_side=1).shape[1] > 3 * G.size
    with torch.no_grad():
        original = to_uint8(render(G, w[:, None].repeat(1, G.n_latent, 1)))[0].astype(int)
    edited = read_image(tmp_path / "e.png").astype(int)
    assert np.abs(original - edited).mean() > 0.5          # the hair edit changed the image


def test_inversion_flags_override_the_generator_preset(monkeypatch):
    """`sfeditor invert` starts from the generator's preset; only the flags a user gives replace it."""
    import sfeditor.images.inversion as inv
    from sfeditor.cli import build_parser
    from sfeditor.cli_images import _settings

    monkeypatch.setattr(inv, "bf16_is_fast", lambda device: True)
    small = type("G", (), {"size": 64, "device": torch.device("cpu")})()
    p = build_parser()
    st = _settings(p.parse_args(["invert", "x.png", "--model", "toy-cars"]), small)
    assert (st.steps, st.msssim_weight, st.w_phase, st.bf16) == (500, 0.0, 0.0, True)
    st = _settings(p.parse_args(["invert", "x.png", "--model", "toy-faces", "--steps", "40", "--msssim", "0.2",
                                 "--no-bf16", "--w-phase", "0.3"]), small)
    assert (st.steps, st.msssim_weight, st.w_phase, st.bf16, st.lr) == (40, 0.2, 0.3, False, 0.1)


def test_invert_takes_an_e4e_checkpoint_as_encoder(files, capsys):
    """--encoder accepts an official e4e file; one for another generator is refused with a clear message."""
    d, G = files
    torch.save({"state_dict": {"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3)},
                "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 1024}, "latent_avg": torch.zeros(18, 512)},
               d / "e4e.pt")
    args = ["invert", str(d / "a.png"), "--out", str(d / "inv-e4e")] + common(d) + \
        ["--steps", "2", "--encoder", str(d / "e4e.pt"), "--no-cache", "-q"]
    from sfeditor.cli import main

    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "18 x 512" in err and "generator needs" in err


def test_photo_domain_of_an_installed_model(files, tmp_path, monkeypatch):
    """`-m NAME` of a model installed with `sfeditor models` frames photos for its domain (cars: letterbox)."""
    from sfeditor.cli import build_parser
    from sfeditor.cli_images import _domain, _prepare
    from sfeditor.model import registry as M

    d, G = files
    monkeypatch.setenv("SFEDITOR_CACHE", str(tmp_path / "cache"))
    M.register("my-cars", d / "g.pt", kind="generator", domain="car")
    p = build_parser()
    args = p.parse_args(["invert", "x.png", "--model", "my-cars"])
    assert _domain(args) == "car" and _domain(p.parse_args(["invert", "x.png", "--model", str(d / "g.pt")])) is None
    assert _domain(p.parse_args(["invert", "x.png", "--model", "my-cars", "--domain", "church"])) == "church"
    prepared = _prepare(args, G, str(d / "b.jpg"))            # a 48 x 40 photo -> 4:3 between black bars
    assert prepared.method == "letterbox" and prepared.image[:4].max() == 0 and prepared.image[-4:].max() == 0
