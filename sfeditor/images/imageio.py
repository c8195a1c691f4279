"""Image conversion and PNG writing (atomic) shared by the CLI, trainer and app."""
from __future__ import annotations

import os

import numpy as np
import torch

from ..atomic import atomic_write_bytes


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] RGB."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray, device=None) -> torch.Tensor:
    """uint8 [B, H, W, 3] (or [H, W, 3]) RGB -> float [B, 3, H, W] in [-1, 1]."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1)


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2, fill: int = 24, scale: int = 1) -> np.ndarray:
    """Tile uint8 [B, H, W, C] images into one [rows*H, cols*W, C] picture."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    b, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(b)))
    rows = int(np.ceil(b / cols))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), fill, dtype=images.dtype)
    for i in range(b):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def encode_png(rgb: np.ndarray) -> bytes:
    import cv2

    rgb = np.asarray(rgb)
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        rgb = rgb[..., ::-1]  # OpenCV wants BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb))
    if not ok:
        raise ValueError("could not encode PNG")
    return buf.tobytes()


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB (or grey) uint8 array to ``path`` atomically."""
    atomic_write_bytes(path, encode_png(rgb))


def encode_image(rgb: np.ndarray, ext: str) -> bytes:
    """Encode for a file extension (``.png``, ``.jpg``/``.jpeg`` quality 95, ``.webp``, ``.bmp``, ``.tif``)."""
    import cv2

    from ..validate import image_extension

    ext = image_extension("x" + ext)
    if ext == ".png":
        return encode_png(rgb)
    rgb = np.asarray(rgb)
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        rgb = rgb[..., ::-1]
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb), params)
    if not ok:
        raise ValueError(f"could not encode {ext} image")
    return buf.tobytes()


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array atomically in the format its extension names (ValueError if unknown)."""
    from ..validate import image_extension

    atomic_write_bytes(path, encode_image(rgb, image_extension(path)))
