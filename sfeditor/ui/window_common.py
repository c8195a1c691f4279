"""What the main window's parts share: file filters, limits, small helpers (no maths)."""
from __future__ import annotations

from pathlib import Path

import torch


COMPOSITION_FILTER = "Compositions (*.sfcomp.json *.json *.png);;All files (*)"
OPEN_FILTER = ("Compositions and photos (*.sfcomp.json *.json *.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;"
               "Compositions (*.sfcomp.json *.json *.png);;"
               "Photos (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)")
PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MAX_RECENT = 10
AUTOSAVE_MS = 30_000
HEATMAP_SAMPLES = 32
#: Models larger than this compute the heatmap overlay on drafts of this size, with fewer samples
#: (1024 px on 2 CPU cores: 16 samples in ~15 s instead of 8 full-size ones in ~26 s; bench/large_preview.py).
HEATMAP_RESOLUTION = 256
HEATMAP_SAMPLES_LARGE = 16


def _save_path(path) -> Path | None:
    """The file Ctrl+S writes for a composition read from ``path``: a PNG (an exported image with the
    composition inside) is never overwritten with JSON, so it gives no save path (Save asks for one)."""
    if path is None:
        return None
    p = Path(path)
    return None if p.suffix.lower() == ".png" else p


def _duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s} s" if s < 90 else f"{s // 60} min {s % 60:02d} s"


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} threads)"

