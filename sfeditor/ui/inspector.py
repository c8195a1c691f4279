"""The inspector: the selected node's seed, lock, bypass and code source, plus composition settings.

Shows state and emits intents; the main window turns them into session calls.
"""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QCheckBox, QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QPushButton, QSlider, QVBoxLayout, QWidget)

from .pixmaps import rgb_pixmap

__all__ = ["InspectorPanel", "to_pixmap"]

SEED_MAX = 2 ** 32 - 1    # seeds are uint32 (a QSpinBox is int32, so a 0-decimal QDoubleSpinBox)
PSI_STEPS = 100      # slider ticks per 1.0 of truncation


def to_pixmap(rgb: np.ndarray, size: int | None = None) -> QPixmap:
    return rgb_pixmap(rgb, "thumbnail", size)


class InspectorPanel(QWidget):
    seedChanged = Signal(str, int)
    rerollRequested = Signal(str)
    lockRequested = Signal(str, bool)
    collapseRequested = Signal(str, bool)
    clearCodeRequested = Signal(str)
    heatmapRequested = Signal(str)
    photoRequested = Signal(str)
    truncationChanged = Signal(float)      # while dragging
    truncationReleased = Signal()          # end of a drag: one undo entry
    randomizeRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._name: str | None = None
        self._updating = False
        lay = QVBoxLayout(self)

        node_box = QGroupBox("Selected node")
        self.node_box = node_box
        nl = QVBoxLayout(node_box)
        top = QHBoxLayout()
        self.thumb = QLabel()
        self.thumb.setFixedSize(96, 96)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setStyleSheet("border: 1px solid #455364;")
        top.addWidget(self.thumb)
        info = QVBoxLayout()
        self.title = QLabel("—")
        self.title.setStyleSheet("font-size: 15px; font-weight: bold;")
        self.kind = QLabel("")
        self.kind.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("color: #e0a040;")
        info.addWidget(self.title)
        info.addWidget(self.kind)
        info.addWidget(self.status)
        info.addStretch(1)
        top.addLayout(info, 1)
        nl.addLayout(top)
        self.net_info = QLabel("")      # what the node's FusionNet does (blend coefficients), full width
        self.net_info.setWordWrap(True)
        self.net_info.setStyleSheet("color: #9fb3c8; font-size: 11px;")
        self.net_info.setToolTip("From the net's blend coefficients q on 16 sampled inputs (sfeditor.fusion.blend_stats):\n"
                                 "which child's code each style channel comes from, and how many of the\n"
                                 "coarse (layout) channels the node's global code sets.")
        nl.addWidget(self.net_info)

        form = QFormLayout()
        seed_row = QHBoxLayout()
        self.seed = QDoubleSpinBox()
        self.seed.setDecimals(0)
        self.seed.setRange(0, SEED_MAX)
        self.seed.setKeyboardTracking(False)
        self.seed.setToolTip("The node's random seed (z is drawn from it, then mapped and truncated)")
        self.reroll = QPushButton("Re-roll")
        self.reroll.setToolTip("New random seed (R)")
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.reroll)
        form.addRow("Seed", seed_row)
        self.code_src = QLabel("seed")
        form.addRow("Code", self.code_src)
        nl.addLayout(form)
        self.locked = QCheckBox("Locked (kept by “Randomise all unlocked”)")
        self.collapsed = QCheckBox("Collapse: subtree uses this code (Sec. 4.5)")
        self.collapsed.setToolTip("The paper's bypass: this node passes its own code and its FusionNet is skipped")
        nl.addWidget(self.locked)
        nl.addWidget(self.collapsed)
        btns = QGridLayout()                  # two columns: the dock stays narrow, the preview wide
        self.clear_code = QPushButton("Back to seed code")
        self.photo = QPushButton("Assign photo…")
        self.heatmap = QPushButton("Locality heatmap")
        for i, b in enumerate((self.clear_code, self.photo, self.heatmap)):
            btns.addWidget(b, i // 2, i % 2)
        nl.addLayout(btns)
        lay.addWidget(node_box)

        comp_box = QGroupBox("Composition")
        cl = QFormLayout(comp_box)
        psi_row = QHBoxLayout()
        self.psi_slider = QSlider(Qt.Orientation.Horizontal)
        self.psi_slider.setRange(0, int(1.5 * PSI_STEPS))
        self.psi_spin = QDoubleSpinBox()
        self.psi_spin.setRange(0.0, 1.5)
        self.psi_spin.setSingleStep(0.05)
        self.psi_spin.setDecimals(2)
        psi_row.addWidget(self.psi_slider, 1)
        psi_row.addWidget(self.psi_spin)
        cl.addRow("Truncation ψ", psi_row)
        self.randomize = QPushButton("Randomise all unlocked")
        self.randomize.setToolTip("Ctrl+Shift+R")
        cl.addRow(self.randomize)
        lay.addWidget(comp_box)
        lay.addStretch(1)

        self.seed.valueChanged.connect(self._seed_changed)
        self.reroll.clicked.connect(lambda: self._name and self.rerollRequested.emit(self._name))
        self.locked.toggled.connect(lambda v: self._emit(self.lockRequested, v))
        self.collapsed.toggled.connect(lambda v: self._emit(self.collapseRequested, v))
        self.clear_code.clicked.connect(lambda: self._name and self.clearCodeRequested.emit(self._name))
        self.photo.clicked.connect(lambda: self._name and self.photoRequested.emit(self._name))
        self.heatmap.clicked.connect(lambda: self._name and self.heatmapRequested.emit(self._name))
        self.psi_slider.valueChanged.connect(self._psi_slider)
        self.psi_slider.sliderReleased.connect(self.truncationReleased.emit)
        self.psi_spin.valueChanged.connect(self._psi_spin)
        self.randomize.clicked.connect(self.randomizeRequested.emit)
        self.show_node(None, None)

    # ------------------------------------------------------------- display
    def node(self) -> str | None:
        return self._name

    def show_node(self, name: str | None, comp, *, has_net: bool = True, bypassed_by: str | None = None,
                  thumbnail: np.ndarray | None = None, net_note: str | None = None) -> None:
        """Display ``name``'s state from composition ``comp`` (None: nothing selected).

        ``net_note``: what the node's FusionNet does (``ModelBundle.blend_note``), shown under the notes.
        """
        self._updating = True
        try:
            self._name = name
            enabled = name is not None and comp is not None
            for w in (self.seed, self.reroll, self.locked, self.collapsed, self.clear_code, self.photo, self.heatmap):
                w.setEnabled(enabled)
            if not enabled:
                self.title.setText("No node selected")
                self.kind.setText("Click a node in the graph.")
                self.status.setText("")
                self.net_info.setText("")
                self.code_src.setText("—")
                self.thumb.clear()
            else:
                st = comp.state(name)
                internal = comp.is_internal(name)
                self.title.setText(name)
                self.kind.setText("global (alignment) code of a FusionNet node" if internal else "region code (leaf)")
                notes = []
                if bypassed_by:
                    notes.append(f"hidden: “{bypassed_by}” is collapsed, its code is used here")
                if internal and not has_net:
                    notes.append("no trained FusionNet: this node passes its own code")
                if st.collapsed:
                    notes.append("collapsed: the whole subtree takes this code")
                self.status.setText("\n".join(notes))
                self.net_info.setText(net_note if internal and has_net and net_note else "")
                self.seed.setValue(st.seed)
                self.code_src.setText("explicit code (photo / edit)" if st.code is not None else "from seed")
                self.clear_code.setEnabled(st.code is not None)
                self.locked.setChecked(st.locked)
                self.collapsed.setVisible(internal)
                self.collapsed.setChecked(st.collapsed)
                if thumbnail is not None:
                    self.set_thumbnail(thumbnail)
            if comp is not None:
                self.set_truncation(comp.truncation)
        finally:
            self._updating = False

    def set_thumbnail(self, rgb: np.ndarray | None) -> None:
        if rgb is None:
            self.thumb.clear()
        else:
            self.thumb.setPixmap(to_pixmap(rgb, 94))

    def set_truncation(self, psi: float) -> None:
        was = self._updating
        self._updating = True
        try:
            self.psi_spin.setValue(psi)
            if not self.psi_slider.isSliderDown():
                self.psi_slider.setValue(round(psi * PSI_STEPS))
        finally:
            self._updating = was

    # ------------------------------------------------------------- intents
    def _emit(self, signal, value) -> None:
        if not self._updating and self._name:
            signal.emit(self._name, value)

    def _seed_changed(self, v: float) -> None:
        self._emit(self.seedChanged, int(v))

    def _psi_slider(self, v: int) -> None:
        if not self._updating:
            self.truncationChanged.emit(v / PSI_STEPS)

    def _psi_spin(self, v: float) -> None:
        if not self._updating:
            self.truncationChanged.emit(float(v))
            self.truncationReleased.emit()
