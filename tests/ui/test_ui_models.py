"""File ▸ Get models… (download with licence, progress, cancel + resume, errors, register, open) and the
editor's photo encoder (issue 40 item 5): the e4e installed for the model's domain starts the projector,
a persisted per-domain setting or `--encoder` overrides it; without one, today's behaviour."""
from __future__ import annotations

import dataclasses
import hashlib
import random
import threading

import pytest
import torch

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QPushButton  # noqa: E402

from ckpt_writers import random_generator, write_rosinality, write_tf_pkl  # noqa: E402
from editor_core_helpers import tiny_hierarchy  # noqa: E402
from model_server import model_server  # noqa: E402
from sfeditor.model import registry as M  # noqa: E402
from sfeditor.model.checkpoints import load_generator, save_generator  # noqa: E402
from sfeditor.images.imageio import save_png, to_uint8  # noqa: E402
from sfeditor.editor.session import ModelBundle  # noqa: E402
from sfeditor.ui.main_window import MainWindow  # noqa: E402
from sfeditor.ui.models_dialog import ModelsDialog  # noqa: E402
from ckpt_writers import tiny_e4e_checkpoint  # noqa: E402

WAIT = 60_000
TINY = dict(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8})
NAME = "stylegan2-church"
FILE = "/nets/stylegan2-church-config-f.pkl"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SFEDITOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SFEDITOR_AUTOSAVE", str(tmp_path / "autosave"))
    monkeypatch.delenv(M.BASE_URL_ENV, raising=False)
    monkeypatch.setitem(M.KNOWN, NAME, dataclasses.replace(M.KNOWN[NAME], resolution=16))


@pytest.fixture
def server():
    with model_server() as srv:
        yield srv


@pytest.fixture
def dialog(qtbot, server):
    d = ModelsDialog(base_url=server.base)
    qtbot.addWidget(d)
    yield d
    if d.job is not None:
        d.job.cancel()
        d.job.wait(30)


def _serve(server, tmp_path, writer=write_tf_pkl, seed=3):
    G = random_generator(seed, **TINY)
    writer(G, tmp_path / "g.pkl")
    data = (tmp_path / "g.pkl").read_bytes()
    server.files[FILE] = data
    return G, data


def _row(d, name):
    return next(i for i, r in enumerate(d.rows) if r["name"] == name)


def test_dialog_lists_downloads_with_licence_and_opens(qtbot, dialog, server, tmp_path):
    G, data = _serve(server, tmp_path)
    r = dialog.rows[_row(dialog, "stylegan2-ffhq")]
    assert r["url"].endswith("stylegan2-ffhq-config-f.pkl") and r["licence"] == M.NVIDIA_NC
    assert dialog.table.item(_row(dialog, "e4e-ffhq"), 3).text() == "fetch by hand"
    dialog.select("e4e-ffhq")
    assert not dialog.download_button.isEnabled() and "sfeditor models register e4e-ffhq" in dialog.details.text()
    asked = []
    dialog.ask_licence = lambda m: asked.append(m.name) or False          # the user declines
    dialog.select(NAME)
    assert dialog.download_button.isEnabled()
    dialog.download_button.click()
    assert asked == [NAME] and server.log == [] and "not accepted" in dialog.status.text()
    dialog.ask_licence = lambda m: asked.append(m.name) or True
    with qtbot.waitSignal(dialog.jobEnded, timeout=WAIT) as sig:
        dialog.download_button.click()
    assert sig.args == ["done"] and asked == [NAME, NAME]
    assert hashlib.sha256(data).hexdigest() in dialog.status.text()
    assert dialog.table.item(_row(dialog, NAME), 3).text() == "installed"
    assert dialog.selected() == NAME and dialog.open_button.isEnabled() and not dialog.download_button.isEnabled()
    with qtbot.waitSignal(dialog.openRequested, timeout=WAIT) as sig:
        dialog.open_button.click()
    spec = sig.args[0]
    assert spec == {"generator": str(M.installed_path(NAME)), "hierarchy": None, "domain": "church"}
    H = load_generator(spec["generator"], device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), H.state_dict().values()))
    dialog.remove_button.click()
    assert dialog.table.item(_row(dialog, NAME), 3).text() == "download" and NAME not in M.Registry().models


def test_dialog_cancel_keeps_the_part_and_resumes(qtbot, dialog, server, tmp_path):
    G, data = _serve(server, tmp_path)
    gate = threading.Event()
    server.stall[FILE] = (len(data) // 3, gate)
    M.Registry().accept(M.NVIDIA_NC)
    dialog.select(NAME)
    dialog.download_button.click()
    qtbot.waitUntil(lambda: dialog.progress is not None and dialog.progress.maximum() == 1000
                    and dialog.progress.value() > 0, timeout=WAIT)
    assert "MB" in dialog.progress.labelText()
    with qtbot.waitSignal(dialog.jobEnded, timeout=WAIT) as sig:
        dialog.progress.findChild(QPushButton).click()      # the Cancel button of the progress dialog
        gate.set()
    assert sig.args == ["cancelled"] and "resumes" in dialog.status.text()
    part = M.models_dir() / NAME / "stylegan2-church-config-f.pkl.part"
    have = part.stat().st_size
    assert have >= len(data) // 3 and NAME not in M.Registry().models
    with qtbot.waitSignal(dialog.jobEnded, timeout=WAIT) as sig:
        dialog.download_button.click()
    assert sig.args == ["done"] and server.log[-1] == (FILE, f"bytes={have}-")
    H = load_generator(M.installed_path(NAME), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), H.state_dict().values()))


def test_dialog_shows_server_and_load_errors(qtbot, dialog, server, tmp_path):
    M.Registry().accept(M.NVIDIA_NC)
    server.status[FILE] = 500
    dialog.select(NAME)
    with qtbot.waitSignal(dialog.jobEnded, timeout=WAIT) as sig:
        dialog.download_button.click()
    assert sig.args == ["failed"] and "HTTP 500" in dialog.last_error and dialog.progress is None
    del server.status[FILE]
    server.files[FILE] = b"\x80\x04" + bytes(range(200))
    with qtbot.waitSignal(dialog.jobEnded, timeout=WAIT) as sig:
        dialog.download_button.click()
    assert sig.args == ["failed"] and "failed the load check" in dialog.last_error
    assert sorted(p.name for p in M.models_dir().iterdir()) == ["registry.json"]


def test_dialog_registers_a_hand_fetched_file(qtbot, dialog, tmp_path):
    G = random_generator(4, **TINY)
    write_rosinality(G, tmp_path / "church.pt")
    with qtbot.waitSignal(dialog.jobEnded, timeout=WAIT) as sig:
        dialog.register(NAME, str(tmp_path / "church.pt"))
    assert sig.args == ["done"] and dialog.table.item(_row(dialog, NAME), 3).text() == "installed"
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with qtbot.waitSignal(dialog.jobEnded, timeout=WAIT) as sig:
        dialog.register("e4e-church", str(tmp_path / "junk.pt"))
    assert sig.args == ["failed"] and "junk.pt" in dialog.last_error


# ------------------------------------------------------------ item 5
def _e4e_world(tmp_path):
    """A 16 px generator with 512-d w (what e4e predicts), installed as domain 'tiny', and a tiny e4e for it."""
    torch.manual_seed(0)
    G0 = random_generator(8, size=16, style_dim=512, n_mlp=1, channels={4: 16, 8: 16, 16: 8})
    save_generator(G0, tmp_path / "tiny.pt")
    M.register("tiny-gen", tmp_path / "tiny.pt", kind="generator", domain="tiny")
    tiny_e4e_checkpoint(tmp_path / "e4e_tiny.pt", G0.n_latent, 16)
    M.register("tiny-e4e", tmp_path / "e4e_tiny.pt", kind="encoder", domain="tiny")
    gen = M.installed_path("tiny-gen")
    G = load_generator(gen, device="cpu").requires_grad_(False)
    # the bundle is named after the file, as `sfeditor gui --generator FILE` names it: the domain comes from the registry
    return ModelBundle(gen.stem, G, hierarchy=tiny_hierarchy(G), truncation=0.7, generator_source=str(gen)), G


def _window(qtbot, tmp_path, bundle):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(bundle, settings=settings, autosave_folder=tmp_path / "autosave", check_recovery=False)
    qtbot.addWidget(win)
    win.session.rng = random.Random(0)
    win.ask_unsaved = lambda action: "discard"
    qtbot.waitUntil(lambda: win.frames_shown >= 1, timeout=WAIT)
    return win


def test_photo_drop_starts_from_the_installed_e4e(qtbot, tmp_path):
    from sfeditor.images.alignment import prepare_image
    from sfeditor.images.e4e import E4EEncoder
    from sfeditor.images.intake import read_image
    from sfeditor.images.e4e import load_e4e
    from sfeditor.images.inversion import InversionSettings, Projector
    from sfeditor.model.identity import module_fingerprint

    bundle, G = _e4e_world(tmp_path)
    win = _window(qtbot, tmp_path, bundle)
    win.confirm_off_domain = lambda what, messages: True     # a random e4e reconstructs poorly: use it anyway
    try:
        path, how = win.photo_encoder_path()
        assert path == M.installed_path("tiny-e4e") and how == "installed for tiny"
        with torch.no_grad():
            img = to_uint8(G.synthesis(G.styles(G.sample_w(1, seed=5, truncation=0.5))))[0]
        save_png(tmp_path / "photo.png", img)
        got = []
        orig = win._photo_inverted
        win._photo_inverted = lambda res, node, p: (got.append(res), orig(res, node, p))
        win.graph.filesDropped.emit("left", [str(tmp_path / "photo.png")])
        qtbot.waitUntil(lambda: bool(got), timeout=120_000)
        assert win.session.composition.state("left").code is not None
        enc = win._encoder[1]
        ref_enc = load_e4e(path, G=G)
        assert isinstance(enc, E4EEncoder) and module_fingerprint(enc) == module_fingerprint(ref_enc)
        # the projector refined from the encoder's guess: same first-step PSNR as a projector given that encoder
        prep = prepare_image(read_image(tmp_path / "photo.png"), G.size, bundle.domain)
        settings = InversionSettings.for_generator(G, bundle.domain, steps=1)
        ref = Projector(G, settings, encoder=ref_enc, cache=False).invert(prep.image)
        mean = Projector(G, settings, encoder=None, cache=False).invert(prep.image)
        assert got[0].init_psnr == pytest.approx(ref.init_psnr, abs=1e-4)
        assert abs(got[0].init_psnr - mean.init_psnr) > 1e-3
        assert got[0].steps > 1
    finally:
        win.shutdown()


def test_photo_encoder_setting_and_override(qtbot, tmp_path):
    bundle, G = _e4e_world(tmp_path)
    win = _window(qtbot, tmp_path, bundle)
    try:
        tiny_e4e_checkpoint(tmp_path / "other_e4e.pt", G.n_latent, 16, seed=9)
        win.set_photo_encoder(str(tmp_path / "other_e4e.pt"))
        assert win.settings.value("photo-encoder/tiny") == str(tmp_path / "other_e4e.pt")
        assert win.photo_encoder_path() == (tmp_path / "other_e4e.pt", "given")
        win.encoder_override = str(tmp_path / "cli.pt")                  # `sfeditor gui --encoder cli.pt`
        assert win.photo_encoder_path()[0] == tmp_path / "cli.pt"
        win.encoder_override = None
        # a wrong encoder (for a 1024 px generator) is a clear error when a photo is dropped
        win.settings.setValue("photo-encoder/tiny", str(tmp_path / "missing.pt"))
        win._encoder = None
        save_png(tmp_path / "photo.png", to_uint8(G.synthesis(G.styles(G.sample_w(1, seed=1))))[0])
        win.graph.filesDropped.emit("left", [str(tmp_path / "photo.png")])
        qtbot.waitUntil(lambda: any("missing.pt" in e for e in win.errors), timeout=WAIT)
        win.set_photo_encoder(None)
        assert win.photo_encoder_path()[1] == "installed for tiny"
    finally:
        win.shutdown()
    # persisted: a new window for the same domain reads the setting
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("photo-encoder/tiny", str(tmp_path / "other_e4e.pt"))
    settings.sync()
    win2 = _window(qtbot, tmp_path, bundle)
    try:
        assert win2.photo_encoder_path() == (tmp_path / "other_e4e.pt", "given")
    finally:
        win2.shutdown()


def test_gui_arguments_open_installed_models(tmp_path):
    import argparse

    from sfeditor.ui.app import _installed_generator, add_gui_arguments

    p = argparse.ArgumentParser()
    add_gui_arguments(p)
    G = random_generator(4, **TINY)
    write_rosinality(G, tmp_path / "church.pt")
    M.register(NAME, tmp_path / "church.pt")
    args = p.parse_args(["--generator", NAME, "--encoder", "e.pt"])
    _installed_generator(args)
    assert (args.generator, args.domain, args.hierarchy, args.encoder) == \
        (str(M.installed_path(NAME)), "church", None, "e.pt")
    args = p.parse_args(["--generator", "stylegan2-ffhq"])
    with pytest.raises(M.ModelError, match="not installed; fetch it with `sfeditor models download stylegan2-ffhq`"):
        _installed_generator(args)
    args = p.parse_args(["--generator", str(tmp_path / "church.pt")])
    _installed_generator(args)                              # a file path is left as it is
    assert args.generator == str(tmp_path / "church.pt") and args.domain is None
