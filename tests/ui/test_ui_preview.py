"""Tests for sfeditor.ui.preview.PreviewWidget (display only, no torch)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QMimeData, QPoint, QPointF, QRectF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from sfeditor.ui.preview import DEFAULT_PALETTE, PreviewWidget  # noqa: E402


@pytest.fixture
def w(qtbot):
    widget = PreviewWidget()
    qtbot.addWidget(widget)
    widget.resize(640, 480)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def _collect(signal):
    got = []
    signal.connect(got.append)
    return got


def _view_rect(item):
    return item.mapRectToView(item.boundingRect())


def _labels(h=64, w=64):
    yy, xx = np.mgrid[0:h, 0:w]
    lab = np.zeros((h, w), np.int64)
    lab[:, w // 2:] = 1
    lab[h // 2:, :] = 2
    lab[h // 2:, w // 2:] = 3
    return lab


# ------------------------------------------------------------------- frame
def test_frame_round_trip_and_orientation(w):
    assert w.frame() is None
    h, wd = 40, 64  # non-square: catches a transposed image
    rgb = np.zeros((h, wd, 3), np.uint8)
    rgb[0, 5] = (255, 0, 0)
    w.set_frame(rgb)
    out = w.frame()
    assert out is not rgb and np.array_equal(out, rgb)
    rgb[0, 5] = 0  # the widget keeps its own copy
    assert w.frame()[0, 5, 0] == 255

    item = w.frame_item
    assert item.image.shape == (h, wd, 3)
    assert (item.width(), item.height()) == (wd, h)
    assert _view_rect(item) == QRectF(0, 0, wd, h)
    assert w.view.yInverted()

    # render and check that input (row 0, col 5) is drawn at the top row, column 5
    w.fit()
    QApplication.processEvents()
    img = w.graphics_widget.grab().toImage()

    def colour_at(col, row):
        p = w.view.mapViewToDevice(QPointF(col + 0.5, row + 0.5))
        return QColor(img.pixel(int(p.x()), int(p.y())))

    assert colour_at(5, 0).red() > 200 and colour_at(5, 0).green() < 50
    assert colour_at(0, 5).red() < 50  # not transposed
    assert colour_at(5, h - 1).red() < 50  # not flipped vertically
    top = w.view.mapViewToDevice(QPointF(5, 0)).y()
    bottom = w.view.mapViewToDevice(QPointF(5, h)).y()
    assert top < bottom


def test_frame_uint8_levels_not_autoscaled(w):
    rgb = np.full((8, 8, 3), 100, np.uint8)
    w.set_frame(rgb)
    assert list(w.frame_item.getLevels()) == [0, 255]


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8), np.uint8), "shape"),
        (np.zeros((8, 8, 4), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "shape"),
        ([[0, 0, 0]], "numpy array"),
    ],
)
def test_frame_invalid(w, bad, match):
    with pytest.raises(ValueError, match=match):
        w.set_frame(bad)
    assert w.frame() is None


# ----------------------------------------------------------------- heatmap
@pytest.mark.parametrize("hm_shape", [(16, 16), (128, 100)])
def test_heatmap_scaled_to_frame_extent(w, hm_shape):
    w.set_frame(np.zeros((48, 64, 3), np.uint8))
    w.set_heatmap(np.random.default_rng(0).random(hm_shape))
    assert _view_rect(w.heatmap_item) == _view_rect(w.frame_item) == QRectF(0, 0, 64, 48)
    # a later frame of another size rescales the existing overlay
    w.set_frame(np.zeros((256, 256, 3), np.uint8))
    assert _view_rect(w.heatmap_item) == QRectF(0, 0, 256, 256)


def test_colorbar_levels_follow_values_and_vmax(w):
    w.set_frame(np.zeros((32, 32, 3), np.uint8))
    vals = np.zeros((16, 16), np.float32)
    vals[3, 4] = 3.5
    w.set_heatmap_scale("per map")
    w.set_heatmap(vals, title="eyes")
    assert w.colorbar.levels() == pytest.approx((0.0, 3.5))
    assert list(w.heatmap_item.getLevels()) == pytest.approx([0.0, 3.5])
    w.set_heatmap(vals, vmax=10.0)
    assert w.colorbar.levels() == pytest.approx((0.0, 10.0))
    assert list(w.heatmap_item.getLevels()) == pytest.approx([0.0, 10.0])
    w.set_heatmap(np.zeros((4, 4)))  # all-zero map still gets a usable scale
    assert w.colorbar.levels() == pytest.approx((0.0, 1.0))
    with pytest.raises(ValueError, match="vmax"):
        w.set_heatmap(vals, vmax=0.0)


def test_heatmap_nan_sanitised_and_invalid_rejected(w):
    vals = np.ones((8, 8), np.float64)
    vals[0, 0] = np.nan
    vals[1, 1] = np.inf
    w.set_heatmap_scale("per map")   # the scale follows the finite peak (inf is not the peak)
    w.set_heatmap(vals)  # documented: non-finite -> 0
    hm = w.heatmap()
    assert np.isfinite(hm).all() and hm[0, 0] == 0 and hm[1, 1] == 0 and hm[2, 2] == 1
    assert w.colorbar.levels() == pytest.approx((0.0, 1.0))
    with pytest.raises(ValueError, match="2-D"):
        w.set_heatmap(np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        w.set_heatmap(-np.ones((4, 4)))
    with pytest.raises(ValueError, match="dtype"):
        w.set_heatmap(np.ones((4, 4), complex))


# ------------------------------------------------------------------- masks
def test_masks_rgba_follows_labels_and_opacity(w):
    w.set_frame(np.zeros((64, 64, 3), np.uint8))
    lab = _labels(32, 32)  # smaller than the frame: stretched over it
    lab[0, 0] = -1  # unassigned -> transparent
    cols = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)], np.uint8)
    w.set_opacity(0.5)
    w.set_masks(lab, ["a", "b", "c", "d"], cols)
    rgba = w.masks_item.image
    assert rgba.shape == (32, 32, 4) and rgba.dtype == np.uint8
    for r, c in [(5, 5), (5, 20), (20, 5), (20, 20)]:
        assert tuple(rgba[r, c, :3]) == tuple(cols[lab[r, c]])
        assert rgba[r, c, 3] == 128
    assert rgba[0, 0, 3] == 0
    assert _view_rect(w.masks_item) == QRectF(0, 0, 64, 64)
    w.set_opacity(0.25)
    assert w.masks_item.image[5, 5, 3] == 64
    assert w.masks_item.image[0, 0, 3] == 0


def test_masks_default_palette_float_colours_and_errors(w):
    lab = _labels(8, 8)
    w.set_masks(lab, ["a", "b", "c", "d"])
    assert np.array_equal(w.mask_colours(), DEFAULT_PALETTE[:4])
    assert tuple(w.masks_item.image[7, 7, :3]) == tuple(DEFAULT_PALETTE[3])
    w.set_masks(lab, [], np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]]))
    assert tuple(w.masks_item.image[7, 7, :3]) == (255, 255, 255)
    with pytest.raises(ValueError, match="integer"):
        w.set_masks(lab.astype(np.float32), ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="out of range"):
        w.set_masks(lab, ["a", "b"])
    with pytest.raises(ValueError, match="colours"):
        w.set_masks(lab, ["a", "b", "c", "d"], np.zeros((2, 3), np.uint8))


def test_clear_overlays(w):
    w.set_frame(np.zeros((16, 16, 3), np.uint8))
    w.set_heatmap(np.ones((16, 16)))
    w.set_masks(_labels(16, 16), ["a", "b", "c", "d"])
    w.set_overlay_mode("heatmap")
    assert w.colorbar_visible() and w.heatmap_item.isVisible()
    w.set_heatmap(None)
    assert w.heatmap() is None and w.heatmap_item.image is None
    assert not w.heatmap_item.isVisible() and not w.colorbar_visible()
    w.set_overlay_mode("masks")
    assert w.masks_item.isVisible()
    w.set_masks(None, [])
    assert w.masks_item.image is None and not w.masks_item.isVisible()
    assert w.mask_colours() is None


# ------------------------------------------------------- modes and signals
def test_overlay_mode_switching_visibility_and_signals(w):
    w.set_frame(np.zeros((16, 16, 3), np.uint8))
    w.set_heatmap(np.ones((8, 8)))
    w.set_masks(_labels(16, 16), ["a", "b", "c", "d"])
    got = _collect(w.overlayModeChanged)
    assert w.overlay_mode() == "none"
    assert not w.heatmap_item.isVisible() and not w.masks_item.isVisible()
    assert not w.colorbar_visible()

    w.set_overlay_mode("heatmap")
    assert got == ["heatmap"] and w.overlay_mode() == "heatmap"
    assert w.heatmap_item.isVisible() and not w.masks_item.isVisible() and w.colorbar_visible()
    w.set_overlay_mode("heatmap")  # unchanged -> no signal
    assert got == ["heatmap"]

    w.set_overlay_mode("masks")
    assert got == ["heatmap", "masks"]
    assert w.masks_item.isVisible() and not w.heatmap_item.isVisible() and not w.colorbar_visible()

    w.set_overlay_mode("none")
    assert got == ["heatmap", "masks", "none"]
    assert not w.heatmap_item.isVisible() and not w.masks_item.isVisible()
    with pytest.raises(ValueError, match="overlay mode"):
        w.set_overlay_mode("bogus")


def test_heatmap_mode_opacity_and_compare_signals(w):
    modes, opac, comp = _collect(w.heatmapModeChanged), _collect(w.opacityChanged), _collect(w.compareChanged)
    assert w.heatmap_mode() == "fixed"
    w.set_heatmap_mode("random")
    w.set_heatmap_mode("random")
    assert modes == ["random"] and w.heatmap_mode() == "random"
    with pytest.raises(ValueError):
        w.set_heatmap_mode("other")

    w.set_opacity(0.3)
    w.set_opacity(0.3)
    assert opac == [pytest.approx(0.3)] and w.opacity() == pytest.approx(0.3)
    w.set_opacity(7)  # clamped
    assert w.opacity() == 1.0
    with pytest.raises(ValueError):
        w.set_opacity(float("nan"))

    w.set_compare_enabled(True)
    w.set_compare_enabled(True)
    assert comp == [True] and w.compare_enabled()
    w.set_compare_enabled(False)
    assert comp == [True, False]


def test_heatmap_opacity_applies_to_item(w):
    w.set_heatmap(np.ones((8, 8)))
    w.set_overlay_mode("heatmap")
    w.set_opacity(0.4)
    assert w.heatmap_item.opacity() == pytest.approx(0.4)


# ---------------------------------------------------------------- progress
def test_progress_visibility_and_cancel(w, qtbot):
    assert not w.progress_visible()
    w.set_progress(3, 10, "heatmap")
    assert w.progress_visible()
    assert w._progress.value() == 3 and w._progress.maximum() == 10
    assert "heatmap" in w._progress.format() and "3/10" in w._progress.format()
    assert w._cancel_button.isVisible()
    w.set_progress(4, 10, "eyes: 4/10")  # count already in the text: not repeated
    assert w._progress.format() == "eyes: 4/10"
    with qtbot.waitSignal(w.cancelRequested, timeout=1000):
        qtbot.mouseClick(w._cancel_button, Qt.MouseButton.LeftButton)
    w.set_progress(0, 0)
    assert not w.progress_visible() and not w._cancel_button.isVisible()


# ----------------------------------------------------------------- compare
def test_compare_shows_reference_left_of_current(w):
    cur = np.zeros((32, 32, 3), np.uint8)
    ref = np.full((32, 32, 3), 200, np.uint8)
    w.set_frame(cur)
    w.set_compare(ref, label="start")
    assert not w.compare_item.isVisible()  # compare mode off
    w.set_compare_enabled(True)
    assert w.compare_item.isVisible()
    assert np.array_equal(w.compare_item.image, ref) and np.array_equal(w.compare_image(), ref)
    r = _view_rect(w.compare_item)
    assert r.right() < 0 and r.height() == 32 and r.width() == 32
    assert w._before_text.isVisible() and w._before_text.textItem.toPlainText() == "start"
    assert w._now_text.isVisible()
    # the fitted view contains both images
    (x0, x1), _ = w.view.viewRange()
    assert x0 <= r.left() and x1 >= 32
    w.set_compare_enabled(False)
    assert not w.compare_item.isVisible() and not w._now_text.isVisible()
    w.set_compare(None)
    assert w.compare_image() is None


# ------------------------------------------------------------- drag & drop
def _mime(urls):
    mime = QMimeData()
    mime.setUrls(urls)
    return mime


def test_file_drop_emits_paths(w, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.pt"
    mime = _mime([QUrl.fromLocalFile(str(a)), QUrl.fromLocalFile(str(b)), QUrl("https://example.com/x.png")])
    got = _collect(w.filesDropped)
    enter = QDragEnterEvent(QPoint(20, 20), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(w, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(w, drop)
    assert got == [[str(a), str(b)]]


def test_drop_without_local_files_ignored(w):
    mime = _mime([QUrl("https://example.com/x.png")])
    got = _collect(w.filesDropped)
    drop = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(w, drop)
    assert got == []


# -------------------------------------------------------- message and theme
def test_message_and_theme(w):
    w.set_message("no hierarchy: showing root code")
    assert w._message_label.isVisible() and "root code" in w._message_label.text()
    assert w.message() == "no hierarchy: showing root code"
    w.set_message("")
    assert not w._message_label.isVisible()
    assert w.is_dark()
    assert w.graphics_widget.backgroundBrush().color().name().lower() == "#19232d"
    w.set_dark(False)
    assert not w.is_dark()
    assert w.graphics_widget.backgroundBrush().color().lightness() > 200


def test_fit_after_zoom(w):
    w.set_frame(np.zeros((64, 64, 3), np.uint8))
    w.view.scaleBy((0.1, 0.1))
    (x0, x1), _ = w.view.viewRange()
    assert x1 - x0 < 20
    w.fit()
    (x0, x1), (y0, y1) = w.view.viewRange()
    assert x0 <= 0 and x1 >= 64 and y0 <= 0 and y1 >= 64


def test_drop_on_graphics_viewport_reaches_widget(w, tmp_path):
    """Real drags land on the graphics view's viewport; they must propagate."""
    path = str(tmp_path / "face.jpg")
    mime = _mime([QUrl.fromLocalFile(path)])
    got = _collect(w.filesDropped)
    vp = w.graphics_widget.viewport()
    enter = QDragEnterEvent(QPoint(20, 20), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp, enter)
    assert enter.isAccepted() and "Drop to load 1 file" in w._message_label.text()
    drop = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp, drop)
    assert got == [[path]]
    assert not w._message_label.isVisible()  # drag hint removed, no message set


def test_overlays_without_frame_use_own_extent(w):
    w.set_heatmap(np.ones((20, 30)))
    assert _view_rect(w.heatmap_item) == QRectF(0, 0, 30, 20)
    w.set_masks(_labels(20, 30), ["a", "b", "c", "d"])
    assert _view_rect(w.masks_item) == QRectF(0, 0, 30, 20)


def test_heatmap_scale_fixed_by_default_with_the_peak_shown(w):
    """Issue 39: a weak code looks weak (fixed scale across nodes); the caption gives the peak."""
    from sfeditor.ui.preview import HEATMAP_FIXED_VMAX

    w.set_frame(np.zeros((32, 32, 3), np.uint8))
    w.set_overlay_mode("heatmap")
    weak = np.full((16, 16), 0.01, np.float32)
    weak[2, 2] = 0.05
    assert w.heatmap_scale() == "fixed"
    w.set_heatmap(weak, title="eyes")
    assert w.colorbar.levels() == pytest.approx((0.0, HEATMAP_FIXED_VMAX))
    assert "peak 0.05" in w.heatmap_caption().replace("&nbsp;", " ") and "(fixed)" in w.heatmap_caption()
    got = _collect(w.heatmapScaleChanged)
    w.set_heatmap_scale("per map")                       # the option: stretch to the map's peak
    assert got == ["per map"] and w.colorbar.levels() == pytest.approx((0.0, 0.05))
    assert "(per map)" in w.heatmap_caption()
    with pytest.raises(ValueError):
        w.set_heatmap_scale("log")


def test_heatmap_status_says_partial(w):
    w.set_overlay_mode("heatmap")
    w.set_heatmap(np.ones((8, 8)), title="hair", status="cancelled at 8/32 samples: partial")
    assert "cancelled at 8/32 samples: partial" in w.heatmap_caption()
    w.set_heatmap_status("")
    assert "partial" not in w.heatmap_caption()


def test_magnification_option_sets_smooth_pixmap_transform(w):
    from PySide6.QtGui import QPainter

    hint = QPainter.RenderHint.SmoothPixmapTransform
    assert w.magnification() == "pixels" and not (w.graphics_widget.renderHints() & hint)
    got = _collect(w.magnificationChanged)
    w.set_magnification("smooth")
    assert got == ["smooth"] and (w.graphics_widget.renderHints() & hint)
    # what is drawn differs: a 2x2 checker enlarged with pixels keeps hard edges, smooth blends them
    w.set_frame(np.array([[[255] * 3, [0] * 3], [[0] * 3, [255] * 3]], np.uint8))
    w.fit()
    smooth = w.graphics_widget.grab().toImage()
    w.set_magnification("pixels")
    sharp = w.graphics_widget.grab().toImage()
    grey = lambda img: sum(1 for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)
                           if 40 < QColor(img.pixel(x, y)).red() < 215)
    assert grey(smooth) > grey(sharp)
