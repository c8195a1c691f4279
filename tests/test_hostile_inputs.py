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
from sfeditor.checkpoints import CheckpointError, read_checkpoint, save_generator
from sfeditor.composition import Composition, embed_in_png
from sfeditor.fusion_net import FusionNetConfig, load_fusion_net, read_weight_file
from sfeditor.hierarchy import HIERARCHY_FORMAT, load_hierarchy
from sfeditor.imageio import encode_png
from sfeditor.regions import RegionsFile
from sfeditor.safe_pickle import SafeUnpickler
from sfeditor.safe_torch import TorchFileError, safe_torch_load
from sfeditor.session import EditorSession, SessionError
from sfeditor.style_code import StyleCode
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
    from sfeditor.inversion import load_latents

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
    from sfeditor.safe_pickle import _rebuild_tensor_v2

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
    from sfeditor import composition as C

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
    from sfeditor.inversion import save_latents

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
    import sfeditor.checkpoints as ck

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(ck, "load_generator", boom)
    code, err = run_cli(["render", "-m", files["good_gen"], "-o", tmp_path / "a.jpgx"], capsys)
    assert code == 2 and "cannot tell the image format" in err


def test_render_refuses_output_that_would_not_fit_in_memory(files, capsys, tmp_path):
    code, err = run_cli(["render", "-m", "toy-faces", "--device", "cpu", "-s", "0-9999", "--scale", "16",
                         "-o", tmp_path / "big.png"], capsys)
    assert code == 2 and "GiB" in err, err


def test_memory_bomb_peak_is_bounded(files, tmp_path):
    """`sfeditor info` on the bombs, in a child process: its peak RSS stays far below what they declare."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code = ("import resource, sys\n"
            "from sfeditor import cli\n"
            "rc = [cli.main(['info', p]) for p in sys.argv[1:]]\n"
            "print(max(rc), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
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

    from sfeditor.image_intake import DamagedImageWarning, read_image

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
