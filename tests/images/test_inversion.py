"""Projector (W+ optimisation), MS-SSIM, cache, cancel, encoders, e4e validation, w+ files."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from editor_core_helpers import small_generator

from sfeditor import Generator
from sfeditor.images.e4e import E4EUnsupported, load_e4e, read_e4e
from sfeditor.images.inversion import InversionCache, InversionSettings, Projector, load_latents, lr_schedule, ms_ssim, noise_regularization, save_latents, ssim
from sfeditor.images.metrics import psnr
from sfeditor.jobs import Cancelled, CancelToken
from sfeditor.model.style_code import StyleCode
from sfeditor.images.toy_encoder import ToyEncoder, load_toy_encoder, save_toy_encoder

FAST = dict(steps=150, lr=0.1, msssim_weight=0.0, w_phase=0.5)   # ~43 dB on this target


@pytest.fixture(scope="module")
def G():
    torch.set_num_threads(1)
    return small_generator()


@pytest.fixture(scope="module")
def target(G):
    with torch.no_grad():
        return G.synthesis(G.styles(G.sample_w(1, seed=4, truncation=0.5)))


# ----------------------------------------------------------------- metrics
def _smooth(seed: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size // 8, size // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_ssim_basics():
    a = _smooth(0, 64)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    assert torch.allclose(ms_ssim(a, a), torch.ones(2), atol=1e-5)      # 3 scales at 64 px
    b = a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    assert (ms_ssim(a, b) < 0.99).all() and (ssim(a, b) < ssim(a, a)).all()
    assert ms_ssim(a[:, :, :20, :20], b[:, :, :20, :20]).shape == (2,)  # tiny pictures still work


@pytest.mark.skipif(importlib.util.find_spec("pytorch_msssim") is None, reason="pytorch-msssim not installed")
def test_ssim_matches_pytorch_msssim():
    import pytorch_msssim

    a, b = _smooth(2, 192), _smooth(3, 192)
    b = 0.6 * a + 0.4 * b
    ref_s = pytorch_msssim.ssim((a + 1) / 2, (b + 1) / 2, data_range=1.0, size_average=False)
    ref_m = pytorch_msssim.ms_ssim((a + 1) / 2, (b + 1) / 2, data_range=1.0, size_average=False)
    assert torch.allclose(ssim(a, b), ref_s, atol=1e-4)
    assert torch.allclose(ms_ssim(a, b), ref_m, atol=1e-4)


def test_lr_schedule_and_noise_regulariser():
    assert lr_schedule(0.0, 0.1, 0.05, 0.25) == 0.0
    assert lr_schedule(0.5, 0.1, 0.05, 0.25) == pytest.approx(0.1)
    assert lr_schedule(0.99, 0.1, 0.05, 0.25) < 0.001
    g = torch.Generator().manual_seed(0)
    white = [torch.randn(1, 1, 64, 64, generator=g), torch.randn(1, 1, 32, 32, generator=g)]
    smooth = [torch.nn.functional.interpolate(torch.randn(1, 1, 8, 8, generator=g), size=(32, 32), mode="bilinear")]
    smooth = [s / s.std() for s in smooth]
    assert float(noise_regularization(white)) < 0.01 < float(noise_regularization(smooth))


# --------------------------------------------------------------- projector
def test_projector_reaches_high_psnr(G, target, tmp_path):
    losses = []
    res = Projector(G, InversionSettings(**FAST), cache=tmp_path).invert(
        target, progress=lambda s, t, info: losses.append(info["loss"]))
    assert res.w_plus.shape == (1, G.n_latent, G.style_dim) and not res.from_cache
    assert len(losses) == 150 and min(losses[-20:]) < 0.05 * losses[0]
    assert res.init_psnr < 20 < 30 < res.psnr
    with torch.no_grad():
        assert float(psnr(res.render(G), target)) == pytest.approx(res.psnr, abs=1e-3)


def test_cache_hit_is_identical_and_skips_optimisation(G, target, tmp_path, monkeypatch):
    st = InversionSettings(steps=8, lr=0.05)
    first = Projector(G, st, cache=tmp_path).invert(target)
    proj = Projector(G, st, cache=tmp_path)
    monkeypatch.setattr(proj, "_optimise", lambda *a, **k: pytest.fail("optimised despite a cache hit"))
    again = proj.invert(target)
    assert again.from_cache and torch.equal(again.w_plus, first.w_plus) and again.psnr == first.psnr
    monkeypatch.undo()
    # other settings, other pixels or another generator: a miss
    assert not Projector(G, InversionSettings(steps=9, lr=0.05), cache=tmp_path).invert(target).from_cache
    assert not Projector(G, st, cache=tmp_path).invert(target.flip(-1)).from_cache
    key = proj.cache_key(target)
    path = InversionCache(tmp_path).path(key)
    path.write_bytes(b"\x00garbage, not a torch file")                # corrupt entry: ignored, rewritten
    res = Projector(G, st, cache=tmp_path).invert(target)
    assert not res.from_cache and torch.allclose(res.w_plus, first.w_plus)
    assert Projector(G, st, cache=tmp_path).invert(target).from_cache
    assert Projector(G, st, cache=False).cache is None


def test_uint8_input_and_size_check(G, tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    res = Projector(G, InversionSettings(steps=3), cache=tmp_path).invert(img)
    assert res.steps == 3 and np.isfinite(res.psnr)
    with pytest.raises(ValueError, match="align or crop"):
        Projector(G, InversionSettings(steps=3), cache=False).invert(np.zeros((40, 40, 3), np.uint8))


def test_cancel_mid_run(G, target, tmp_path):
    token = CancelToken()

    def progress(step, total, info):
        if step == 5:
            token.cancel()

    proj = Projector(G, InversionSettings(steps=100), cache=tmp_path)
    with pytest.raises(Cancelled) as e:
        proj.invert(target, progress=progress, cancel=token)
    assert e.value.partial.steps == 5 and e.value.partial.w_plus.shape == (1, G.n_latent, G.style_dim)
    assert not InversionCache(tmp_path).path(proj.cache_key(target)).exists()   # partial results not cached


def test_noise_optimisation_and_w_space(G, target):
    with torch.no_grad():      # give the noise inputs some influence
        for layer in G.conv_layers:
            layer.noise.weight.fill_(0.1)
    try:
        res = Projector(G, InversionSettings(steps=6, optimize_noise=True), cache=False).invert(target)
        assert res.noise is not None and len(res.noise) == G.num_noises
        for n in res.noise:
            assert abs(float(n.mean())) < 1e-4 and float(n.std()) == pytest.approx(1.0, abs=1e-3)
        res = Projector(G, InversionSettings(steps=4, space="w"), cache=False).invert(target)
        assert torch.allclose(res.w_plus, res.w_plus[:, :1].expand_as(res.w_plus))
    finally:
        with torch.no_grad():
            for layer in G.conv_layers:
                layer.noise.weight.zero_()


def test_encoder_initialisation_and_files(G, target, tmp_path):
    torch.manual_seed(1)
    E = ToyEncoder(size=32, style_dim=32, width=8).eval()
    torch.save(E.state_dict(), tmp_path / "raw.pt")                       # what the generator run writes
    save_toy_encoder(E, tmp_path / "wrapped.pt", meta={"domain": "tiny"})
    for name in ("raw.pt", "wrapped.pt"):
        E2 = load_toy_encoder(tmp_path / name, G=G)
        assert E2.config == E.config
        with torch.no_grad():
            assert torch.equal(E2(target), E(target))
    save_toy_encoder(E, tmp_path / "half.pt", half=True)
    assert torch.load(tmp_path / "half.pt", weights_only=True)["state_dict"]["head.3.weight"].dtype == torch.float16
    with torch.no_grad():
        torch.testing.assert_close(load_toy_encoder(tmp_path / "half.pt")(target), E(target), atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="generator uses"):
        load_toy_encoder(tmp_path / "raw.pt", G=Generator(size=32, style_dim=16, n_mlp=1,
                                                           channels={4: 8, 8: 8, 16: 8, 32: 8}))
    (tmp_path / "bad.pt").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="not a readable encoder"):
        load_toy_encoder(tmp_path / "bad.pt")
    proj = Projector(G, InversionSettings(steps=0), encoder=E, cache=tmp_path)
    res = proj.invert(target)
    with torch.no_grad():
        want = E(target)[:, None].expand(1, G.n_latent, G.style_dim)
    assert torch.allclose(res.w_plus, want, atol=1e-6)
    assert proj.cache_key(target) != Projector(G, InversionSettings(steps=0), cache=tmp_path).cache_key(target)


def test_latent_files(G, tmp_path):
    w = torch.randn(2, G.n_latent, G.style_dim)
    save_latents(tmp_path / "a-wplus.pt", w, None, {"psnr": 31.0})
    w2, noise, meta = load_latents(tmp_path / "a-wplus.pt", G)
    assert torch.equal(w, w2) and noise is None and meta["psnr"] == 31.0
    G.styles(w[:1]).save(tmp_path / "code.pt")
    with pytest.raises(ValueError, match="S-space style code"):
        load_latents(tmp_path / "code.pt")
    with pytest.raises(ValueError, match="generator needs"):
        load_latents(tmp_path / "a-wplus.pt", Generator(size=16, style_dim=32, n_mlp=1,
                                                          channels={4: 8, 8: 8, 16: 8}))
    assert isinstance(StyleCode.load(tmp_path / "code.pt"), StyleCode)


def test_e4e_checkpoints_validated(tmp_path):
    ok = {"state_dict": {"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3),
                         "decoder.style.1.weight": torch.zeros(512, 512)},
          "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "checkpoint_path": None},
          "latent_avg": torch.zeros(18, 512)}
    torch.save(ok, tmp_path / "e4e.pt")
    info = read_e4e(tmp_path / "e4e.pt")
    assert (info.encoder_type, info.resolution, info.n_styles, info.latent_avg_shape) == \
        ("Encoder4Editing", 1024, 18, (18, 512))
    with pytest.raises(ValueError, match="not an IR-SE-50 Encoder4Editing"):     # a truncated encoder
        load_e4e(tmp_path / "e4e.pt")
    torch.save({**ok, "opts": {"encoder_type": "ResNetBackboneEncoder", "stylegan_size": 1024}},
               tmp_path / "resnet.pt")
    with pytest.raises(E4EUnsupported, match="ResNetBackboneEncoder"):
        load_e4e(tmp_path / "resnet.pt")
    torch.save({"state_dict": {}, "opts": {}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no encoder"):
        read_e4e(tmp_path / "empty.pt")
    torch.save({"g_ema": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an e4e checkpoint"):
        read_e4e(tmp_path / "other.pt")
    torch.save({"state_dict": ok["state_dict"], "opts": {"stylegan_size": 1024}, "latent_avg": torch.zeros(5, 512)},
               tmp_path / "bad_avg.pt")
    with pytest.raises(ValueError, match="latent_avg"):
        read_e4e(tmp_path / "bad_avg.pt")
    torch.save({"state_dict": ok["state_dict"], "opts": _Opaque()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="not a readable"):                # arbitrary objects never unpickled
        read_e4e(tmp_path / "pickled.pt")
    with pytest.raises(FileNotFoundError):
        read_e4e(tmp_path / "missing.pt")


def _e4e_state(n_styles: int, seed: int = 0) -> dict:
    """Random weights for an e4e encoder; every tensor is a view of one storage, so the file stays small."""
    from sfeditor.images.e4e import Encoder4Editing

    want = Encoder4Editing(n_styles).state_dict()
    base = torch.randn(max(v.numel() for v in want.values()), generator=torch.Generator().manual_seed(seed)) * 0.05
    out = {}
    for k, v in want.items():
        if k.endswith("num_batches_tracked"):
            out[k] = v
        elif k.endswith("running_var") or k.endswith("res_layer.0.weight") or k.endswith("res_layer.4.weight"):
            out[k] = torch.ones_like(v)
        else:
            out[k] = base[:v.numel()].view(v.shape)
    return out


def test_e4e_encoder_runs_and_matches_its_architecture(tmp_path):
    """An e4e/pSp checkpoint loads strictly, predicts w+ = w0 + deltas + latent_avg, and feeds the projector."""
    from sfeditor.images.e4e import IR_SE_50_UNITS, Encoder4Editing

    torch.manual_seed(0)
    # official key layout (IR-SE-50, FPN laterals, gradual style blocks)
    keys = set(Encoder4Editing(4).state_dict())
    assert len(IR_SE_50_UNITS) == 24
    for k in ("input_layer.0.weight", "input_layer.2.weight", "body.3.shortcut_layer.0.weight",
              "body.0.res_layer.5.fc1.weight", "body.23.res_layer.3.weight", "styles.0.convs.6.weight",
              "styles.3.convs.8.weight", "styles.0.linear.weight", "latlayer1.weight", "latlayer2.bias"):
        assert k in keys, k
    assert "body.0.shortcut_layer.0.weight" not in keys                  # same width: max-pool shortcut

    # every branch (coarse, middle, fine) with a narrow w to keep the test light
    net = Encoder4Editing(10, w_dim=32).eval()
    flat = Encoder4Editing(10, w_dim=32, deltas=False).eval()
    flat.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        a, b = net(x), flat(x)
    assert a.shape == (1, 10, 32)
    assert torch.allclose(a[:, 1:], a[:, :1] + b[:, 1:], atol=1e-5) and torch.allclose(a[:, 0], b[:, 0])

    sd = _e4e_state(4)
    avg = torch.randn(4, 512)
    torch.save({"state_dict": {**{f"encoder.{k}": v for k, v in sd.items()}, "decoder.style.1.weight": torch.zeros(1)},
                "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 8}, "latent_avg": avg},
               tmp_path / "e4e.pt")
    enc = load_e4e(tmp_path / "e4e.pt")
    ref = Encoder4Editing(4).eval()
    ref.load_state_dict(sd)
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expect = ref(torch.nn.functional.interpolate(img, size=(256, 256), mode="bilinear", align_corners=False))
    assert torch.allclose(enc(img), expect + avg[None], atol=1e-4)
    with pytest.raises(ValueError, match="generator needs"):
        load_e4e(tmp_path / "e4e.pt", G=small_generator())
    fake = type("G", (), {"n_latent": 4, "style_dim": 512})()
    assert load_e4e(tmp_path / "e4e.pt", G=fake) is not None
    sd["styles.0.linear.bias"] = torch.zeros(7)
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in sd.items()},
                "opts": {"encoder_type": "GradualStyleEncoder", "stylegan_size": 8}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="has shape"):
        load_e4e(tmp_path / "bad.pt")


class _Opaque:
    """A class torch.load(weights_only=True) must refuse to rebuild."""


def test_cancel_token_protocol():
    t = CancelToken()
    assert not t.requested
    t.requested = True
    assert t.requested
    t.reset()
    assert not t.requested


def test_default_settings_follow_the_generator_and_domain(monkeypatch):
    """Small generators get the measured preset (domain steps, no MS-SSIM); flags given win; big ones keep defaults."""
    import sfeditor.images.inversion as inv

    monkeypatch.setattr(inv, "bf16_is_fast", lambda device: False)
    small = type("G", (), {"size": 64, "device": torch.device("cpu")})()
    big = type("G", (), {"size": 1024, "device": torch.device("cpu")})()
    faces = InversionSettings.for_generator(small, "toy-faces")
    cars = InversionSettings.for_generator(small, "toy-cars")
    other = InversionSettings.for_generator(small, None)
    assert (faces.steps, cars.steps, other.steps) == (300, 500, inv.SMALL_GENERATOR_STEPS)
    assert faces.msssim_weight == 0.0 and faces.w_phase == 0.0 and faces.lr == 0.1 and not faces.bf16
    assert (cars.lr, other.lr) == (0.2, 0.1)       # toy-cars v3 inverts best at 0.2 (BENCHMARKS.md)
    assert InversionSettings.for_generator(big, "toy-faces") == InversionSettings()
    mine = InversionSettings.for_generator(small, "toy-cars", steps=7, msssim_weight=0.3, bf16=True)
    assert (mine.steps, mine.msssim_weight, mine.bf16, mine.lr) == (7, 0.3, True, 0.2)
    assert InversionSettings.for_generator(small, "toy-cars", lr=0.05).lr == 0.05
    monkeypatch.setattr(inv, "bf16_is_fast", lambda device: True)
    assert InversionSettings.for_generator(small, "toy-faces").bf16
    assert not InversionSettings.for_generator(big).bf16


def test_bf16_is_fast_answers_for_every_device_kind():
    from sfeditor.images.inversion import bf16_is_fast

    assert bf16_is_fast("cpu") in (True, False)
    assert bf16_is_fast("meta") is False
    if not torch.cuda.is_available():
        assert bf16_is_fast("cuda") is False


@pytest.mark.parametrize("domain", ["toy-faces", "toy-cars"])
def test_shipped_toy_encoder_fits_the_shipped_generator(domain):
    """The shipped encoder is found without a runs/ folder and starts inversions near the target."""
    from sfeditor.model.checkpoints import load_generator
    from sfeditor.domains import resources_dir
    from sfeditor.images.imageio import from_uint8
    from sfeditor.toy import render
    from sfeditor.images.toy_encoder import default_encoder_path

    path = default_encoder_path(domain)
    assert path == resources_dir() / "encoders" / f"{domain}.pt"
    G = load_generator(domain, device="cpu")
    E = load_toy_encoder(path, G=G)
    images, _ = render(domain, np.arange(10_500_000, 10_500_008), G.size)
    x = from_uint8(images)
    with torch.no_grad():
        rec = G.synthesis(G.styles(E(x)), noise_mode="const")
        mean = G.synthesis(G.styles(G.w_avg[None].expand(len(x), -1)), noise_mode="const")
    err = lambda y: float((y.clamp(-1, 1) - x).pow(2).mean())  # noqa: E731
    assert err(rec) < 0.5 * err(mean)
