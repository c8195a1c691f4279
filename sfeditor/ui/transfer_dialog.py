"""Hair transfer (paper Sec. 6.2) and any "take region R from photo B" set-up dialog.

Two slots: the target (a photo, or the composition being edited) and the
reference photo; a region (hair by default).  The dialog only collects the
choice; the window inverts the photos (with progress and cancel) and makes the
transfer one undo entry.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QFrame, QHBoxLayout,
                               QLabel, QPushButton, QVBoxLayout, QWidget)

__all__ = ["PhotoSlot", "TransferDialog", "IMAGE_FILTER"]

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"


class PhotoSlot(QFrame):
    """A drop target / browse button holding one photo path (or the "current composition")."""

    changed = Signal()

    def __init__(self, title: str, allow_current: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumSize(180, 120)
        self.path: str | None = None
        self.allow_current = allow_current
        lay = QVBoxLayout(self)
        self.title = QLabel(f"<b>{title}</b>")
        self.label = QLabel()
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        lay.addWidget(self.title)
        lay.addWidget(self.label, 1)
        row = QHBoxLayout()
        self.browse = QPushButton("Browse…")
        row.addWidget(self.browse)
        if allow_current:
            self.current = QPushButton("Use current")
            row.addWidget(self.current)
            self.current.clicked.connect(lambda: self.set_path(None))
        lay.addLayout(row)
        self.browse.clicked.connect(self._browse)
        self.set_path(None)

    def set_path(self, path: str | None) -> None:
        self.path = path
        if path:
            self.label.setText(Path(path).name)
            self.setToolTip(path)
        else:
            self.label.setText("the composition being edited" if self.allow_current
                               else "drop a photo here or browse")
        self.changed.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a photo", "", IMAGE_FILTER)
        if path:
            self.set_path(path)

    def dragEnterEvent(self, e):  # noqa: N802 (Qt naming)
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e):  # noqa: N802
        paths = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.set_path(paths[0])
            e.acceptProposedAction()


class TransferDialog(QDialog):
    """Target + reference + region -> :meth:`choice`."""

    def __init__(self, regions: list[str], default: str = "hair", parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Region transfer (hair transfer, Sec. 6.2)")
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("The reference's code goes to the region's nodes, the target's code to every "
                             "other node (global codes included); both photos are inverted first."))
        slots = QHBoxLayout()
        self.target = PhotoSlot("Target", allow_current=True)
        self.reference = PhotoSlot("Reference")
        slots.addWidget(self.target)
        slots.addWidget(self.reference)
        lay.addLayout(slots)
        form = QFormLayout()
        self.region = QComboBox()
        self.region.addItems(regions)
        if default in regions:
            self.region.setCurrentText(default)
        form.addRow("Region from the reference", self.region)
        lay.addLayout(form)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Transfer")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self.reference.changed.connect(self._update)
        self._update()

    def _update(self) -> None:
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(bool(self.reference.path))

    def choice(self) -> tuple[str | None, str, str]:
        """(target photo or None for the current composition, reference photo, region)."""
        return self.target.path, self.reference.path or "", self.region.currentText()
