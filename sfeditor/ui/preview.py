"""Large live preview of the StyleFusion editor.

:class:`PreviewWidget` only *displays* numpy arrays it is given (the fused
image, a per-pixel locality heatmap, a region label map, a reference image for
before/after comparison) and emits user intents as Qt signals.  It holds no
model maths and never imports torch.

Input policy:

* wrong types, dtypes or shapes raise :class:`ValueError` with a message that
  says what was expected;
* non-finite values (NaN, +-inf) in a heatmap are *sanitised* to 0 (a numerically
  unstable region must not take the UI down); negative heatmap values raise;
* programmatic setters (``set_overlay_mode`` ...) emit the matching ``...Changed``
  signal exactly once when the value actually changes and never when it does not,
  so a controller may echo values back without feedback loops.
"""
from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["PreviewWidget", "OVERLAY_MODES", "HEATMAP_MODES", "DEFAULT_PALETTE", "default_palette"]

OVERLAY_MODES = ("none", "heatmap", "masks")
HEATMAP_MODES = ("fixed", "random")

#: tab10-like, distinguishable region colours (RGB uint8); cycled / extended by hue.
DEFAULT_PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
        (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
        (188, 189, 34), (23, 190, 207),
    ],
    dtype=np.uint8,
)

DARK_BG = "#19232D"  # qdarkstyle dark background
LIGHT_BG = "#FAFAFA"
HEATMAP_CMAP = "inferno"
HEATMAP_LABEL = "mean |Δpixel|"
#: Heatmap colour scales: "fixed" ([0, HEATMAP_FIXED_VMAX] for every node, so a code that barely changes
#: the image looks weak) or "per map" ([0, the map's peak]).
HEATMAP_SCALES = ("fixed", "per map")
#: The fixed scale's top, in mean |Δpixel| (images are in [-1, 1]): a code that repaints its region
#: reaches about this (toy-faces hair: peak 0.37; eyes: 0.05), higher values saturate (the caption
#: gives the peak).
HEATMAP_FIXED_VMAX = 0.5
#: How a small frame is magnified: "pixels" (nearest neighbour) or "smooth" (bilinear).
MAGNIFICATIONS = ("pixels", "smooth")
_COMPARE_GAP = 0.04  # gap between reference and current image, in image widths


def default_palette(n: int) -> np.ndarray:
    """``n`` RGB uint8 colours: :data:`DEFAULT_PALETTE`, then golden-ratio hues."""
    if n <= len(DEFAULT_PALETTE):
        return DEFAULT_PALETTE[:n].copy()
    extra = []
    for i in range(n - len(DEFAULT_PALETTE)):
        c = QColor.fromHsvF((0.13 + i * 0.618034) % 1.0, 0.65, 0.92)
        extra.append((c.red(), c.green(), c.blue()))
    return np.concatenate([DEFAULT_PALETTE, np.array(extra, dtype=np.uint8)])


class _PreviewViewBox(pg.ViewBox):
    """ViewBox with locked aspect, inverted y, no context menu; double-click fits."""

    def __init__(self) -> None:
        super().__init__(lockAspect=True, invertY=True, enableMenu=False, defaultPadding=0.02)

    def mouseClickEvent(self, ev):  # noqa: N802 (Qt naming)
        if ev.double() and ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self.autoRange()
            return
        super().mouseClickEvent(ev)


class PreviewWidget(QWidget):
    """The editor's large image preview with heatmap / mask overlays."""

    overlayModeChanged = Signal(str)
    heatmapModeChanged = Signal(str)
    heatmapScaleChanged = Signal(str)
    magnificationChanged = Signal(str)
    opacityChanged = Signal(float)
    compareChanged = Signal(bool)
    filesDropped = Signal(list)
    cancelRequested = Signal()

    def __init__(self, parent: QWidget | None = None, *, dark: bool = True) -> None:
        super().__init__(parent)
        self._frame: np.ndarray | None = None
        self._frame_extent: tuple[int, int] = (0, 0)   # (H, W) the frame is drawn at
        self._heatmap: np.ndarray | None = None
        self._heatmap_title = ""
        self._heatmap_vmax = 1.0
        self._heatmap_status = ""                       # "" (complete), or e.g. "cancelled at 8/32: partial"
        self._heatmap_explicit_vmax = False
        self._labels: np.ndarray | None = None
        self._mask_names: list[str] = []
        self._mask_colours: np.ndarray | None = None
        self._compare_rgb: np.ndarray | None = None
        self._message = ""
        self._drag_active = False
        self._dark = dark
        self._fitted_shape: tuple[int, ...] | None = None

        self._build_toolbar()
        self._build_view()

        self._info = QLabel(self)
        self._info.setObjectName("previewInfo")
        self._info.setTextFormat(Qt.TextFormat.RichText)
        self._info.setWordWrap(True)
        self._info.setContentsMargins(6, 2, 6, 2)
        self._info.hide()

        # bottom status row: heatmap caption / mask legend, overlay progress + Cancel
        status = QHBoxLayout()
        status.setContentsMargins(0, 0, 4, 2)
        status.setSpacing(6)
        status.addWidget(self._info, 1)
        status.addWidget(self._progress)
        status.addWidget(self._cancel_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(self._toolbar)
        layout.addWidget(self._glw, 1)
        layout.addLayout(status)

        self.setAcceptDrops(True)
        self.set_dark(dark)
        self._refresh_visibility()

    # ------------------------------------------------------------------ build
    def _build_toolbar(self) -> None:
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 4, 4, 0)
        bar.setSpacing(6)

        self._overlay_combo = QComboBox(self)
        self._overlay_combo.setToolTip("Overlay drawn on top of the preview")
        for text, mode in (("No overlay", "none"), ("Heatmap", "heatmap"), ("Masks", "masks")):
            self._overlay_combo.addItem(text, mode)
        self._overlay_combo.currentIndexChanged.connect(self._on_overlay_index)

        self._heatmap_combo = QComboBox(self)
        self._heatmap_combo.setToolTip(
            "Heatmap base: resample only the selected node's code on a fixed base (paper Fig. 11),\n"
            "or on random base codes (Fig. 10)"
        )
        for text, mode in (("Fixed base", "fixed"), ("Random base", "random")):
            self._heatmap_combo.addItem(text, mode)
        self._heatmap_combo.currentIndexChanged.connect(self._on_heatmap_index)

        self._scale_combo = QComboBox(self)
        self._scale_combo.setToolTip(
            f"Heatmap colour scale: the same 0 – {HEATMAP_FIXED_VMAX:g} for every node, so a code that barely\n"
            "changes the image looks weak; or stretched to each map's own peak")
        for text, mode in (("Fixed scale", "fixed"), ("Per-map scale", "per map")):
            self._scale_combo.addItem(text, mode)
        self._scale_combo.currentIndexChanged.connect(self._on_scale_index)

        self._mag_combo = QComboBox(self)
        self._mag_combo.setToolTip("How a small model's frame is enlarged: sharp pixels or smooth interpolation")
        for text, mode in (("Pixels", "pixels"), ("Smooth", "smooth")):
            self._mag_combo.addItem(text, mode)
        self._mag_combo.currentIndexChanged.connect(self._on_mag_index)

        self._opacity_caption = QLabel("α", self)
        self._opacity_caption.setToolTip("Overlay opacity")
        self._opacity_slider = QSlider(Qt.Orientation.Horizontal, self)
        self._opacity_slider.setRange(0, 100)
        self._opacity_slider.setValue(60)
        self._opacity_slider.setFixedWidth(72)
        self._opacity_slider.setToolTip("Overlay opacity")
        self._opacity_value = QLabel(self)
        self._opacity_value.setMinimumWidth(self._opacity_value.fontMetrics().horizontalAdvance("100%") + 4)
        self._opacity_value.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self._opacity_slider.valueChanged.connect(self._on_opacity_slider)
        self._update_opacity_text()

        self._compare_button = QToolButton(self)
        self._compare_button.setText("Compare")
        self._compare_button.setCheckable(True)
        self._compare_button.setToolTip("Show the reference image side by side (left: before, right: now)")
        self._compare_button.toggled.connect(self._on_compare_toggled)

        self._progress = QProgressBar(self)
        self._progress.setTextVisible(True)
        self._progress.setMinimumWidth(140)
        self._progress.setMaximumWidth(240)
        self._progress.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._cancel_button = QToolButton(self)
        self._cancel_button.setText("Cancel")
        self._cancel_button.setToolTip("Cancel the running overlay computation")
        self._cancel_button.clicked.connect(self.cancelRequested)
        self._progress.hide()
        self._cancel_button.hide()

        for combo in (self._overlay_combo, self._heatmap_combo, self._scale_combo, self._mag_combo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            combo.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
            longest = max(combo.itemText(i) for i in range(combo.count()))
            combo.setMinimumWidth(combo.fontMetrics().horizontalAdvance(longest) + 44)   # + arrow, padding
        bar.addWidget(self._overlay_combo)
        bar.addWidget(self._heatmap_combo)
        bar.addWidget(self._scale_combo)
        bar.addSpacing(8)
        bar.addWidget(self._opacity_caption)
        bar.addWidget(self._opacity_slider)
        bar.addWidget(self._opacity_value)
        bar.addSpacing(8)
        bar.addWidget(self._compare_button)
        bar.addStretch(1)
        bar.addWidget(self._mag_combo)
        self._toolbar = bar

    def _build_view(self) -> None:
        self._glw = pg.GraphicsLayoutWidget(self)
        self._glw.setMinimumSize(160, 160)
        # drops are handled by PreviewWidget itself, not by the graphics scene
        self._glw.setAcceptDrops(False)
        self._glw.viewport().setAcceptDrops(False)
        self._glw.ci.setContentsMargins(4, 4, 4, 4)

        self._view = _PreviewViewBox()
        self._glw.ci.addItem(self._view, row=0, col=0)

        self._frame_item = pg.ImageItem(axisOrder="row-major")
        self._frame_item.setZValue(0)
        self._compare_item = pg.ImageItem(axisOrder="row-major")
        self._compare_item.setZValue(0)
        self._heatmap_item = pg.ImageItem(axisOrder="row-major")
        self._heatmap_item.setZValue(10)
        self._heatmap_item.setColorMap(pg.colormap.get(HEATMAP_CMAP))
        self._masks_item = pg.ImageItem(axisOrder="row-major")
        self._masks_item.setZValue(10)
        for item in (self._frame_item, self._compare_item, self._heatmap_item, self._masks_item):
            self._view.addItem(item)
        self._frame_item.setAutoDownsample(True)
        self._compare_item.setAutoDownsample(True)

        self._before_text = pg.TextItem("before", anchor=(0, 1))
        self._now_text = pg.TextItem("now", anchor=(0, 1))
        for t in (self._before_text, self._now_text):
            t.setZValue(20)
            self._view.addItem(t, ignoreBounds=True)

        self._colorbar = pg.ColorBarItem(
            values=(0.0, 1.0), width=14, colorMap=HEATMAP_CMAP, label=HEATMAP_LABEL,
            interactive=False, colorMapMenu=False,
        )
        self._colorbar.setImageItem(self._heatmap_item)
        self._colorbar.layout.setContentsMargins(6, 10, 0, 10)  # room for the end tick labels
        self._colorbar_in_layout = False

        self._message_label = QLabel(self._glw)
        self._message_label.setObjectName("previewMessage")
        self._message_label.setWordWrap(True)
        self._message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._message_label.hide()
        self._glw.installEventFilter(self)

    # ------------------------------------------------------------ accessors
    @property
    def view(self) -> pg.ViewBox:
        return self._view

    @property
    def graphics_widget(self) -> pg.GraphicsLayoutWidget:
        return self._glw

    @property
    def frame_item(self) -> pg.ImageItem:
        return self._frame_item

    @property
    def heatmap_item(self) -> pg.ImageItem:
        return self._heatmap_item

    @property
    def masks_item(self) -> pg.ImageItem:
        return self._masks_item

    @property
    def compare_item(self) -> pg.ImageItem:
        return self._compare_item

    @property
    def colorbar(self) -> pg.ColorBarItem:
        return self._colorbar

    # ----------------------------------------------------------------- frame
    def set_frame(self, rgb: np.ndarray, shown_size: tuple[int, int] | None = None) -> None:
        """Show ``rgb`` (uint8 ``[H, W, 3]``).  The array is copied.

        ``shown_size`` ``(H, W)`` draws it that large instead (a draft of a larger frame: it takes
        the full frame's place, so overlays and the zoom stay where they are)."""
        rgb = _check_rgb(rgb, "frame")
        self._frame = rgb
        self._frame_item.setImage(rgb, autoLevels=False, levels=(0, 255))
        h, w = shown_size if shown_size is not None else rgb.shape[:2]
        self._frame_extent = (h, w)
        self._frame_item.setRect(QRectF(0, 0, w, h))
        self._layout_overlays()
        if self._fitted_shape != (h, w):
            self._fitted_shape = (h, w)
            self.fit()

    def frame(self) -> np.ndarray | None:
        return self._frame

    def _extent(self) -> QRectF | None:
        """Scene rect of the current image: the frame's, else the first overlay's."""
        if self._frame is not None:
            h, w = self._frame_extent
        elif self._heatmap is not None:
            h, w = self._heatmap.shape
        elif self._labels is not None:
            h, w = self._labels.shape
        else:
            return None
        return QRectF(0, 0, w, h)

    def _layout_overlays(self) -> None:
        rect = self._extent()
        if rect is None:
            return
        if self._heatmap is not None:
            self._heatmap_item.setRect(rect)
        if self._labels is not None:
            self._masks_item.setRect(rect)
        w, h = rect.width(), rect.height()
        gap = _COMPARE_GAP * w
        self._compare_item.setRect(QRectF(-w - gap, 0, w, h))
        self._before_text.setPos(-w - gap, 0)
        self._now_text.setPos(0, 0)

    def fit(self) -> None:
        """Zoom so that everything shown fits (same as double-clicking the view)."""
        self._view.autoRange()

    # --------------------------------------------------------------- heatmap
    def set_heatmap(self, values: np.ndarray | None, *, title: str = "", vmax: float | None = None,
                    status: str = "") -> None:
        """Set the locality heatmap (float ``[H, W]`` >= 0, mean |Δpixel|).

        Any size is accepted; it is stretched over the frame's extent.  NaN / inf
        are replaced by 0.  The colour scale is ``[0, vmax]``; by default the
        :meth:`heatmap_scale` decides: "fixed" is ``[0, HEATMAP_FIXED_VMAX]`` for every
        map, "per map" the map's peak (1 for an all-zero map).  The caption shows the
        peak and ``status`` (e.g. "partial: 8/32 samples").  ``None`` clears the heatmap.
        """
        if values is None:
            self._heatmap = None
            self._heatmap_title = ""
            self._heatmap_status = ""
            self._heatmap_item.clear()
            self._refresh_visibility()
            return
        arr = _as_array(values, "heatmap")
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"heatmap must be a non-empty 2-D array [H, W], got shape {arr.shape}")
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"heatmap must be a real float or integer array, got dtype {arr.dtype}")
        arr = np.nan_to_num(arr.astype(np.float32, copy=True), nan=0.0, posinf=0.0, neginf=0.0)
        if (arr < 0).any():
            raise ValueError(f"heatmap values must be >= 0 (mean |Δpixel|), min is {float(arr.min()):.4g}")
        self._heatmap_explicit_vmax = vmax is not None
        if vmax is None:
            vmax = self._default_vmax(arr)
        else:
            vmax = float(vmax)
            if not math.isfinite(vmax) or vmax <= 0:
                raise ValueError(f"heatmap vmax must be a finite number > 0, got {vmax!r}")
        self._heatmap = arr
        self._heatmap_title = str(title)
        self._heatmap_status = str(status)
        self._heatmap_vmax = vmax
        self._heatmap_item.setImage(arr, autoLevels=False, levels=(0.0, vmax))
        self._colorbar.setLevels((0.0, vmax))
        self._layout_overlays()
        self._refresh_visibility()
        if self._frame is None and self._fitted_shape != arr.shape:
            self._fitted_shape = arr.shape
            self.fit()

    def heatmap(self) -> np.ndarray | None:
        """The sanitised heatmap (float32) or ``None``."""
        return self._heatmap

    def _default_vmax(self, arr: np.ndarray) -> float:
        if self.heatmap_scale() == "fixed":
            return HEATMAP_FIXED_VMAX
        top = float(arr.max())
        return top if top > 0 else 1.0

    def heatmap_vmax(self) -> float:
        return self._heatmap_vmax

    def heatmap_peak(self) -> float | None:
        return None if self._heatmap is None else float(self._heatmap.max())

    def set_heatmap_status(self, status: str) -> None:
        """Say what the shown map is ("" = complete; e.g. "cancelled at 8/32 samples: partial")."""
        self._heatmap_status = str(status)
        self._refresh_visibility()

    def heatmap_status(self) -> str:
        return self._heatmap_status

    def heatmap_caption(self) -> str:
        """The caption under the preview as plain text (tests, screenshots)."""
        return self._info.text() if not self._info.isHidden() else ""

    def set_heatmap_scale(self, mode: str) -> None:
        if mode not in HEATMAP_SCALES:
            raise ValueError(f"heatmap scale must be one of {HEATMAP_SCALES}, got {mode!r}")
        self._scale_combo.setCurrentIndex(self._scale_combo.findData(mode))

    def heatmap_scale(self) -> str:
        return self._scale_combo.currentData()

    def _on_scale_index(self, _index: int) -> None:
        if self._heatmap is not None and not self._heatmap_explicit_vmax:
            vmax = self._default_vmax(self._heatmap)
            self._heatmap_vmax = vmax
            self._heatmap_item.setLevels((0.0, vmax))
            self._colorbar.setLevels((0.0, vmax))
            self._refresh_visibility()
        self.heatmapScaleChanged.emit(self.heatmap_scale())

    def set_magnification(self, mode: str) -> None:
        if mode not in MAGNIFICATIONS:
            raise ValueError(f"magnification must be one of {MAGNIFICATIONS}, got {mode!r}")
        self._mag_combo.setCurrentIndex(self._mag_combo.findData(mode))

    def magnification(self) -> str:
        return self._mag_combo.currentData()

    def _on_mag_index(self, _index: int) -> None:
        from PySide6.QtGui import QPainter

        smooth = self.magnification() == "smooth"
        self._glw.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        self._glw.viewport().update()
        self.magnificationChanged.emit(self.magnification())

    # ----------------------------------------------------------------- masks
    def set_masks(self, labels: np.ndarray | None, names: list[str], colours: np.ndarray | None = None) -> None:
        """Set the region label map (int ``[h, w]``, region index per pixel).

        Negative labels are unassigned (transparent).  ``colours`` is ``[N, 3]``
        (uint8 0..255, or float 0..1); default :func:`default_palette`.  With
        ``names`` given, labels must be < ``len(names)``.  ``None`` clears.
        """
        if labels is None:
            self._labels = None
            self._mask_names = []
            self._mask_colours = None
            self._masks_item.clear()
            self._refresh_visibility()
            return
        lab = _as_array(labels, "mask labels")
        if lab.ndim != 2 or lab.shape[0] == 0 or lab.shape[1] == 0:
            raise ValueError(f"mask labels must be a non-empty 2-D array [h, w], got shape {lab.shape}")
        if not np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool:
            raise ValueError(f"mask labels must be an integer array (region index per pixel), got dtype {lab.dtype}")
        names = [str(n) for n in (names or [])]
        top = int(lab.max())
        if names and top >= len(names):
            raise ValueError(f"mask label {top} out of range for {len(names)} region names")
        n = max(len(names), top + 1, 0)
        if colours is None:
            cols = default_palette(max(n, 1))
        else:
            cols = _check_colours(colours, n)
        self._labels = lab.astype(np.int64, copy=True)
        self._mask_names = names
        self._mask_colours = cols
        self._rebuild_masks()
        self._layout_overlays()
        self._refresh_visibility()
        if self._frame is None and self._heatmap is None and self._fitted_shape != lab.shape:
            self._fitted_shape = lab.shape
            self.fit()

    def mask_colours(self) -> np.ndarray | None:
        """RGB uint8 ``[N, 3]`` colours used for the regions, or ``None``."""
        return None if self._mask_colours is None else self._mask_colours.copy()

    def _rebuild_masks(self) -> None:
        if self._labels is None or self._mask_colours is None:
            return
        lab = self._labels
        valid = lab >= 0
        rgba = np.zeros(lab.shape + (4,), dtype=np.uint8)
        rgba[..., :3] = self._mask_colours[np.where(valid, lab, 0)]
        rgba[..., 3] = np.where(valid, int(round(self.opacity() * 255)), 0).astype(np.uint8)
        self._masks_item.setImage(rgba, autoLevels=False, levels=(0, 255))

    # ------------------------------------------------------------ modes, UI
    def set_overlay_mode(self, mode: str) -> None:
        if mode not in OVERLAY_MODES:
            raise ValueError(f"overlay mode must be one of {OVERLAY_MODES}, got {mode!r}")
        self._overlay_combo.setCurrentIndex(OVERLAY_MODES.index(mode))

    def overlay_mode(self) -> str:
        return self._overlay_combo.currentData()

    def set_heatmap_mode(self, mode: str) -> None:
        if mode not in HEATMAP_MODES:
            raise ValueError(f"heatmap mode must be one of {HEATMAP_MODES}, got {mode!r}")
        self._heatmap_combo.setCurrentIndex(HEATMAP_MODES.index(mode))

    def heatmap_mode(self) -> str:
        return self._heatmap_combo.currentData()

    def set_opacity(self, value: float) -> None:
        """Overlay opacity in [0, 1] (clamped; stored in 1 % steps)."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"opacity must be a finite number in [0, 1], got {value!r}")
        self._opacity_slider.setValue(int(round(min(max(value, 0.0), 1.0) * 100)))

    def opacity(self) -> float:
        return self._opacity_slider.value() / 100.0

    def set_progress(self, done: int, total: int, text: str = "") -> None:
        """Show overlay-computation progress; ``total <= 0`` hides the bar and Cancel."""
        total = int(total)
        if total <= 0:
            self._progress.hide()
            self._cancel_button.hide()
            return
        done = min(max(int(done), 0), total)
        self._progress.setRange(0, total)
        self._progress.setValue(done)
        fmt = f"{done}/{total}"
        if text:
            fmt = text if fmt in text else f"{text}  {fmt}"
        self._progress.setFormat(fmt.replace("%", "%%"))
        self._progress.setToolTip(text)
        self._progress.show()
        self._cancel_button.show()

    def progress_visible(self) -> bool:
        return not self._progress.isHidden()

    def set_compare(self, rgb: np.ndarray | None, label: str = "before") -> None:
        """Reference image shown left of the current one while compare mode is on."""
        if rgb is None:
            self._compare_rgb = None
            self._compare_item.clear()
        else:
            rgb = _check_rgb(rgb, "compare image")
            self._compare_rgb = rgb
            self._compare_item.setImage(rgb, autoLevels=False, levels=(0, 255))
            self._layout_overlays()
        self._before_text.setText(str(label))
        self._refresh_visibility()
        if self.compare_enabled():
            self.fit()

    def compare_image(self) -> np.ndarray | None:
        return self._compare_rgb

    def set_compare_enabled(self, on: bool) -> None:
        self._compare_button.setChecked(bool(on))

    def compare_enabled(self) -> bool:
        return self._compare_button.isChecked()

    def set_message(self, text: str) -> None:
        """Small note over the view's top-left corner; ``""`` hides it."""
        self._message = str(text or "")
        self._show_message(self._message)

    def message(self) -> str:
        return self._message

    def set_dark(self, dark: bool) -> None:
        """Switch the graphics background / text colours between dark and light."""
        self._dark = bool(dark)
        bg = DARK_BG if self._dark else LIGHT_BG
        fg = "#C9CDD0" if self._dark else "#2B2B2B"
        self._glw.setBackground(bg)
        for t in (self._before_text, self._now_text):
            t.setColor(fg)
        for name in ("left", "right", "top", "bottom"):
            ax = self._colorbar.getAxis(name)
            ax.setPen(pg.mkPen(fg))
            ax.setTextPen(pg.mkPen(fg))
        self._colorbar.getAxis("left").setLabel(HEATMAP_LABEL, color=fg)
        msg_bg = "rgba(10, 14, 18, 190)" if self._dark else "rgba(255, 255, 255, 215)"
        self._message_label.setStyleSheet(
            f"QLabel#previewMessage {{ background: {msg_bg}; color: {fg}; border-radius: 4px;"
            f" padding: 3px 7px; font-size: 9pt; }}"
        )

    def is_dark(self) -> bool:
        return self._dark

    # ------------------------------------------------------- internal slots
    def _on_overlay_index(self, _index: int) -> None:
        self._refresh_visibility()
        self.overlayModeChanged.emit(self.overlay_mode())

    def _on_heatmap_index(self, _index: int) -> None:
        self.heatmapModeChanged.emit(self.heatmap_mode())

    def _on_opacity_slider(self, _value: int) -> None:
        self._update_opacity_text()
        self._heatmap_item.setOpacity(self.opacity())
        self._rebuild_masks()
        self.opacityChanged.emit(self.opacity())

    def _update_opacity_text(self) -> None:
        self._opacity_value.setText(f"{self._opacity_slider.value()}%")

    def _on_compare_toggled(self, on: bool) -> None:
        self._refresh_visibility()
        self.fit()
        self.compareChanged.emit(bool(on))

    def _refresh_visibility(self) -> None:
        mode = self.overlay_mode()
        show_heat = mode == "heatmap" and self._heatmap is not None
        show_masks = mode == "masks" and self._labels is not None
        self._heatmap_item.setVisible(show_heat)
        self._heatmap_item.setOpacity(self.opacity())
        self._masks_item.setVisible(show_masks)
        self._set_colorbar_shown(show_heat)
        self._heatmap_combo.setEnabled(mode == "heatmap")
        self._scale_combo.setEnabled(mode == "heatmap")
        self._opacity_slider.setEnabled(mode != "none")
        comparing = self.compare_enabled()
        self._compare_item.setVisible(comparing and self._compare_rgb is not None)
        self._before_text.setVisible(comparing and self._compare_rgb is not None)
        self._now_text.setVisible(comparing)
        self._update_info(show_heat, show_masks)

    def _set_colorbar_shown(self, shown: bool) -> None:
        if shown and not self._colorbar_in_layout:
            self._glw.ci.addItem(self._colorbar, row=0, col=1)
            self._colorbar_in_layout = True
            # AxisItem collapses to width 0 if restyled while off-scene; restore it
            self._colorbar.axis.setWidth(45)
        elif not shown and self._colorbar_in_layout:
            self._glw.ci.removeItem(self._colorbar)
            self._colorbar_in_layout = False

    def colorbar_visible(self) -> bool:
        return self._colorbar_in_layout

    def _update_info(self, show_heat: bool, show_masks: bool) -> None:
        if show_masks and self._mask_colours is not None:
            n = len(self._mask_colours)
            names = self._mask_names or [f"region {i}" for i in range(n)]
            parts = []
            for name, col in zip(names, self._mask_colours):
                hexcol = "#%02x%02x%02x" % tuple(int(c) for c in col[:3])
                parts.append(
                    f'<span style="color:{hexcol}; font-size:13pt;">&#9632;</span>'
                    f"&nbsp;{html.escape(name).replace(' ', '&nbsp;')}"
                )
            self._info.setText("&nbsp;&nbsp;&nbsp; ".join(parts))
            self._info.show()
        elif show_heat:
            base = "fixed base (Fig. 11)" if self.heatmap_mode() == "fixed" else "random base (Fig. 10)"
            title = html.escape(self._heatmap_title) if self._heatmap_title else "Locality heatmap"
            scale = "fixed" if self.heatmap_scale() == "fixed" and not self._heatmap_explicit_vmax else "per map"
            status = (f"&nbsp;&nbsp;·&nbsp;&nbsp;<b style='color:#e8a33d'>{html.escape(self._heatmap_status)}</b>"
                      if self._heatmap_status else "")
            self._info.setText(
                f"<b>{title}</b>&nbsp;&nbsp;·&nbsp;&nbsp;{base}&nbsp;&nbsp;·&nbsp;&nbsp;"
                f"peak&nbsp;{float(self._heatmap.max()):.3g}&nbsp;&nbsp;·&nbsp;&nbsp;"
                f"scale&nbsp;0&nbsp;–&nbsp;{self._heatmap_vmax:.3g}&nbsp;({scale})&nbsp;"
                f"{html.escape(HEATMAP_LABEL).replace(' ', '&nbsp;')}{status}"
            )
            self._info.show()
        else:
            self._info.hide()

    def _show_message(self, text: str) -> None:
        if text:
            self._message_label.setText(text)
            self._place_message()
            self._message_label.show()
            self._message_label.raise_()
        else:
            self._message_label.hide()

    def _place_message(self) -> None:
        margin = 8
        label = self._message_label
        limit = max(80, min(460, self._glw.width() - 2 * margin))
        natural = max((label.fontMetrics().horizontalAdvance(line) for line in label.text().splitlines()), default=0)
        label.setFixedWidth(min(limit, natural + 24))  # + stylesheet padding
        label.setFixedHeight(label.heightForWidth(label.width()))
        label.move(margin, margin)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if obj is self._glw and event.type() == QEvent.Type.Resize and self._message_label.isVisible():
            self._place_message()
        return super().eventFilter(obj, event)

    # ---------------------------------------------------------- drag & drop
    @staticmethod
    def _local_paths(event) -> list[str]:
        mime = event.mimeData()
        if mime is None or not mime.hasUrls():
            return []
        return [u.toLocalFile() for u in mime.urls() if u.isLocalFile() and u.toLocalFile()]

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        paths = self._local_paths(event)
        if paths:
            event.acceptProposedAction()
            self._drag_active = True
            self._show_message(f"Drop to load {len(paths)} file{'s' if len(paths) != 1 else ''}")
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if self._local_paths(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragLeaveEvent(self, event) -> None:  # noqa: N802
        self._end_drag()
        event.accept()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        paths = self._local_paths(event)
        self._end_drag()
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.filesDropped.emit(paths)

    def _end_drag(self) -> None:
        if self._drag_active:
            self._drag_active = False
            self._show_message(self._message)


# ---------------------------------------------------------------- helpers
def _as_array(x, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(x).__name__}")
    return x


def _check_rgb(rgb, what: str) -> np.ndarray:
    arr = _as_array(rgb, what)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{what} must be uint8 [H, W, 3], got dtype {arr.dtype} "
            "(convert floats with (x * 255).clip(0, 255).astype(np.uint8))"
        )
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} must have shape [H, W, 3], got {arr.shape}")
    return np.ascontiguousarray(arr).copy()


def _check_colours(colours, n: int) -> np.ndarray:
    cols = _as_array(colours, "mask colours")
    if cols.ndim != 2 or cols.shape[1] not in (3, 4):
        raise ValueError(f"mask colours must have shape [N, 3] (RGB) or [N, 4], got {cols.shape}")
    if cols.shape[0] < n:
        raise ValueError(f"mask colours: {cols.shape[0]} colours for {n} regions")
    if np.issubdtype(cols.dtype, np.floating):
        if not np.isfinite(cols).all() or cols.min() < 0 or cols.max() > 1:
            raise ValueError("float mask colours must be finite and in [0, 1]")
        cols = np.round(cols * 255)
    elif np.issubdtype(cols.dtype, np.integer) and cols.dtype != bool:
        if cols.min() < 0 or cols.max() > 255:
            raise ValueError("integer mask colours must be in [0, 255]")
    else:
        raise ValueError(f"mask colours must be uint8 or float, got dtype {cols.dtype}")
    return cols[:, :3].astype(np.uint8)
