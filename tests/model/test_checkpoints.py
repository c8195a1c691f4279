"""Checkpoint formats: round trips, independent reference renders, refusal of code, clear errors.

Foreign files are written by ``tests/ckpt_writers.py`` from random sfeditor
generators of two architectures; nothing here needs downloaded weights.
"""
from __future__ import annotations

import argparse
import builtins
import copy
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

from ckpt_writers import (ada_reference_images, persistent, random_generator, rosinality_state,
                          tf_reference_images, tf_vars, write_ada_pkl, write_persistent_pickle, write_rosinality,
                          write_tf_pkl)
from sfeditor import StyleCode
from sfeditor.model.checkpoints import (CheckpointData, CheckpointError, expected_shapes, infer_config, load_generator,
                                  read_checkpoint, save_generator)
from sfeditor.model.generator import Generator

ARCHS = {
    "A": dict(size=16, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16}),
    "B": dict(size=32, style_dim=64, n_mlp=8, channels={4: 64, 8: 48, 16: 32, 32: 24}),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread avoids contention with whatever else runs (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gens():
    return {"A": random_generator(1, **ARCHS["A"]), "B": random_generator(2, **ARCHS["B"])}


@pytest.fixture
def GA(gens):
    return gens["A"]


def _z(G, n=3, seed=5):
    return torch.randn(n, G.style_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def assert_same_generator(G0: Generator, G1: Generator, tol: float = 1e-5, check_w_avg: bool = True):
    assert not G1.training
    c0, c1 = G0.config, G1.config
    assert (c1.size, c1.style_dim, c1.n_mlp, c1.channels) == (c0.size, c0.style_dim, c0.n_mlp, c0.channels)
    z = _z(G0)
    w0, w1 = G0.mapping(z), G1.mapping(z)
    s0, s1 = G0.styles(w0), G1.styles(w1)
    assert (s0.flat() - s1.flat()).abs().max() <= tol
    img0, img1 = G0.synthesis(s0, noise_mode="const"), G1.synthesis(s1, noise_mode="const")
    assert img0.abs().max() > 0.1                                   # a real image, not a degenerate one
    assert (img0 - img1).abs().max() <= tol
    if check_w_avg:
        assert torch.allclose(G0.w_avg, G1.w_avg, atol=tol)


def _write(fmt: str, G: Generator, path) -> None:
    {"sfeditor": lambda: save_generator(G, path, meta={"note": "test"}),
     "rosinality": lambda: write_rosinality(G, path),
     "rosinality-training": lambda: write_rosinality(G, path, training=True),
     "rosinality-legacy": lambda: write_rosinality(G, path, legacy=True, drop_kernels=True),
     "nvidia-ada": lambda: write_ada_pkl(G, path),
     "nvidia-ada-plain-module": lambda: write_ada_pkl(G, path, plain_fc0=True, protocol=2),
     "nvidia-tf": lambda: write_tf_pkl(G, path),
     "nvidia-tf-only-gs": lambda: write_tf_pkl(G, path, only_gs=True, protocol=4)}[fmt]()


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("arch", ["A", "B"])
@pytest.mark.parametrize("fmt", ["sfeditor", "rosinality", "nvidia-ada", "nvidia-tf"])
def test_round_trip_same_images_and_styles(fmt, arch, gens, tmp_path):
    """write -> load_generator -> same S vectors, same images, same w_avg, config inferred."""
    G0 = gens[arch]
    path = tmp_path / ("g.pkl" if fmt.startswith("nvidia") else "g.pt")
    _write(fmt, G0, path)
    data = read_checkpoint(path)
    assert isinstance(data, CheckpointData) and data.format == fmt
    assert data.config.size == G0.size and data.config.channels == G0.config.channels
    assert data.config.n_mlp == G0.config.n_mlp and data.config.style_dim == G0.style_dim
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in data.state_dict.values())
    assert "w_avg" not in data.state_dict and not any(k.endswith(".kernel") for k in data.state_dict)
    assert set(data.state_dict) == set(expected_shapes(data.config))
    assert_same_generator(G0, load_generator(path, device="cpu"))


@pytest.mark.parametrize("fmt", ["rosinality-training", "rosinality-legacy", "nvidia-ada-plain-module",
                                 "nvidia-tf-only-gs"])
def test_format_variants(fmt, GA, tmp_path):
    """Training snapshots (argparse.Namespace args), pre-zip torch files without kernel buffers,
    plain torch.nn modules inside NVIDIA pickles, protocol 2/4 pickles, a lone Gs network."""
    path = tmp_path / "g.bin"
    _write(fmt, GA, path)
    data = read_checkpoint(path)
    if fmt == "rosinality-training":
        assert data.info["args"]["n_mlp"] == 2 and data.info["ada_aug_p"] == 0.25
        assert {"g", "d", "g_optim", "d_optim"} <= set(data.info["keys"])
    if fmt == "rosinality-legacy":
        assert data.info["container"] == "torch-legacy"
    assert_same_generator(GA, load_generator(path, device="cpu"))


@pytest.mark.parametrize("arch", ["A", "B"])
def test_tf_conversion_matches_tensorflow_semantics(arch, gens, tmp_path):
    """Images rendered from the written TF tensors with TF's conventions (kernel layout
    [kh,kw,I,O], flip inside upsample_conv_2d, mod_bias + 1, noise index 2*res-5/-4)
    equal the loaded generator's: the writer and the converter cannot share a mistake."""
    G0 = gens[arch]
    flat = write_tf_pkl(G0, tmp_path / "g.pkl")
    G1 = load_generator(tmp_path / "g.pkl", device="cpu")
    z = _z(G0, 2)
    with torch.no_grad():
        ref, img = tf_reference_images(flat, z), G1(z)
    assert (ref - img).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["A", "B"])
def test_ada_conversion_matches_ada_semantics(arch, gens, tmp_path):
    """Same with stylegan2-ada-pytorch's conventions (un-flipped transposed conv, ToRGB
    style gain 1/sqrt(I), noise_const [R,R] * noise_strength)."""
    G0 = gens[arch]
    flat = write_ada_pkl(G0, tmp_path / "g.pkl")
    G1 = load_generator(tmp_path / "g.pkl", device="cpu")
    z = _z(G0, 2)
    with torch.no_grad():
        ref, img = ada_reference_images(flat, z), G1(z)
    assert (ref - img).abs().max() < 1e-4


def test_reference_render_catches_a_missing_flip(GA):
    """The TF reference is sensitive to the Conv0_up flip (so the test above means something)."""
    own, mapping, syn = tf_vars(GA)
    flat = {**own, **{f"mapping/{k}": v for k, v in mapping.items()}, **{f"synthesis/{k}": v for k, v in syn.items()}}
    flat["synthesis/8x8/Conv0_up/weight"] = np.ascontiguousarray(flat["synthesis/8x8/Conv0_up/weight"][::-1, ::-1])
    z = _z(GA, 2)
    with torch.no_grad():
        assert (tf_reference_images(flat, z) - GA(z)).abs().max() > 1e-2


def test_missing_w_avg_is_computed_from_4096_z(GA, tmp_path):
    write_rosinality(GA, tmp_path / "bare.pt", bare=True)
    write_rosinality(GA, tmp_path / "no_avg.pt", latent_avg=False)
    expect = copy.deepcopy(GA).update_w_avg(4096, seed=0)
    for name in ("bare.pt", "no_avg.pt"):
        data = read_checkpoint(tmp_path / name)
        assert data.w_avg is None and data.format == "rosinality"
        G1 = load_generator(tmp_path / name, device="cpu")
        assert torch.allclose(G1.w_avg, expect, atol=1e-6)
        assert_same_generator(GA, G1, check_w_avg=False)


def test_latent_avg_per_layer_and_e4e_decoder(GA, tmp_path):
    """e4e/pSp checkpoints: 'decoder.*' weights and latent_avg repeated per w+ entry."""
    sd = {f"decoder.{k}": v for k, v in rosinality_state(GA).items()}
    sd["encoder.input_layer.0.weight"] = torch.randn(4, 3, 3, 3)
    torch.save({"state_dict": sd, "opts": {"output_size": 16},
                "latent_avg": GA.w_avg.detach()[None].repeat(GA.n_latent, 1)}, tmp_path / "e4e.pt")
    data = read_checkpoint(tmp_path / "e4e.pt")
    assert data.format == "rosinality" and "e4e" in data.info["source"]
    assert_same_generator(GA, load_generator(tmp_path / "e4e.pt", device="cpu"))


# ----------------------------------------------------------------- own format
def test_save_generator_meta_atomic_and_weights_only(GA, tmp_path):
    path = tmp_path / "sub" / "g.pt"
    save_generator(GA, path, meta={"domain": "toy-faces", "steps": 3, "recipe": {"lr": 0.002, "betas": (0.0, 0.99)}})
    raw = torch.load(path, weights_only=True)           # plain weights_only load, no allow-list needed
    assert raw["format"] == "sfeditor-generator" and raw["version"] == 1
    assert raw["config"] == GA.config.to_dict()
    assert os.listdir(path.parent) == ["g.pt"]           # no temporary files left behind
    data = read_checkpoint(path)
    assert data.info["meta"]["domain"] == "toy-faces" and data.config == GA.config
    with pytest.raises(TypeError, match="JSON-like"):
        save_generator(GA, path, meta={"where": tmp_path})
    assert read_checkpoint(path).info["meta"]["steps"] == 3   # the failed save left the file alone


def test_save_half(gens, tmp_path):
    G0 = gens["B"]
    save_generator(G0, tmp_path / "f32.pt")
    save_generator(G0, tmp_path / "f16.pt", half=True)
    assert os.path.getsize(tmp_path / "f16.pt") < 0.6 * os.path.getsize(tmp_path / "f32.pt")
    data = read_checkpoint(tmp_path / "f16.pt")
    assert data.info["stored_dtype"] == "float16"
    assert all(t.dtype == torch.float32 for t in data.state_dict.values())
    G1 = load_generator(tmp_path / "f16.pt", device="cpu")
    assert G1.input.input.dtype == torch.float32
    z = _z(G0)
    with torch.no_grad():
        img0, img1 = G0(z), G1(z)
    assert (img0 - img1).abs().max() < 0.05 * img0.abs().max()


def test_own_format_keeps_lr_mlp_and_recomputes_zero_w_avg(tmp_path):
    G0 = random_generator(3, size=8, style_dim=16, n_mlp=3, channels={4: 8, 8: 8}, lr_mlp=1.0)
    with torch.no_grad():
        G0.w_avg.zero_()                                  # never computed
    save_generator(G0, tmp_path / "g.pt")
    data = read_checkpoint(tmp_path / "g.pt")
    assert data.config.lr_mlp == 1.0 and data.w_avg is None
    G1 = load_generator(tmp_path / "g.pt", device="cpu")
    assert torch.allclose(G1.w_avg, copy.deepcopy(G0).update_w_avg(4096, seed=0), atol=1e-6)
    assert_same_generator(G0, G1, check_w_avg=False)


def test_own_format_errors(GA, tmp_path):
    save_generator(GA, tmp_path / "g.pt")
    raw = torch.load(tmp_path / "g.pt", weights_only=True)
    newer = dict(raw, version=2)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer sfeditor"):
        read_checkpoint(tmp_path / "newer.pt")
    wrong = dict(raw, config=dict(raw["config"], channels={"4": 32, "8": 32, "16": 8}))
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="does not match the tensors"):
        read_checkpoint(tmp_path / "wrong.pt")
    bad_cfg = dict(raw, config=dict(raw["config"], size=12))
    torch.save(bad_cfg, tmp_path / "badcfg.pt")
    with pytest.raises(CheckpointError, match="invalid generator config"):
        read_checkpoint(tmp_path / "badcfg.pt")
    StyleCode.from_flat(GA, torch.zeros(1, GA.layout.size)).save(tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="stylecode file, not a generator"):
        read_checkpoint(tmp_path / "code.pt")


# --------------------------------------------------------- config inference
@pytest.mark.parametrize("cfg", [ARCHS["A"], ARCHS["B"], dict(size=64, style_dim=16, n_mlp=1,
                                                               channels={4: 8, 8: 12, 16: 8, 32: 4, 64: 4})])
def test_infer_config_and_expected_shapes(cfg):
    G = Generator(**cfg)
    sd = G.state_dict()
    assert infer_config(sd) == G.config
    derived = {k for k in sd if k.endswith(".kernel")} | {"w_avg"}
    assert expected_shapes(G.config) == {k: tuple(v.shape) for k, v in sd.items() if k not in derived}


def test_infer_config_errors():
    with pytest.raises(CheckpointError, match="input.input"):
        infer_config({"style.1.weight": torch.zeros(4, 4)})
    with pytest.raises(CheckpointError, match="mapping network"):
        infer_config({"input.input": torch.zeros(1, 4, 4, 4)})


# ----------------------------------------------------------------- security
class _Exec:
    """Unpickling this runs ``open(marker, 'w')`` if the loader lets pickle call builtins.exec."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _marker_src(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')\n"


@pytest.mark.parametrize("payload", [_Exec, _System])
def test_pickle_that_would_execute_code_is_refused(payload, tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"G_ema": payload(marker)}, f)
    with pytest.raises(CheckpointError, match="refusing to load: pickle references (builtins.exec|posix.system)"):
        load_generator(tmp_path / "evil.pkl", device="cpu")
    assert not marker.exists()


def test_ada_module_src_is_never_executed(GA, tmp_path):
    """A valid ADA pickle whose module_src would create a file: it loads, the file never appears."""
    marker = tmp_path / "pwned"
    write_ada_pkl(GA, tmp_path / "g.pkl", module_src=_marker_src(marker))
    assert_same_generator(GA, load_generator(tmp_path / "g.pkl", device="cpu"))
    assert not marker.exists()


def test_ada_pickle_with_code_payload_is_refused(GA, tmp_path):
    marker = tmp_path / "pwned"
    write_ada_pkl(GA, tmp_path / "g.pkl", module_src=_marker_src(marker),
                  replace={"training_set_kwargs": _Exec(marker)})
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_generator(tmp_path / "g.pkl", device="cpu")
    assert not marker.exists()


def test_tf_build_module_src_is_never_executed(GA, tmp_path):
    marker = tmp_path / "pwned"
    write_tf_pkl(GA, tmp_path / "g.pkl", build_src=_marker_src(marker))
    assert_same_generator(GA, load_generator(tmp_path / "g.pkl", device="cpu"))
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_file_with_code_payload_is_refused(GA, legacy, tmp_path):
    marker = tmp_path / "pwned"
    obj = {"g_ema": rosinality_state(GA), "latent_avg": GA.w_avg.detach(),
           "args": argparse.Namespace(size=16), "hook": _Exec(marker)}
    torch.save(obj, tmp_path / "evil.pt", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="refusing to load: the file references exec"):
        load_generator(tmp_path / "evil.pt", device="cpu")
    assert not marker.exists()


def test_tensor_storage_bytes_are_read_weights_only(tmp_path):
    """torch.storage._load_from_bytes is allowed, but its payload goes through weights_only."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"x": _Exec(marker)}, buf)

    class _Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (buf.getvalue(),))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"G_ema": _Storage()}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_allow_list_is_by_name_not_by_package(tmp_path):
    class _TorchLoad:
        def __reduce__(self):
            return (torch.load, (str(tmp_path / "x.pt"),))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_TorchLoad(), f)
    with pytest.raises(CheckpointError, match="pickle references torch.serialization.load"):
        read_checkpoint(tmp_path / "evil.pkl")


# ------------------------------------------------------------ broken files
@pytest.mark.parametrize("kind", ["zip", "legacy", "ada", "tf"])
def test_truncated_files(kind, GA, tmp_path):
    path = tmp_path / "g.bin"
    {"zip": lambda: write_rosinality(GA, path), "legacy": lambda: write_rosinality(GA, path, legacy=True),
     "ada": lambda: write_ada_pkl(GA, path), "tf": lambda: write_tf_pkl(GA, path)}[kind]()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_generator(path, device="cpu")
    assert str(path) in str(e.value)


def test_not_checkpoints(tmp_path):
    cases = {
        "empty.pt": (b"", "file is empty"),
        "random.pt": (b"\x00" + np.random.default_rng(0).bytes(4000), "not a StyleGAN2 checkpoint"),
        "config.json": (json.dumps({"size": 256}).encode(), "text/JSON"),
        "lfs.pt": (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n", "Git LFS pointer"),
        "list.pkl": (pickle.dumps([1, 2, 3]), "holds a list"),
        "date.pkl": (pickle.dumps(__import__("datetime").date(2020, 1, 1)), "pickle references datetime.date"),
    }
    for name, (payload, message) in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CheckpointError, match=message) as e:
            load_generator(tmp_path / name, device="cpu")
        assert str(e.value).startswith(str(tmp_path / name))
    torch.save({"foo": torch.ones(2), "bar": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a StyleGAN2 checkpoint: a dict with keys foo, bar"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_generator(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="folder"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("seed", range(6))
def test_random_pickle_bytes_fail_cleanly(seed, tmp_path):
    rng = np.random.default_rng(seed)
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04" + rng.bytes(int(rng.integers(1, 3000))))
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "x.pkl")


def test_wrong_architecture_messages(GA, tmp_path):
    def attempt(edit):
        sd = rosinality_state(GA)
        edit(sd)
        torch.save({"g_ema": sd}, tmp_path / "g.pt")
        with pytest.raises(CheckpointError) as e:
            load_generator(tmp_path / "g.pt", device="cpu")
        return str(e.value)

    msg = attempt(lambda sd: sd.__setitem__("convs.3.conv.weight", torch.randn(1, 5, 16, 3, 3)))
    assert "tensor convs.3.conv.weight has shape [1, 5, 16, 3, 3], expected [1, 16, 16, 3, 3]" in msg
    msg = attempt(lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("to_rgbs.1.") or k == "noises.noise_3"])
    assert "missing tensors: " in msg and "to_rgbs.1.conv.weight" in msg and "noises.noise_3" in msg
    msg = attempt(lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)))
    assert "unexpected tensors: extra.weight" in msg
    msg = attempt(lambda sd: sd.__setitem__("convs.0.conv.blur.kernel", torch.ones(4, 4)))
    assert "resampling filter" in msg
    msg = attempt(lambda sd: sd["conv1.activate.bias"].__setitem__(0, float("nan")))
    assert "conv1.activate.bias contains NaN" in msg
    msg = attempt(lambda sd: sd.__setitem__("noises.noise_0", torch.zeros(1, 1, 4, 4, dtype=torch.int64)))
    assert "noises.noise_0 has dtype torch.int64" in msg
    msg = attempt(lambda sd: sd.__setitem__("input.input", torch.zeros(4, 4)))
    assert "input.input" in msg


def test_unsupported_nvidia_architectures(GA, tmp_path):
    extra = {"8x8/Skip/weight": np.ones((1, 1, 32, 32), np.float32)}          # resnet synthesis
    write_tf_pkl(GA, tmp_path / "resnet.pkl", extra_syn=extra)
    with pytest.raises(CheckpointError, match="does not have .*synthesis/8x8/Skip/weight"):
        read_checkpoint(tmp_path / "resnet.pkl")
    sg3 = persistent("SynthesisNetwork", modules={
        "input": persistent("SynthesisInput", params={"weight": torch.ones(4, 4)}),
        "L0_36_512": persistent("SynthesisLayer", params={"weight": torch.ones(4, 4, 3, 3)})})
    write_persistent_pickle(tmp_path / "sg3.pkl", {"_modules": {"synthesis": sg3}, "_init_kwargs": {"c_dim": 0}})
    with pytest.raises(CheckpointError, match="StyleGAN3"):
        read_checkpoint(tmp_path / "sg3.pkl")
    write_persistent_pickle(tmp_path / "cond.pkl", {"_modules": {}, "_init_kwargs": {"c_dim": 10}})
    with pytest.raises(CheckpointError, match="conditional"):
        read_checkpoint(tmp_path / "cond.pkl")


# ------------------------------------------------------------------ domains
def test_shipped_domain_names(GA, tmp_path, monkeypatch):
    monkeypatch.setenv("SFEDITOR_RESOURCES", str(tmp_path))
    with pytest.raises(CheckpointError, match="weights of domain 'toy-faces' are not installed"):
        load_generator("toy-faces")
    save_generator(GA, tmp_path / "generators" / "toy-faces.pt", half=False)
    G1 = load_generator("toy-faces", device="cpu")
    assert_same_generator(GA, G1)
    assert G1.device.type == "cpu"


@pytest.mark.parametrize("size", [64, 256, 512, 1024])
@pytest.mark.parametrize("fmt", ["rosinality", "nvidia-ada", "nvidia-tf"])
def test_every_resolution_in_every_foreign_format(fmt, size, tmp_path):
    """Issue 2's 'done when': random generators at 64-1024 in all three foreign formats
    (narrow widths keep it fast; the layer structure is the full one)."""
    import math

    ch = {2 ** i: max(4, 32 >> max(0, i - 5)) for i in range(2, int(math.log2(size)) + 1)}
    G0 = random_generator(seed=size, size=size, style_dim=16, n_mlp=2, channels=ch)
    path = tmp_path / ("g.pkl" if fmt.startswith("nvidia") else "g.pt")
    _write(fmt, G0, path)
    G1 = load_generator(path, device="cpu")
    assert G1.config.size == size and G1.layout == G0.layout
    with torch.no_grad():
        s0 = G0.random_styles(1, seed=0)
        s1 = G1.random_styles(1, seed=0)
        assert (s0.flat() - s1.flat()).abs().max() <= 1e-5
        assert (G0.synthesis(s0) - G1.synthesis(s1)).abs().max() <= 1e-4
