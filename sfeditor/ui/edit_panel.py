"""Region-limited latent edits (paper Sec. 6.1, Fig. 14): pick a direction, a strength and a scope.

Directions are GANSpace principal components (computed by the core, cached per
generator) and InterFaceGAN-style ``.npy`` files the user loads.  The scope is
the selected nodes (each with its subtree: the edit stays in those regions) or
the whole image (every node, for comparison).  Moving the slider previews the
edit live; *Apply* makes it one undo entry.
"""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QDoubleSpinBox, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QPushButton, QRadioButton, QSlider, QVBoxLayout, QWidget)

__all__ = ["EditPanel"]

STRENGTH_MAX = 10.0
TICKS = 20           # slider ticks per 1.0 of strength


class EditPanel(QWidget):
    computePcaRequested = Signal()
    loadDirectionRequested = Signal()
    previewChanged = Signal()          # direction / strength / scope / layers changed
    applyRequested = Signal()
    cancelPreviewRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._updating = False
        lay = QVBoxLayout(self)
        box = QGroupBox("Directions")
        bl = QVBoxLayout(box)
        self.list = QListWidget()
        self.list.setMinimumHeight(140)
        bl.addWidget(self.list, 1)
        row = QHBoxLayout()
        self.pca_btn = QPushButton("GANSpace PCs")
        self.pca_btn.setToolTip("Principal components of sampled w (cached per generator)")
        self.load_btn = QPushButton("Load .npy…")
        self.load_btn.setToolTip("InterFaceGAN-style direction: [w_dim], [1, w_dim] or [n_latent, w_dim]")
        row.addWidget(self.pca_btn)
        row.addWidget(self.load_btn)
        bl.addLayout(row)
        lay.addWidget(box)

        sbox = QGroupBox("Edit")
        sl = QVBoxLayout(sbox)
        srow = QHBoxLayout()
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(int(-STRENGTH_MAX * TICKS), int(STRENGTH_MAX * TICKS))
        self.spin = QDoubleSpinBox()
        self.spin.setRange(-STRENGTH_MAX, STRENGTH_MAX)
        self.spin.setSingleStep(0.25)
        self.spin.setDecimals(2)
        srow.addWidget(QLabel("Strength"))
        srow.addWidget(self.slider, 1)
        srow.addWidget(self.spin)
        sl.addLayout(srow)
        lrow = QHBoxLayout()
        self.layers = QLineEdit()
        self.layers.setPlaceholderText("all w+ entries (e.g. 0-5, 8)")
        lrow.addWidget(QLabel("Layers"))
        lrow.addWidget(self.layers, 1)
        sl.addLayout(lrow)
        self.scope_sel = QRadioButton("Selected nodes only (region-limited)")
        self.scope_all = QRadioButton("Whole image (every node)")
        self.scope_sel.setChecked(True)
        self._scope = QButtonGroup(self)
        self._scope.addButton(self.scope_sel)
        self._scope.addButton(self.scope_all)
        sl.addWidget(self.scope_sel)
        sl.addWidget(self.scope_all)
        self.compare_whole = QCheckBox("Compare with the unrestricted edit (Fig. 14)")
        self.compare_whole.setToolTip("With the preview's Compare on, the left image is the same edit applied to "
                                      "every node, i.e. without region-limited fusion")
        sl.addWidget(self.compare_whole)
        self.target = QLabel("")
        self.target.setWordWrap(True)
        sl.addWidget(self.target)
        brow = QHBoxLayout()
        self.apply_btn = QPushButton("Apply")
        self.apply_btn.setDefault(True)
        self.reset_btn = QPushButton("Reset")
        brow.addWidget(self.reset_btn)
        brow.addStretch(1)
        brow.addWidget(self.apply_btn)
        sl.addLayout(brow)
        lay.addWidget(sbox)
        lay.addStretch(1)

        self.pca_btn.clicked.connect(self.computePcaRequested.emit)
        self.load_btn.clicked.connect(self.loadDirectionRequested.emit)
        self.list.currentItemChanged.connect(lambda *_: self._changed())
        self.slider.valueChanged.connect(self._slider)
        self.spin.valueChanged.connect(self._spin)
        self.layers.editingFinished.connect(self._changed)
        self._scope.buttonToggled.connect(lambda *_: self._changed())
        self.compare_whole.toggled.connect(lambda *_: self._changed())
        self.apply_btn.clicked.connect(self.applyRequested.emit)
        self.reset_btn.clicked.connect(self.reset)
        self._refresh_buttons()

    # ---------------------------------------------------------- contents
    def set_directions(self, entries: list[tuple[str, str]], keep: bool = True) -> None:
        """Replace the list with ``(key, label)`` pairs (keeps the current key when possible)."""
        cur = self.current_key() if keep else None
        self._updating = True
        try:
            self.list.clear()
            for key, label in entries:
                it = QListWidgetItem(label)
                it.setData(Qt.ItemDataRole.UserRole, key)
                self.list.addItem(it)
                if key == cur:
                    self.list.setCurrentItem(it)
        finally:
            self._updating = False
        self._refresh_buttons()

    def add_direction(self, key: str, label: str, select: bool = True) -> None:
        it = QListWidgetItem(label)
        it.setData(Qt.ItemDataRole.UserRole, key)
        self.list.addItem(it)
        if select:
            self.list.setCurrentItem(it)
        self._refresh_buttons()

    def select_key(self, key: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == key:
                self.list.setCurrentRow(i)

    def set_target_text(self, text: str) -> None:
        self.target.setText(text)

    # ------------------------------------------------------------- state
    def current_key(self) -> str | None:
        it = self.list.currentItem()
        return None if it is None else it.data(Qt.ItemDataRole.UserRole)

    def strength(self) -> float:
        return float(self.spin.value())

    def set_strength(self, v: float) -> None:
        self.spin.setValue(v)

    def whole_image(self) -> bool:
        return self.scope_all.isChecked()

    def layers_text(self) -> str:
        return self.layers.text().strip()

    def active(self) -> bool:
        """An edit is being previewed (a direction is chosen and the strength is not 0)."""
        return self.current_key() is not None and self.strength() != 0.0

    def reset(self) -> None:
        self.spin.setValue(0.0)
        self.cancelPreviewRequested.emit()

    # ------------------------------------------------------------ events
    def _refresh_buttons(self) -> None:
        self.apply_btn.setEnabled(self.active())
        self.reset_btn.setEnabled(self.strength() != 0.0)

    def _changed(self) -> None:
        self._refresh_buttons()
        if not self._updating:
            self.previewChanged.emit()

    def _slider(self, v: int) -> None:
        if self._updating:
            return
        self._updating = True
        self.spin.setValue(v / TICKS)
        self._updating = False
        self._changed()

    def _spin(self, v: float) -> None:
        if self._updating:
            return
        self._updating = True
        self.slider.setValue(round(v * TICKS))
        self._updating = False
        self._changed()
