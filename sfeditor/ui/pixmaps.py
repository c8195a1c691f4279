"""numpy images -> Qt pixmaps (one converter for every view)."""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap

__all__ = ["rgb_pixmap"]


def rgb_pixmap(rgb: np.ndarray, what: str = "image", size: int | None = None) -> QPixmap:
    """uint8 [H, W, 3] (or [H, W] grey, [H, W, 4] RGBA) -> QPixmap, optionally scaled to fit ``size``
    px (nearest-neighbour: small generator images stay crisp).  A clear ValueError otherwise."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        raise ValueError(f"{what}: expected a uint8 image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{what}: expected an [H, W, 3] image, got shape {list(a.shape)}")
    a = np.ascontiguousarray(a)
    h, w, ch = a.shape
    fmt = QImage.Format.Format_RGB888 if ch == 3 else QImage.Format.Format_RGBA8888
    pm = QPixmap.fromImage(QImage(a.data, w, h, w * ch, fmt).copy())   # copy: never borrow numpy's buffer
    if size:
        pm = pm.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation)
    return pm
