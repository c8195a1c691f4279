"""Jobs in the window (issue 39 item 6): the status bar's Cancel cancels only the job it shows; a cancelled
heatmap says it is partial; GANSpace reports real progress; Reset clears "previewing"; the domain
drop-down shows whole names."""
from __future__ import annotations

import random
import threading

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402

import sfeditor.editor.locality as locality  # noqa: E402
from sfeditor.jobs import check_cancel  # noqa: E402
from sfeditor.ui.main_window import MainWindow  # noqa: E402

WAIT = 60_000
pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def win(qtbot, tmp_path, tiny_bundle):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(tiny_bundle, settings=settings, autosave_folder=tmp_path / "autosave", check_recovery=False)
    qtbot.addWidget(w)
    w.session.rng = random.Random(0)
    w.ask_unsaved = lambda action: "discard"
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=WAIT)
    yield w
    w.shutdown()


def waiting_job(started: threading.Event):
    """A job function that runs until cancelled."""
    def work(report, cancel):
        started.set()
        while True:
            check_cancel(cancel)
            threading.Event().wait(0.01)
    return work


def test_status_bar_cancel_cancels_only_the_job_it_shows(qtbot, win):
    a_started, b_started = threading.Event(), threading.Event()
    a = win.start_job("first", waiting_job(a_started), "first job")
    b = win.start_job("second", waiting_job(b_started), "second job")
    assert a_started.wait(30) and b_started.wait(30)
    assert win.job_label.text() == "second job" and win.status_job() is b
    win.job_cancel.click()
    qtbot.waitUntil(lambda: not b.is_running(), timeout=WAIT)
    assert a.is_running() and not a.token.requested
    qtbot.waitUntil(lambda: win.job_label.text() == "first job", timeout=WAIT)   # the bar shows the other
    win.job_cancel.click()
    qtbot.waitUntil(lambda: not a.is_running() and not win.job_cancel.isVisible(), timeout=WAIT)


def test_a_cancelled_heatmap_says_it_is_partial(qtbot, win, monkeypatch):
    gate = threading.Event()
    real = locality.locality_heatmap

    def paced(*args, **kw):                  # the real maps, held after the first one until cancelled
        for i, u in enumerate(real(*args, **kw)):
            yield u
            if i == 0:
                while not gate.is_set():
                    check_cancel(kw.get("cancel"))
                    threading.Event().wait(0.01)
    monkeypatch.setattr(locality, "locality_heatmap", paced)
    win.graph.heatmapRequested.emit("a")
    qtbot.waitUntil(lambda: win.preview.heatmap() is not None, timeout=WAIT)
    job = win.jobs["overlay"]
    qtbot.wait(300)                          # past the overlay's 120 ms debounce: no second job starts
    assert win.jobs["overlay"] is job        # one request, one heatmap job
    caption = win.preview.heatmap_caption().replace("&nbsp;", " ")
    assert "partial: 8/32 samples" in caption and "peak" in caption
    win.preview.cancelRequested.emit()       # the preview's Cancel
    qtbot.waitUntil(lambda: not job.is_running() and "cancelled" in win.preview.heatmap_status(), timeout=WAIT)
    assert win.preview.heatmap_status() == "cancelled at 8/32 samples: partial"
    assert "cancelled at 8/32 samples: partial" in win.preview.heatmap_caption()
    gate.set()


def test_ganspace_reports_progress_while_computing(qtbot, win):
    seen = []
    job = win.compute_pca()
    job.progress.connect(lambda i, n, info: seen.append((i, n)))
    qtbot.waitUntil(lambda: win.edit_panel.list.count() == 16 and not job.is_running(), timeout=WAIT)
    assert seen and seen[-1][0] == seen[-1][1] and seen[-1][1] > 1


def test_reset_clears_previewing(qtbot, win, tmp_path):
    G = win.session.bundle.G
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=G.style_dim).astype(np.float32))
    assert win.load_direction(str(tmp_path / "d.npy"))
    win.graph.select("a")
    win.edit_panel.set_strength(2.0)
    qtbot.waitUntil(lambda: win.edit_panel.target.text() == "previewing; Apply to keep", timeout=WAIT)
    win.edit_panel.reset_btn.click()
    qtbot.waitUntil(lambda: "previewing" not in win.edit_panel.target.text(), timeout=WAIT)
    assert "a" in win.edit_panel.target.text()


def test_domain_drop_down_shows_whole_names(qtbot, win):
    win.show()
    qtbot.waitExposed(win)
    box = win.domain_box
    need = max(box.fontMetrics().horizontalAdvance(box.itemText(i)) for i in range(box.count()))
    assert box.width() >= need + 30


def test_view_options_are_kept_across_launches(qtbot, tmp_path, tiny_bundle):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    first = MainWindow(tiny_bundle, settings=settings, autosave_folder=tmp_path / "autosave", check_recovery=False)
    qtbot.addWidget(first)
    assert first.preview.heatmap_scale() == "fixed" and first.preview.magnification() == "pixels"
    first.preview.set_heatmap_scale("per map")
    first.preview.set_magnification("smooth")
    first.shutdown()
    second = MainWindow(tiny_bundle, settings=settings, autosave_folder=tmp_path / "autosave", check_recovery=False)
    qtbot.addWidget(second)
    assert second.preview.heatmap_scale() == "per map" and second.preview.magnification() == "smooth"
    second.shutdown()


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_default_layout_gives_the_preview_the_space(qtbot, win, size):
    """Issue 39 item 8: at 1280x800 the preview had ~340 px and the inspector was half empty."""
    win.resize(*size)
    win.show()
    qtbot.waitExposed(win)
    qtbot.waitUntil(lambda: win.preview.width() > 1.3 * win.graph.width(), timeout=WAIT)
    assert win._dock.width() <= 340                        # the inspector as narrow as its content
    assert win.preview.width() >= 0.42 * size[0]
    # the cards' names: readable captions when the graph is fitted this small
    from sfeditor.ui.node_graph import READABLE_PX, NodeItem
    z = win.graph.zoom_level()
    assert 12.5 * z >= READABLE_PX or NodeItem.caption_font_px(z) * z == pytest.approx(READABLE_PX)


def test_shortcut_list_is_a_table_read_from_the_actions(qtbot, win):
    box = win.show_shortcuts()
    rows = win.shortcut_rows()
    text = box.text()
    assert text.startswith("<table") and text.count("<tr>") >= len(rows)
    assert ("Graph", "R", "re-roll the selected nodes") in rows
    keys = {(section, what): k for section, k, what in rows}
    assert keys[("Tools", "Hair / region transfer")] == "Ctrl+T"
    assert keys[("Edit", "Undo")] and keys[("File", "Save")]      # the platform's standard keys
    box.close()


def test_transfer_dialog_shows_thumbnails(qtbot, tmp_path):
    import cv2
    from PySide6.QtGui import QColor

    from sfeditor.ui.transfer_dialog import THUMB_PX, TransferDialog

    current = np.zeros((64, 64, 3), np.uint8)
    current[..., 1] = 255                                   # the composition's frame: green
    d = TransferDialog(["hair", "eyes"], "hair", current_image=current)
    qtbot.addWidget(d)
    pm = d.target.thumbnail()
    assert pm is not None and QColor(pm.toImage().pixel(pm.width() // 2, pm.height() // 2)).green() == 255
    assert d.reference.thumbnail() is None                  # nothing chosen yet
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[..., 2] = 255                                     # BGR: red
    cv2.imwrite(str(tmp_path / "ref.png"), photo)
    d.reference.set_path(str(tmp_path / "ref.png"))
    pm = d.reference.thumbnail()
    assert (pm.width(), pm.height()) == (THUMB_PX, THUMB_PX * 3 // 4)
    assert QColor(pm.toImage().pixel(10, 10)).red() == 255 and "400×300" in d.reference.label.text()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    d.reference.set_path(str(tmp_path / "bad.png"))
    assert d.reference.thumbnail() is None and "not a readable image" in d.reference.label.text()
    d.reference.set_path(str(tmp_path / "missing.png"))
    assert d.reference.thumbnail() is None and "no such file" in d.reference.label.text()
