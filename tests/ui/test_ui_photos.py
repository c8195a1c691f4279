"""Photos in the window (issue 39): an off-domain photo is judged after inversion and the user is told
plainly before its code is used; a photo of the domain goes straight in; inversion progress has an ETA;
File ▸ Open takes photos the way a drop does."""
from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QFileDialog, QMessageBox  # noqa: E402

import sfeditor.images.inversion as inversion  # noqa: E402
from sfeditor.images.imageio import save_png  # noqa: E402
from sfeditor.editor.session import load_bundle  # noqa: E402
from sfeditor.toy import render  # noqa: E402
from sfeditor.ui.main_window import MainWindow  # noqa: E402

WAIT = 120_000
B = QMessageBox.StandardButton
pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SFEDITOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SFEDITOR_AUTOSAVE", str(tmp_path / "autosave"))
    # fewer projector steps than the preset (the encoder's start does most of the work on toy domains)
    orig = inversion.InversionSettings.for_generator.__func__
    monkeypatch.setattr(inversion.InversionSettings, "for_generator",
                        classmethod(lambda cls, G, domain=None, **kw: orig(cls, G, domain, **{"steps": 40, **kw})))


@pytest.fixture(scope="module")
def faces():
    return load_bundle("toy-faces", device="cpu")


class Warnings:
    def __init__(self):
        self.answer, self.shown = B.No, []

    def __call__(self, parent, title, text, *a, **k):
        self.shown.append(text)
        return self.answer


@pytest.fixture
def warned(monkeypatch):
    w = Warnings()
    monkeypatch.setattr(QMessageBox, "warning", w)
    return w


@pytest.fixture
def win(qtbot, tmp_path, faces, warned):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(faces, settings=settings, autosave_folder=tmp_path / "autosave", check_recovery=False)
    qtbot.addWidget(w)
    w.session.rng = random.Random(0)
    w.ask_unsaved = lambda action: "discard"
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=WAIT)
    yield w
    w.shutdown()


def landscape(size=96) -> np.ndarray:
    y = np.linspace(0, 1, size)[:, None, None]
    img = np.broadcast_to(np.array([90, 150, 230]) * (1 - y) + np.array([200, 220, 255]) * y, (size, size, 3)).copy()
    for c in range(size):
        img[int(size * 0.55 + 10 * np.sin(c / 9)):, c] = [40 + c, 110, 40]
    return img.astype(np.uint8)


def test_off_domain_photo_is_flagged_before_use(qtbot, win, warned, tmp_path):
    save_png(tmp_path / "landscape.png", landscape())
    progress = []
    win.invert_photo(tmp_path / "landscape.png", "").progress.connect(lambda s, t, info: progress.append(info))
    qtbot.waitUntil(lambda: len(warned.shown) == 1 and not win._running, timeout=WAIT)
    assert "does not look like a toy-faces image" in warned.shown[0]
    assert all(st.code is None for st in win.session.composition.nodes.values())     # "No": nothing used
    assert len(win.session.stack) == 0 and not win.last_domain_verdicts[0].ok
    assert "does not look like the domain" in win.preview.message()
    assert any("eta_s" in info for info in progress)                                # the bar shows an ETA
    warned.answer = B.Yes                                                           # "use it anyway"
    win.invert_photo(tmp_path / "landscape.png", "hair")
    qtbot.waitUntil(lambda: len(warned.shown) == 2 and not win._running, timeout=WAIT)
    assert win.session.composition.state("hair").code is not None


def test_photo_of_the_domain_goes_in_without_a_warning_via_file_open(qtbot, win, warned, tmp_path, monkeypatch):
    imgs, _ = render("toy-faces", [4242], 64)
    save_png(tmp_path / "face.png", imgs[0])
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tmp_path / "face.png"), ""))
    win.open_dialog()                                  # File ▸ Open: a photo is inverted, as when dropped
    qtbot.waitUntil(lambda: len(win.session.stack) == 1 and not win._running, timeout=WAIT)
    assert warned.shown == [] and win.last_domain_verdicts[0].ok
    assert all(st.code is not None for st in win.session.composition.nodes.values())
    assert "looks like toy-faces" in win.statusBar().currentMessage()
