"""Hostile and broken files through every loader and command-line entry point (issue 39).

Each hostile file is written here; every loader must refuse it with a one-line
``ValueError``-family message (no traceback, nothing allocated for the declared
sizes), and every command must exit non-zero with ``error:`` on one line.
Memory bombs declare tens of GiB: a regression would fail on allocation, and
``test_memory_bomb_peak_is_bounded`` measures a command's peak RSS.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sfeditor import cli
from sfeditor.model.checkpoints import CheckpointError, read_checkpoint, save_generator
from sfeditor.editor.composition import Composition, embed_in_png
from sfeditor.fusion.fusion_net import FusionNetConfig, load_fusion_net, read_weight_file
from sfeditor.fusion.hierarchy import HIERARCHY_FORMAT, load_hierarchy
from sfeditor.images.imageio import encode_png
from sfeditor.regions.regions_file import RegionsFile
from sfeditor.model.safe_pickle import SafeUnpickler
from sfeditor.model.safe_torch import TorchFileError, safe_torch_load
from sfeditor.editor.session import EditorSession, SessionError
from sfeditor.model.style_code import StyleCode
from tests.editor_core_helpers import tiny_generator, tiny_hierarchy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------ hostile writers
def rewrite_pickle(src: Path, dst: Path, pkl: bytes) -> None:
    """Copy a torch zip file with its data.pkl replaced (stored members, like torch writes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, pkl if info.filename.endswith("data.pkl") else data)


def write_expanded(path: Path) -> Path:
    """A few-KB file whose tensors are stride-0 views of one element declaring 16 GiB each."""
    one = torch.zeros(1)
    sd = {"style.1.weight": one.expand(65536, 65536), "input.input": one.expand(1, 65536, 4, 4),
          "blender_common.disentangle_net.0.weight": one.expand(65536, 65536)}
    torch.save({"g_ema": sd, "state_dict": sd, "w_plus": one.expand(1, 65536, 65536)}, path)
    return path


def write_storage_lie(path: Path) -> Path:
    """A storage record of 4 bytes whose data.pkl declares 10**9 float elements."""
    torch.save({"g_ema": {"style.1.weight": torch.zeros(1)}, "x": torch.zeros(1)}, path)
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert pkl.count(b"K\x01t") >= 1
    tmp = path.with_suffix(".src")
    path.rename(tmp)
    rewrite_pickle(tmp, path, pkl.replace(b"K\x01t", b"J\x00\xca\x9a\x3bt"))
    tmp.unlink()
    return path


class _Bomb:
    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (bytearray, (self.n,))


def write_bytearray_pickle(path: Path) -> Path:
    """A ~100-byte pickle asking for a 4.6 GB bytearray (an allowed global)."""
    path.write_bytes(pickle.dumps({"G_ema": _Bomb(4_600_000_000)}, protocol=2))
    assert path.stat().st_size < 200
    return path


def write_bytearray_zip(path: Path) -> Path:
    """An ~800-byte torch zip whose data.pkl asks for bytearray(4.6e9) (torch's weights_only allows it)."""
    torch.save({"a": 1}, path)
    tmp = path.with_suffix(".src")
    path.rename(tmp)
    rewrite_pickle(tmp, path, pickle.dumps({"state_dict": _Bomb(4_600_000_000)}, protocol=2))
    tmp.unlink()
    return path


def flip_middle(path: Path, n: int = 16) -> Path:
    """Flip ``n`` bytes in the middle of the largest weight (torch pads zip headers; those bytes carry nothing)."""
    import struct

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    mid = start + info.file_size // 2 - n // 2
    for i in range(mid, mid + n):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def G():
    return tiny_generator(0)


@pytest.fixture(scope="module")
def files(G, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    good_gen = d / "good-gen.pt"
    save_generator(G, good_gen)
    crc = d / "crc-gen.pt"
    shutil.copy(good_gen, crc)
    flip_middle(crc)
    good_h = d / "good-h.pt"
    tiny_hierarchy(G).save(good_h)
    crc_h = d / "crc-h.pt"
    shutil.copy(good_h, crc_h)
    flip_middle(crc_h)
    fifo = d / "fifo"
    os.mkfifo(fifo)
    return {
        "expanded_view": write_expanded(d / "expanded.pt"),
        "storage_lie": write_storage_lie(d / "lie.pt"),
        "bytearray_pickle": write_bytearray_pickle(d / "bomb.pkl"),
        "bytearray_zip": write_bytearray_zip(d / "bomb.pt"),
        "crc_generator": crc,
        "crc_hierarchy": crc_h,
        "dev_zero": Path("/dev/zero"),
        "fifo": fifo,
        "folder": d,
        "good_gen": good_gen,
        "good_h": good_h,
    }


BINARY_HOSTILE = ["expanded_view", "storage_lie", "bytearray_pickle", "bytearray_zip", "crc_generator",
                  "crc_hierarchy", "dev_zero", "fifo", "folder"]


def _generator(p):
    read_checkpoint(p)


def _hierarchy(p):
    load_hierarchy(p)


def _fusion(p):
    load_fusion_net(p)


def _weights(p):
    read_weight_file(p)


def _style_code(p):
    StyleCode.load(p)


def _latents(p):
    from sfeditor.images.inversion import load_latents

    load_latents(p)


def _run_state(p):
    from trainer.common import load_checked_state

    load_checked_state(p)


LOADERS = {"generator": _generator, "hierarchy": _hierarchy, "fusion_net": _fusion, "weight_file": _weights,
           "style_code": _style_code, "latents": _latents, "run_checkpoint": _run_state}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind", BINARY_HOSTILE)
def test_every_loader_refuses_every_hostile_binary(files, kind, loader):
    with pytest.raises(ValueError) as ei:
        LOADERS[loader](files[kind])
    msg = str(ei.value)
    assert "\n" not in msg.strip()
    assert len(msg) < 600
    if kind.startswith("crc"):
        assert "corrupt" in msg or "differs" in msg or "CRC" in msg or "check" in msg, msg


@pytest.mark.parametrize("kind", ["expanded_view", "storage_lie", "bytearray_zip"])
def test_refusal_names_the_reason_before_allocating(files, kind):
    with pytest.raises(TorchFileError) as ei:
        safe_torch_load(files[kind])
    msg = str(ei.value)
    assert str(files[kind]) in msg
    assert {"expanded_view": "expanded view", "storage_lie": "declares",
            "bytearray_zip": "-byte buffer"}[kind] in msg


def test_good_files_still_load(files, G):
    data = read_checkpoint(files["good_gen"])
    assert data.config.size == G.size
    h = load_hierarchy(files["good_h"])
    assert set(h.nets) == set(tiny_hierarchy(G).nets)


def test_bytearray_pickle_refused_by_the_budget_not_by_memory():
    data = pickle.dumps([_Bomb(10_000_000)], protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="bytearray of 10000000 bytes"):
        SafeUnpickler(io.BytesIO(data)).load()
    # within the file's size it is an ordinary allowed value
    assert SafeUnpickler(io.BytesIO(pickle.dumps([_Bomb(3)], protocol=2))).load() == [bytearray(3)]


def test_calling_tensor_types_directly_is_refused():
    class _Call:
        def __reduce__(self):
            return (torch.Tensor, (100000, 100000))

    with pytest.raises(pickle.UnpicklingError, match="calls torch.Tensor directly"):
        SafeUnpickler(io.BytesIO(pickle.dumps(_Call(), protocol=2))).load()


def test_expanded_view_in_a_pickle_storage_is_refused(G, tmp_path):
    """NVIDIA pickles carry storages via torch.storage._load_from_bytes; views of them are checked too."""
    from sfeditor.model.safe_pickle import _rebuild_tensor_v2

    st = torch.zeros(1).storage()
    with pytest.raises(pickle.UnpicklingError, match="expanded view"):
        _rebuild_tensor_v2(st, 0, (65536, 65536), (0, 0))
    assert _rebuild_tensor_v2(st, 0, (4,), (0,)).shape == (4,)      # small broadcasts stay allowed


def test_legacy_storage_lie_is_refused(tmp_path):
    p = tmp_path / "legacy.pt"
    torch.save({"x": torch.arange(4.0)}, p, _use_new_zipfile_serialization=False)
    data = bytearray(p.read_bytes())
    tail = data.rfind((4).to_bytes(8, "little"))          # the storage's element count before its bytes
    data[tail:tail + 8] = (10 ** 9).to_bytes(8, "little")
    p.write_bytes(bytes(data))
    with pytest.raises(TorchFileError, match="declares 4 elements but its data says 1000000000"):
        safe_torch_load(p)


def test_fusion_config_bounds_refuse_absurd_widths():
    with pytest.raises(ValueError, match="width"):
        FusionNetConfig(width=10 ** 6)
    with pytest.raises(ValueError, match="hidden"):
        FusionNetConfig(width=8, hidden=10 ** 6)


def test_hierarchy_with_absurd_config_is_refused_before_building(G, tmp_path):
    h = tiny_hierarchy(G)
    state = h.to_state()
    state["config"] = {**state["config"], "width": 10 ** 6, "hidden": 3 * 10 ** 6}
    torch.save(state, tmp_path / "h.pt")
    with pytest.raises(ValueError, match="width 1000000 is outside"):
        load_hierarchy(tmp_path / "h.pt")


def test_hierarchy_content_hash_catches_a_changed_weight(G, tmp_path):
    h = tiny_hierarchy(G)
    h.save(tmp_path / "h.pt")
    state = torch.load(tmp_path / "h.pt", weights_only=True)
    name = next(iter(state["nets"]))
    k = next(iter(state["nets"][name]))
    state["nets"][name][k] = state["nets"][name][k] + 1.0      # a valid zip with different weights
    torch.save(state, tmp_path / "h2.pt")
    with pytest.raises(ValueError, match="content hash"):
        load_hierarchy(tmp_path / "h2.pt")


# ------------------------------------------------------------- shipped files
def test_manifest_matches_the_shipped_resources():
    """resources/MANIFEST.json is current; after retraining run `python -m sfeditor.integrity --write`."""
    from sfeditor.integrity import check_manifest

    assert check_manifest() == []


def test_a_corrupted_shipped_file_is_refused_and_named(tmp_path, monkeypatch):
    from sfeditor import integrity

    root = tmp_path / "resources"
    (root / "generators").mkdir(parents=True)
    shutil.copy(ROOT / "resources" / "generators" / "toy-faces.pt", root / "generators" / "toy-faces.pt")
    shutil.copy(ROOT / "resources" / "MANIFEST.json", root / "MANIFEST.json")
    monkeypatch.setattr(integrity, "resources_dir", lambda: root)
    monkeypatch.setattr(integrity, "_verified", {})
    target = root / "generators" / "toy-faces.pt"
    read_checkpoint(target)                                          # intact: loads
    flip_middle(target)                                              # the 16 flipped bytes
    with pytest.raises(CheckpointError, match=r"toy-faces\.pt: content differs from resources/MANIFEST\.json"):
        read_checkpoint(target)
    monkeypatch.setattr(integrity, "resources_dir", lambda: tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match=r"toy-faces\.pt: file is corrupt: .* fails its check"):
        read_checkpoint(target)                                      # outside resources/: the zip CRC refuses it
    problems = integrity.check_manifest(root)
    assert any("generators/toy-faces.pt" in p for p in problems)


# ------------------------------------------------------------ JSON and text
DEEP = "[" * 200_000 + "]" * 200_000


def test_deeply_nested_json_is_a_clear_error_everywhere(tmp_path, G):
    p = tmp_path / "deep.json"
    p.write_text(DEEP)
    with pytest.raises(ValueError, match="nested too deeply"):
        Composition.load(p)
    with pytest.raises(ValueError, match="nested too deeply"):
        RegionsFile.load(p)
    with pytest.raises(ValueError, match="nested too deeply"):
        load_hierarchy(p)
    with pytest.raises(SessionError, match="nested too deeply"):
        EditorSession.read_composition(p)
    deep_obj = '{"format": "sfeditor-composition", "tree": ' + DEEP + "}"
    png = tmp_path / "deep.png"
    png.write_bytes(_png_with_text(deep_obj))
    with pytest.raises(SessionError, match="nested too deeply"):
        EditorSession.read_composition(png)


def _png_with_text(text: str) -> bytes:
    """A PNG with ``text`` in sfeditor's composition chunk (what embed_in_png writes for a real one)."""
    from sfeditor.editor import composition as C

    png = encode_png(np.zeros((8, 8, 3), np.uint8))
    chunk = C._chunk(b"tEXt", C.PNG_KEYWORD.encode("latin-1") + b"\x00" + text.encode("latin-1"))
    return png[:-12] + chunk + png[-12:]


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "folder"])
def test_text_loaders_refuse_devices_fifos_and_folders(files, kind):
    p = files[kind]
    with pytest.raises(SessionError):
        EditorSession.read_composition(p)          # `sfeditor gui /dev/zero` used to exhaust memory; a FIFO hung
    with pytest.raises(ValueError):
        Composition.load(p)
    with pytest.raises(ValueError):
        RegionsFile.load(p)


# -------------------------------------------------------------- command line
def run_cli(argv, capsys):
    """``sfeditor`` in-process: (exit status, stderr); argparse's SystemExit counts as its status."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    return code, err


CLI_CASES = [
    (["render", "-s", "0-1000000000"], "more than 10000 images"),
    (["render", "--scale", "2000"], "out of range"),
    (["render", "--scale", "0"], "out of range"),
    (["render", "--scale", "-3"], "out of range"),
    (["render", "--cols", "0"], "out of range"),
    (["render", "-t", "nan"], "not a finite number"),
    (["render", "-t", "1e30"], "out of range"),
    (["render", "--device", "nosuchdevice"], "unknown device"),
    (["render", "--batch", "0"], "out of range"),
    (["render", "-o", "{tmp}/a.xyz", "-s", "0"], "cannot tell the image format"),
    (["invert", "x.png", "--loss-size", "-1"], "out of range"),
    (["invert", "x.png", "--steps", "0"], "out of range"),
    (["invert", "x.png", "--lr", "nan"], "not a finite number"),
    (["edit", "x.pt", "-s", "nan", "--pca", "0"], "not a finite number"),
    (["edit", "x.pt", "-s", "1", "--pca", "-1"], "out of range"),
    (["edit", "x.pt", "-s", "1", "--pca", "99999"], "out of range"),
    (["edit", "x.pt", "-s", "1", "--pca", "0", "-o", "{tmp}/e.gif"], "cannot tell the image format"),
    (["transfer", "a.png", "b.png", "-o", "{tmp}/t.txt"], "cannot tell the image format"),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["render", "--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize("argv,expect", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_bad_arguments_are_one_line_errors(argv, expect, capsys, tmp_path):
    code, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]               # argparse: usage, then one error line
    assert "error:" in last and expect in last, err


@pytest.mark.parametrize("kind", BINARY_HOSTILE)
def test_info_and_render_refuse_hostile_models(files, kind, capsys, tmp_path):
    for argv in (["info", files[kind]], ["render", "-m", files[kind], "-s", "0", "-o", tmp_path / "r.png"]):
        code, err = run_cli(argv, capsys)
        assert code == 2, err
        assert err.startswith(f"sfeditor {argv[0]}: error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("kind", ["expanded_view", "bytearray_zip", "crc_hierarchy", "fifo"])
def test_edit_and_transfer_refuse_hostile_hierarchies(files, kind, G, capsys, tmp_path):
    from sfeditor.images.inversion import save_latents

    gen = files["good_gen"]
    lat = tmp_path / "a-wplus.pt"
    save_latents(lat, G.w_avg.reshape(1, 1, -1).repeat(1, G.n_latent, 1))
    dirn = tmp_path / "d.npy"
    np.save(dirn, np.ones(G.style_dim, np.float32))
    for argv in (["edit", lat, "-m", gen, "--device", "cpu", "--direction", dirn, "-s", "1", "--regions", "left",
                  "--hierarchy", files[kind], "-o", tmp_path / "e.png"],
                 ["transfer", lat, lat, "-m", gen, "--device", "cpu", "--hierarchy", files[kind], "--region", "left",
                  "-o", tmp_path / "t.png"]):
        code, err = run_cli(argv, capsys)
        assert code == 2, err
        assert err.startswith(f"sfeditor {argv[0]}: error: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("kind", ["expanded_view", "storage_lie", "crc_generator"])
def test_edit_refuses_hostile_latents_and_render_hostile_codes(files, kind, G, capsys, tmp_path):
    gen = files["good_gen"]
    code, err = run_cli(["edit", files[kind], "-m", gen, "--device", "cpu", "--pca", "0", "-s", "1",
                         "-o", tmp_path / "e.png"], capsys)
    assert code == 2 and err.startswith("sfeditor edit: error: ") and len(err.strip().splitlines()) == 1, err
    code, err = run_cli(["render", "-m", gen, "--device", "cpu", "--codes", files[kind], "-o", tmp_path / "r.png"],
                        capsys)
    assert code == 2 and err.startswith("sfeditor render: error: ") and len(err.strip().splitlines()) == 1, err


def test_output_format_follows_the_extension(files, capsys, tmp_path):
    gen = files["good_gen"]
    for name, magic in (("a.jpg", b"\xff\xd8\xff"), ("a.png", b"\x89PNG"), ("a.webp", b"RIFF"), ("a.bmp", b"BM")):
        code, err = run_cli(["render", "-m", gen, "--device", "cpu", "-s", "0-1", "-o", tmp_path / name], capsys)
        assert code == 0, err
        assert (tmp_path / name).read_bytes().startswith(magic), name


def test_unknown_extension_fails_before_rendering(files, capsys, tmp_path, monkeypatch):
    import sfeditor.model.checkpoints as ck

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(ck, "load_generator", boom)
    code, err = run_cli(["render", "-m", files["good_gen"], "-o", tmp_path / "a.jpgx"], capsys)
    assert code == 2 and "cannot tell the image format" in err


def test_render_refuses_output_that_would_not_fit_in_memory(files, capsys, tmp_path):
    code, err = run_cli(["render", "-m", "toy-faces", "--device", "cpu", "-s", "0-9999", "--scale", "16",
                         "-o", tmp_path / "big.png"], capsys)
    assert code == 2 and "GiB" in err, err


# The child's own peak RSS in KiB: VmHWM of its address space. (ru_maxrss is no good here: Linux
# carries it across fork + exec, so a child of a big pytest process starts at the parent's peak.)
PEAK_KIB = ("next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))"
            " if sys.platform.startswith('linux') else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss")


def test_memory_bomb_peak_is_bounded(files, tmp_path):
    """`sfeditor info` on the bombs, in a child process: its peak RSS stays far below what they declare."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code = ("import resource, sys\n"
            "from sfeditor import cli\n"
            "rc = [cli.main(['info', p]) for p in sys.argv[1:]]\n"
            "print(max(rc), " + PEAK_KIB + ")\n")
    paths = [str(files[k]) for k in ("expanded_view", "storage_lie", "bytearray_pickle", "bytearray_zip")]
    out = subprocess.run([sys.executable, "-c", code, *paths], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rc, peak_kib = map(int, out.stdout.split())
    assert rc == 2
    assert peak_kib < 1_500_000, f"peak RSS {peak_kib / 1024:.0f} MiB"     # the bombs declare 16-64 GiB


# ------------------------------------------------------------------ invert
def test_invert_gives_inputs_with_one_name_distinct_outputs(tmp_path, capsys):
    from sfeditor.cli_images import _unique_stems

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "ok.jpg", tmp_path / "b" / "ok.png"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    stems = _unique_stems([str(a), str(b)])
    assert stems == {str(a): "ok", str(b): "ok-2"}
    assert "ok-2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="given twice"):
        _unique_stems([str(a), str(tmp_path / "a" / ".." / "a" / "ok.jpg")])


def test_invert_cli_writes_both_results(files, G, tmp_path, capsys):
    import cv2

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rng = np.random.default_rng(0)
    for p in (tmp_path / "a" / "ok.jpg", tmp_path / "b" / "ok.png"):
        cv2.imwrite(str(p), (rng.random((G.size, G.size, 3)) * 255).astype(np.uint8))
    out = tmp_path / "d"
    code, err = run_cli(["invert", tmp_path / "a" / "ok.jpg", tmp_path / "b" / "ok.png", "-m", files["good_gen"],
                         "--device", "cpu", "--steps", "1", "--no-encoder", "--no-cache", "-q", "-o", out], capsys)
    assert code == 0, err
    assert (out / "ok-wplus.pt").is_file() and (out / "ok-2-wplus.pt").is_file()
    assert json.loads(torch.load(out / "ok-2-wplus.pt", weights_only=True)["meta"])["source"].endswith("ok.png")


# ----------------------------------------------------------------- images
def test_damaged_jpeg_decodes_with_a_warning(tmp_path, capsys):
    import cv2

    from sfeditor.images.intake import DamagedImageWarning, read_image

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((128, 128, 3)) * 255).astype(np.uint8), (9, 9), 3)
    ok, buf = cv2.imencode(".jpg", img)
    data = buf.tobytes()
    good = tmp_path / "good.jpg"
    good.write_bytes(data)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: len(data) // 2] + data[-2:])      # the second half lost; EOI kept
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedImageWarning)
        _, info = read_image(good, return_info=True)
    assert info.warnings == ()
    with pytest.warns(DamagedImageWarning, match="bad.jpg: damaged JPEG"):
        rgb, info = read_image(bad, return_info=True)
    assert rgb.shape == (128, 128, 3) and info.warnings


# ------------------------------------------- more loaders: encoders, oracles, directions
def _encoder(p):
    from sfeditor.images.toy_encoder import load_toy_encoder

    load_toy_encoder(p)


def _e4e(p):
    from sfeditor.images.e4e import read_e4e

    read_e4e(p)


def _oracle(p):
    from sfeditor.toy.oracle import load_oracle

    load_oracle("toy-faces", path=p)


def _node_net(p):
    from trainer.fusion_eval import load_node_net

    load_node_net(p)


MORE_LOADERS = {"encoder": _encoder, "e4e": _e4e, "oracle": _oracle, "node_net": _node_net}


@pytest.mark.parametrize("loader", sorted(MORE_LOADERS))
@pytest.mark.parametrize("kind", ["expanded_view", "storage_lie", "bytearray_pickle", "bytearray_zip",
                                  "crc_generator", "dev_zero", "fifo", "folder"])
def test_encoder_oracle_and_node_net_loaders_refuse_hostile_binaries(files, kind, loader):
    with pytest.raises((ValueError, FileNotFoundError)) as ei:
        MORE_LOADERS[loader](files[kind])
    msg = str(ei.value)
    assert "\n" not in msg.strip() and len(msg) < 600, msg
    if kind in ("expanded_view", "storage_lie", "bytearray_zip", "crc_generator"):
        assert isinstance(ei.value, ValueError)


def _npy(shape, payload: bytes, dtype="<f4") -> bytes:
    from numpy.lib import format as npf

    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


@pytest.mark.parametrize("name,data,expect", [
    ("bomb.npy", _npy((65536, 65536), b"\0" * 16), "header declares shape"),
    ("short.npy", _npy((512,), b"\0" * 100), "header declares shape"),
    ("object.npy", _npy((1,), b"\0" * 8, dtype="|O"), "pickled Python objects"),
    ("deep.npy", b"\x93NUMPY\x01\x00" + (8 + 4 * 5000).to_bytes(2, "little") + b"[" * 5000 + b"\n", "not a readable"),
    ("zip.npy", b"PK\x03\x04" + b"\0" * 64, ".npz archive"),
    ("text.npy", b"hello world", "no NumPy header"),
])
def test_direction_files_are_checked_before_numpy_allocates(tmp_path, name, data, expect):
    from sfeditor.images.directions import DirectionError, load_direction

    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(DirectionError, match=expect) as ei:
        load_direction(p, w_dim=512)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "folder"])
def test_direction_loader_refuses_devices_fifos_and_folders(files, kind):
    from sfeditor.images.directions import load_direction

    with pytest.raises((ValueError, FileNotFoundError)):
        load_direction(files[kind], w_dim=512)


def _first_encoded_array(obj):
    if isinstance(obj, dict):
        if {"dtype", "shape", "base64"} <= set(obj):
            return obj
        for v in obj.values():
            found = _first_encoded_array(v)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _first_encoded_array(v)
            if found is not None:
                return found
    return None


def test_regions_file_with_a_huge_declared_array_is_refused(tmp_path):
    d = json.loads((ROOT / "resources" / "regions" / "toy-faces.json").read_text())
    arr = _first_encoded_array(d)
    assert arr is not None
    arr["shape"] = [65536, 65536, 64]
    p = tmp_path / "regions.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="do not hold an array of shape") as ei:
        RegionsFile.load(p)
    assert "\n" not in str(ei.value)


def test_composition_with_a_huge_declared_code_is_refused(tmp_path):
    from tests.editor_core_helpers import composition

    d = composition().to_dict()
    leaf = next(iter(d["nodes"]))
    d["nodes"][leaf]["code"] = {"dtype": "float32", "shape": [65536, 65536], "base64": "AAAAAA=="}
    p = tmp_path / "c.sfcomp.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="do not hold an array of shape"):
        Composition.load(p)
    png = tmp_path / "c.png"
    png.write_bytes(_png_with_text(json.dumps(d)))
    with pytest.raises(SessionError, match="do not hold an array of shape"):
        EditorSession.read_composition(png)


def test_composition_png_compression_bomb_is_refused_not_inflated(tmp_path):
    """An iTXt chunk of ~100 KB that would inflate to 100 MiB: refused at the 64 MiB limit."""
    import zlib

    from sfeditor.editor import composition as C

    payload = (C.PNG_KEYWORD.encode("latin-1") + b"\x00" + b"\x01\x00" + b"\x00\x00"
               + zlib.compress(b" " * (100 << 20), 9))
    assert len(payload) < 200_000
    png = encode_png(np.zeros((8, 8, 3), np.uint8))
    png = png[:-12] + C._chunk(b"iTXt", payload) + png[-12:]
    p = tmp_path / "bomb.png"
    p.write_bytes(png)
    with pytest.raises(SessionError, match="compression bomb"):
        EditorSession.read_composition(p)


# --------------------------------------------- shipped encoders, oracles, regions
@pytest.mark.parametrize("rel,load", [
    ("encoders/toy-faces.pt", lambda p: _encoder(p)),
    ("oracles/toy-faces.pt", lambda p: _oracle(p)),
    ("regions/toy-faces.json", lambda p: RegionsFile.load(p)),
    ("hierarchies/toy-faces.pt", lambda p: load_hierarchy(p)),
])
def test_every_corrupted_shipped_file_is_refused_and_named(tmp_path, monkeypatch, rel, load):
    from sfeditor import integrity

    root = tmp_path / "resources"
    target = root / rel
    target.parent.mkdir(parents=True)
    shutil.copy(ROOT / "resources" / rel, target)
    shutil.copy(ROOT / "resources" / "MANIFEST.json", root / "MANIFEST.json")
    monkeypatch.setattr(integrity, "resources_dir", lambda: root)
    monkeypatch.setattr(integrity, "_verified", {})
    load(target)                                                        # intact: loads
    if rel.endswith(".json"):                                           # still valid JSON: one digit changed
        data = bytearray(target.read_bytes())
        mid = next(i for i in range(len(data) // 2, len(data)) if chr(data[i]).isdigit())
        data[mid] = ord("7") if data[mid] != ord("7") else ord("3")
        target.write_bytes(bytes(data))
    else:
        flip_middle(target)                                             # the 16 flipped bytes
    with pytest.raises(ValueError, match=rf"{Path(rel).name}: content differs from resources/MANIFEST\.json") as ei:
        load(target)
    assert "\n" not in str(ei.value)


# ------------------------------------------------------------------ gui entry point
@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "folder"])
def test_gui_refuses_devices_fifos_and_folders_before_opening_a_window(files, kind, capsys, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    code, err = run_cli(["gui", "--no-recovery", files[kind]], capsys)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(files[kind]) in err


def test_gui_refuses_an_unknown_device(capsys, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    code, err = run_cli(["gui", "--device", "nosuchdevice"], capsys)
    assert code == 2 and "unknown device" in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------- other sfeditor commands' devices
DEVICE_CASES = [(cmd, dev) for cmd in (["invert", "x.png"], ["edit", "x.pt", "--pca", "0", "-s", "1"],
                                       ["transfer", "a.pt", "b.pt"])
                for dev in ("nosuchdevice", *(() if torch.cuda.is_available() else ("cuda",)))]


@pytest.mark.parametrize("argv,dev", DEVICE_CASES, ids=[f"{a[0]}-{d}" for a, d in DEVICE_CASES])
def test_every_command_validates_its_device(argv, dev, capsys):
    code, err = run_cli([*argv, "--device", dev], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error: argument --device" in last, err


# ------------------------------------------------------------------ trainer
def run_train(argv, capsys):
    from trainer import cli as tcli

    try:
        code = tcli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


TRAIN_CASES = [        # (argv, recipe keys written to a --recipe file or None, expected message)
    (["fusion", "--domain", "toy-faces", "--node", "all"], {"checkpoint_every": 0}, "must be at least 1"),
    (["fusion", "--domain", "toy-faces", "--node", "all"], {"sample_every": 0}, "must be at least 1"),
    (["fusion", "--domain", "toy-faces", "--node", "all", "--steps-scale", "nan"], None, "not a finite number"),
    (["fusion", "--domain", "toy-faces", "--node", "all"], {"lr": float("nan")}, "must be a finite number"),
    (["fusion", "--domain", "toy-faces", "--node", "all"], {"batch": 0}, "must be at least 1"),
    (["generator", "--domain", "toy-faces", "--steps-scale", "-1"], None, "out of range"),
    (["generator", "--domain", "toy-faces", "--steps-scale", "nan"], None, "not a finite number"),
    (["generator", "--domain", "toy-faces"], {"batch": 0}, "must be at least 1"),
    (["encoder", "--domain", "toy-faces"], {"lr": -1}, "must be a positive learning rate"),
    (["oracle", "--domain", "toy-faces"], {"batch": -5}, "must be at least 1"),
    (["generator", "--domain", "toy-faces", "--device", "nosuchdevice"], None, "unknown device"),
    (["fusion", "--domain", "toy-faces", "--node", "all", "--device", "nosuchdevice"], None, "unknown device"),
    (["fusion", "--domain", "toy-faces", "--node", "all", "--threads", "-1"], None, "out of range"),
]
if not torch.cuda.is_available():
    TRAIN_CASES.append((["fusion", "--domain", "toy-faces", "--node", "all", "--device", "cuda"], None,
                        "CUDA is not available"))


@pytest.mark.parametrize("argv,recipe,expect", TRAIN_CASES,
                         ids=[" ".join(a + [f"{k}={v}" for k, v in (r or {}).items()]) for a, r, _ in TRAIN_CASES])
def test_trainer_bad_arguments_are_one_line_errors(argv, recipe, expect, capsys, tmp_path):
    if recipe is not None:         # settings that are recipe keys, not flags (trainer/recipes/)
        (tmp_path / "bad.json").write_text(json.dumps(recipe))
        argv = [*argv, "--recipe", str(tmp_path / "bad.json")]
    code, err = run_train([*argv, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and expect in last, err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_trainer_unknown_node_names_the_tree(capsys, tmp_path):
    code, err = run_train(["fusion", "--domain", "toy-faces", "--node", "nosuch", "--out", tmp_path / "r",
                           "--device", "cpu"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "'nosuch'" in err and "hair" in err


HOLDER = ("import sys\n"
          "from sfeditor.locks import acquire\n"
          "lock = acquire(sys.argv[1], 'test holder')\n"
          "print('ready', flush=True)\n"
          "sys.stdin.read()\n")


@pytest.fixture
def held(tmp_path):
    """Another process holding the lock of a path (released when the test ends)."""
    procs = []

    def hold(path):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    yield hold
    for p in procs:
        p.stdin.close()
        p.wait(timeout=120)


@pytest.mark.parametrize("argv", [
    ["generator", "--domain", "toy-faces", "--device", "cpu", "--steps-scale", "0.001"],
    ["fusion", "--domain", "toy-faces", "--node", "all", "--device", "cpu", "--steps-scale", "0.001"],
], ids=["generator", "fusion"])
def test_a_second_trainer_on_the_same_out_is_refused_naming_the_first(argv, held, capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = held(out)
    code, err = run_train([*argv, "--out", out], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"pid {holder.pid}" in err and "in use" in err
    assert sorted(q.name for q in out.iterdir()) == [".lock"]              # nothing written by the second run


UPDATER = ("import sys, torch\n"
           "from tests.editor_core_helpers import tiny_generator, tiny_hierarchy\n"
           "from trainer.fusion import update_hierarchy_file\n"
           "path, node, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
           "torch.set_num_threads(1)\n"
           "G = tiny_generator(0)\n"
           "h = tiny_hierarchy(G, seed=seed)\n"
           "print('ready', flush=True)\n"
           "update_hierarchy_file(path, h.root, node, h.nets[node], layout=G.layout)\n")


def test_two_node_runs_into_one_hierarchy_keep_both_nets(G, held, tmp_path):
    """Both writers wait on the file's lock, then each adds its net: none is lost (it was 6 of 6 tries)."""
    path = tmp_path / "hierarchy.pt"
    nodes = [n for n in tiny_hierarchy(G).nets][:2]
    assert len(nodes) == 2
    holder = held(path)                       # both writers start while the file is locked
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    writers = [subprocess.Popen([sys.executable, "-c", UPDATER, str(path), node, str(i + 1)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i, node in enumerate(nodes)]
    for w in writers:
        assert w.stdout.readline().strip() == "ready"
    assert not path.exists()                  # neither wrote past the lock
    holder.stdin.close()
    holder.wait(timeout=120)
    for w in writers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    h = load_hierarchy(path)
    for i, node in enumerate(nodes):
        want = tiny_hierarchy(G, seed=i + 1).nets[node].state_dict()
        got = h.nets[node].state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), node


# ------------------------------------------------------------------ memory
MEMORY_PROBE = """
import resource, sys
from pathlib import Path
from sfeditor.model.checkpoints import read_checkpoint
from sfeditor.fusion.fusion_net import load_fusion_net
from sfeditor.fusion.hierarchy import load_hierarchy
from sfeditor.images.toy_encoder import load_toy_encoder
from sfeditor.images.e4e import read_e4e
from sfeditor.images.inversion import load_latents
from sfeditor.model.style_code import StyleCode
from sfeditor.images.directions import load_direction
from sfeditor.regions.regions_file import RegionsFile
from sfeditor.editor.composition import Composition
from sfeditor.editor.session import EditorSession
loaders = [read_checkpoint, load_fusion_net, load_hierarchy, load_toy_encoder, load_latents, read_e4e, StyleCode.load,
           lambda p: load_direction(p, w_dim=512), RegionsFile.load, Composition.load, EditorSession.read_composition]
refused = 0
for p in sys.argv[1:]:
    for f in loaders:
        try:
            f(p)
        except Exception:
            refused += 1
print(refused, len(loaders) * (len(sys.argv) - 1), """ + PEAK_KIB + """)
"""


def test_every_loader_stays_within_bounded_memory_on_every_bomb(files, tmp_path):
    """Every loader on every bomb in one child process: its peak RSS stays far below what they declare."""
    npy = tmp_path / "bomb.npy"
    npy.write_bytes(_npy((65536, 65536), b"\0" * 16))
    paths = [str(files[k]) for k in ("expanded_view", "storage_lie", "bytearray_pickle", "bytearray_zip")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *paths, str(npy)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    refused, tried, peak_kib = map(int, out.stdout.split())
    assert refused == tried
    assert peak_kib < 1_500_000, f"peak RSS {peak_kib / 1024:.0f} MiB"        # the bombs declare 16-64 GiB


# ------------------------------------------------------------------ atomic writes
KILLED_SAVER = ("import sys\n"
                "from sfeditor.atomic import atomic_path\n"
                "with atomic_path(sys.argv[1]) as tmp:\n"
                "    open(tmp, 'wb').write(b'half a file')\n"
                "    print(tmp, flush=True)\n"
                "    sys.stdin.read()\n")


def test_a_save_killed_midway_leaves_the_old_file_and_its_temp_is_cleaned_later(tmp_path):
    import signal

    from sfeditor.atomic import STALE_SECONDS, atomic_write_bytes

    target = tmp_path / "c.sfcomp.json"
    target.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    temps = []
    for _ in range(2):
        p = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(target)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        temps.append(Path(p.stdout.readline().strip()))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=120)
    assert target.read_bytes() == b"old" and all(t.is_file() for t in temps)
    old = temps[0].stat().st_mtime - STALE_SECONDS - 60
    os.utime(temps[0], (old, old))                       # one killed an hour ago, one just now
    atomic_write_bytes(tmp_path / "other.json", b"new")
    assert not temps[0].exists()                         # litter of the old kill removed
    assert temps[1].exists()                             # a young one may be another process's save in progress
    assert target.read_bytes() == b"old"


def test_atomic_write_fsyncs_the_data_before_the_rename(tmp_path, monkeypatch):
    from sfeditor import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_size)),
                                                       real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b))[1])
    atomic.atomic_write_bytes(tmp_path / "f.bin", b"x" * 1000)
    i = events.index(("replace", None))
    assert ("fsync", 1000) in events[:i]                  # the temp file's data reached the disk first
    assert any(e[0] == "fsync" for e in events[i + 1:])   # then the folder, so the rename is durable
    assert (tmp_path / "f.bin").read_bytes() == b"x" * 1000
