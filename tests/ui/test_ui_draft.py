"""The window with a large model on the CPU: a draft frame first, drawn at the full frame's size, then
the full frame; export waits for the full frame; the heatmap overlay is computed on drafts."""
from __future__ import annotations

import random
import threading

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402

from editor_core_helpers import tiny_hierarchy  # noqa: E402
from sfeditor import Generator  # noqa: E402
from sfeditor.editor.session import ModelBundle  # noqa: E402
from sfeditor.ui.main_window import MainWindow  # noqa: E402
from sfeditor.ui.window_common import HEATMAP_RESOLUTION  # noqa: E402

WAIT = 30_000


class GatedGenerator(Generator):
    """A 512 px generator (4 channels a layer: cheap) whose full-size synthesis can be held back."""

    gate: threading.Event | None = None

    def synthesis(self, s, *args, max_resolution=None, **kw):
        if self.gate is not None and max_resolution is None and not kw.get("return_features"):
            assert self.gate.wait(20)
        return super().synthesis(s, *args, max_resolution=max_resolution, **kw)


def open_window(qtbot, tmp_path, faithful: bool = True) -> MainWindow:
    torch.manual_seed(0)
    G = GatedGenerator(size=512, style_dim=16, n_mlp=1, channels={r: 4 for r in (4, 8, 16, 32, 64, 128, 256, 512)})
    G.eval().requires_grad_(False)
    with torch.no_grad():
        if faithful:                          # the finest toRGB adds nothing: its 256 px draft passes the check
            G.to_rgbs[-1].conv.weight.zero_()
            G.to_rgbs[-1].bias.zero_()
        else:                                 # the finest toRGB shifts the colours: the draft lacks that
            G.to_rgbs[-1].bias.copy_(torch.tensor([0.8, -0.8, 0.4]).view(1, 3, 1, 1))
    bundle = ModelBundle("big", G, hierarchy=tiny_hierarchy(G), truncation=0.7)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(bundle, settings=settings, autosave_folder=tmp_path / "autosave", check_recovery=False)
    qtbot.addWidget(w)
    w.session.rng = random.Random(0)
    w.ask_unsaved = lambda action: "discard"
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=WAIT)
    return w


@pytest.fixture
def win(qtbot, tmp_path):
    w = open_window(qtbot, tmp_path)
    yield w
    w.session.bundle.G.gate = None


def test_draft_first_then_full_frame(qtbot, win):
    assert win.bridge.service.draft_resolution == 256
    qtbot.waitUntil(lambda: "drafts shown" in win.statusBar().currentMessage(), timeout=WAIT)
    assert win.bridge.service.drafts_ok                    # checked after the first frame
    shown = []
    set_frame = win.preview.set_frame
    win.preview.set_frame = lambda rgb, size=None: (shown.append((rgb.shape[:2], size)), set_frame(rgb, size))
    G = win.session.bundle.G
    G.gate = threading.Event()
    drafts = win.drafts_shown
    win.graph.rerollRequested.emit(win.session.composition.leaves[0])
    qtbot.waitUntil(lambda: win.drafts_shown > drafts, timeout=WAIT)
    # the draft is on screen, drawn as large as the full frame, and says what it is
    assert win.last_result.draft and win.preview.frame().shape == (256, 256, 3)
    assert shown[-1] == ((256, 256), (512, 512))
    assert win.preview._extent().width() == 512
    assert "draft 256 px" in win.frame_label.text()
    G.gate.set()
    assert win.bridge.wait_until_idle(30)
    qtbot.waitUntil(lambda: not win.last_result.draft, timeout=WAIT)
    assert win.preview.frame().shape == (512, 512, 3) and shown[-1] == ((512, 512), None)
    assert "latency" in win.frame_label.text()
    # thumbnails are capped at 128 px
    qtbot.waitUntil(lambda: len(win.thumbnails) == len(win.session.composition.node_names), timeout=WAIT)
    assert all(t.shape == (128, 128, 3) for t in win.thumbnails.values())


def test_export_waits_for_the_full_frame(qtbot, win, tmp_path):
    G = win.session.bundle.G
    G.gate = threading.Event()
    drafts = win.drafts_shown
    win.graph.rerollRequested.emit(win.session.composition.leaves[0])
    qtbot.waitUntil(lambda: win.drafts_shown > drafts, timeout=WAIT)
    assert win.last_result.draft
    threading.Timer(0.3, G.gate.set).start()          # the full frame finishes while export waits
    assert win.export_png(tmp_path / "big.png")
    img = cv2.imread(str(tmp_path / "big.png"))
    assert img.shape == (512, 512, 3)
    assert not win.last_result.draft
    assert np.array_equal(img[..., ::-1], win.preview.frame())


def test_heatmap_of_a_large_model_is_computed_on_drafts(qtbot, win):
    # the draft check runs after the first frame is delivered: wait until it has settled (on a busy
    # machine the heatmap could otherwise start before it and rightly fall back to full size)
    qtbot.waitUntil(lambda: win.bridge.service.low_resolution_ok(HEATMAP_RESOLUTION) is not None, timeout=WAIT)
    assert win.bridge.service.low_resolution_ok(HEATMAP_RESOLUTION) is True
    win.preview.set_overlay_mode("heatmap")
    win.show_heatmap_for(win.session.composition.leaves[0])
    qtbot.waitUntil(lambda: win.preview._heatmap is not None, timeout=WAIT)
    assert win.wait_for_jobs(60)
    assert win.preview._heatmap.shape == (HEATMAP_RESOLUTION, HEATMAP_RESOLUTION)
    assert win.preview._extent().width() == 512          # stretched over the full frame


def test_a_model_whose_drafts_are_off_renders_full_size(qtbot, tmp_path):
    """The finest layer shifts the colours, so the 256 px image is no stand-in for the frame: no drafts,
    thumbnails and the heatmap at full size, and the status bar says why."""
    win = open_window(qtbot, tmp_path, faithful=False)
    service = win.bridge.service
    qtbot.waitUntil(lambda: "drafts off" in win.statusBar().currentMessage(), timeout=WAIT)
    assert service.drafts_ok is False and service.fidelity[256] < 20
    drafts = win.drafts_shown
    win.graph.rerollRequested.emit(win.session.composition.leaves[0])
    assert win.bridge.wait_until_idle(30)
    qtbot.waitUntil(lambda: len(win.thumbnails) == len(win.session.composition.node_names), timeout=WAIT)
    assert win.drafts_shown == drafts and service.drafts == 0
    assert all(t.shape == (512, 512, 3) for t in win.thumbnails.values())
    win.preview.set_overlay_mode("heatmap")
    win.show_heatmap_for(win.session.composition.leaves[0])
    qtbot.waitUntil(lambda: win.preview._heatmap is not None, timeout=WAIT)
    assert win.wait_for_jobs(60)
    assert win.preview._heatmap.shape == (512, 512)
