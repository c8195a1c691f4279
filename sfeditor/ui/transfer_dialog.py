"""Hair transfer (paper Sec. 6.2) and any "take region R from photo B" set-up dialog.

Two slots: the target (a photo, or the composition being edited) and the
reference photo; a region (hair by default).  The dialog only collects the
choice; the window inverts the photos (with progress and cancel) and makes the
transfer one undo entry.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImageReader, QPixmap
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QFrame, QHBoxLayout,
                               QLabel, QPushButton, QVBoxLayout, QWidget)

__all__ = ["PhotoSlot", "TransferDialog", "IMAGE_FILTER"]

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"
THUMB_PX = 160          # the slots' thumbnails (issue 39: the dialog showed file names only)


def photo_thumbnail(path: str, size: int = THUMB_PX) -> tuple[QPixmap | None, str]:
    """A thumbnail of the image file at ``path`` decoded at most ``size`` px (the reader scales while
    decoding, so a huge photo is never held at full size), or (None, why it cannot be shown)."""
    p = Path(path)
    if not p.is_file():
        return None, "not a regular file" if p.exists() else "no such file"
    reader = QImageReader(str(p))
    reader.setAutoTransform(True)
    full = reader.size()
    if not full.isValid() or full.isEmpty():
        return None, f"not a readable image ({reader.errorString()})"
    reader.setScaledSize(full.scaled(QSize(size, size), Qt.AspectRatioMode.KeepAspectRatio))
    img = reader.read()
    if img.isNull():
        return None, f"not a readable image ({reader.errorString()})"
    return QPixmap.fromImage(img), f"{full.width()}×{full.height()}"


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
        self.current_image: np.ndarray | None = None       # the composition's frame, for "Use current"
        lay = QVBoxLayout(self)
        self.title = QLabel(f"<b>{title}</b>")
        self.thumb = QLabel()
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setFixedSize(THUMB_PX + 4, THUMB_PX + 4)
        self.label = QLabel()
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        lay.addWidget(self.title)
        lay.addWidget(self.thumb, 0, Qt.AlignmentFlag.AlignHCenter)
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
        pm = None
        if path:
            pm, note = photo_thumbnail(path)
            self.label.setText(f"{Path(path).name}\n{note}")
            self.setToolTip(path)
        else:
            self.label.setText("the composition being edited" if self.allow_current
                               else "drop a photo here or browse")
            if self.allow_current and self.current_image is not None:
                from .pixmaps import rgb_pixmap

                pm = rgb_pixmap(self.current_image, "current frame", THUMB_PX)
        self.thumb.setPixmap(pm if pm is not None else QPixmap())
        self.changed.emit()

    def set_current_image(self, rgb: np.ndarray | None) -> None:
        """The frame shown for "the composition being edited"."""
        self.current_image = rgb
        if self.path is None:
            self.set_path(None)

    def thumbnail(self) -> QPixmap | None:
        pm = self.thumb.pixmap()
        return None if pm is None or pm.isNull() else pm

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

    def __init__(self, regions: list[str], default: str = "hair", parent: QWidget | None = None, *,
                 current_image: np.ndarray | None = None):
        super().__init__(parent)
        self.setWindowTitle("Region transfer (hair transfer, Sec. 6.2)")
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("The reference's code goes to the region's nodes, the target's code to every "
                             "other node (global codes included); both photos are inverted first."))
        slots = QHBoxLayout()
        self.target = PhotoSlot("Target", allow_current=True)
        self.reference = PhotoSlot("Reference")
        self.target.set_current_image(current_image)
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
