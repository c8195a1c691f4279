"""The toy image encoder (image -> w), usable without ``trainer``.

Architecturally identical to the encoder the toy generator recipe trains
jointly with the generator (same module names, so its ``encoder.pt`` state
dict loads as it is): strided convolutions down to 4x4, then a two-layer
head to one w (broadcast over every w+ entry by the caller).

Files read by :func:`load_toy_encoder`: a bare state dict (what the generator
run writes as ``runs/generator-<domain>/encoder.pt``) or this project's
wrapped form ``{"format": "sfeditor-toy-encoder", "version": 1, "config": {...},
"state_dict": {...}, "meta": {...}}`` (:func:`save_toy_encoder`).  The
architecture is inferred from the tensor shapes.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..atomic import atomic_torch_save

__all__ = ["ToyEncoder", "LooksLikeE4E", "EncoderConfig", "load_toy_encoder", "save_toy_encoder", "infer_encoder_config",
           "default_encoder_path", "ENCODER_FORMAT"]

ENCODER_FORMAT = "sfeditor-toy-encoder"
ENCODER_VERSION = 1


@dataclass(frozen=True)
class EncoderConfig:
    size: int = 64
    style_dim: int = 256
    width: int = 32

    def __post_init__(self) -> None:
        if self.size < 4 or self.size & (self.size - 1):
            raise ValueError(f"encoder input size must be a power of two >= 4, got {self.size}")
        if self.style_dim < 1 or self.width < 1:
            raise ValueError("style_dim and width must be positive")


class ToyEncoder(nn.Module):
    """Image ``[B, 3, S, S]`` in [-1, 1] -> w ``[B, style_dim]``."""

    def __init__(self, size: int = 64, style_dim: int = 256, width: int = 32):
        super().__init__()
        self.config = EncoderConfig(size, style_dim, width)
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
        ch, res = width, size
        while res > 4:
            nxt = min(ch * 2, 256)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(nxt, nxt, 3, padding=1), nn.LeakyReLU(0.2)]
            ch, res = nxt, res // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, 512), nn.LeakyReLU(0.2),
                                  nn.Linear(512, style_dim))

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise ValueError(f"encoder expects [B, 3, {self.size}, {self.size}] images, got {tuple(x.shape)}")
        return self.head(self.features(x))


def infer_encoder_config(sd: dict) -> EncoderConfig:
    """Architecture from a state dict's shapes."""
    try:
        first = sd["features.0.weight"]
        last = sd["head.3.weight"]
    except KeyError as e:
        raise ValueError(f"not a toy-encoder state dict (missing {e.args[0]})") from None
    if not isinstance(first, torch.Tensor) or first.ndim != 4 or first.shape[1] != 3:
        raise ValueError("not a toy-encoder state dict (features.0.weight must be [width, 3, 3, 3])")
    n_down = sum(1 for k in sd if k.startswith("features.") and k.endswith(".weight")
                 and isinstance(sd[k], torch.Tensor) and sd[k].ndim == 4 and sd[k].shape[-1] == 4)
    return EncoderConfig(size=4 * 2 ** n_down, style_dim=int(last.shape[0]), width=int(first.shape[0]))


def save_toy_encoder(E: ToyEncoder, path: str | os.PathLike, meta: dict | None = None, half: bool = False) -> None:
    """Atomic write of the wrapped format; ``half`` stores float16 weights (read back as float32)."""
    atomic_torch_save({"format": ENCODER_FORMAT, "version": ENCODER_VERSION, "config": asdict(E.config),
                       "state_dict": {k: (v.detach().cpu().half() if half and v.is_floating_point()
                                          else v.detach().cpu()) for k, v in E.state_dict().items()},
                       "meta": dict(meta or {})}, path)


class LooksLikeE4E(ValueError):
    """The file is an e4e/pSp checkpoint, not a toy encoder (:func:`sfeditor.images.e4e.load_e4e` reads it)."""


def load_toy_encoder(path: str | os.PathLike, map_location="cpu", G=None) -> ToyEncoder:
    """Load an encoder file; with ``G``, check it produces w of ``G``'s size at ``G``'s resolution."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"no encoder file at {path}")
    from ..integrity import verify_shipped
    from ..model.safe_torch import TorchFileError, safe_torch_load

    verify_shipped(path)               # shipped resources: SHA-256 against resources/MANIFEST.json
    try:   # sizes and CRCs checked before anything is allocated (sfeditor.model.safe_torch)
        obj = safe_torch_load(path)
    except TorchFileError as e:
        raise ValueError(f"not a readable encoder file: {e}") from None
    except Exception as e:  # truncated, foreign, or needs globals
        raise ValueError(f"{path}: not a readable encoder file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not an encoder file")
    if obj.get("format") == ENCODER_FORMAT:
        if int(obj.get("version", 0)) > ENCODER_VERSION:
            raise ValueError(f"{path}: encoder file version {obj.get('version')} is newer than supported")
        sd = obj.get("state_dict")
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict) and "features.0.weight" in obj["state_dict"]:
        sd = obj["state_dict"]
    else:
        sd = obj
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: no state dict in the encoder file")
    inner = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else {}
    if any(isinstance(k, str) and k.startswith(("encoder.", "decoder.")) for k in (*sd, *inner)):
        raise LooksLikeE4E(f"{path}: this looks like an e4e/pSp checkpoint; use sfeditor.images.e4e.load_e4e")
    try:
        cfg = infer_encoder_config(sd)
        E = ToyEncoder(cfg.size, cfg.style_dim, cfg.width)
        E.load_state_dict({k: v.float() for k, v in sd.items()})
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: {str(e).splitlines()[0]}") from None
    for k, v in E.state_dict().items():
        if not torch.isfinite(v).all():
            raise ValueError(f"{path}: tensor {k} holds non-finite values")
    if G is not None:
        if cfg.style_dim != G.style_dim:
            raise ValueError(f"{path}: encoder gives w of size {cfg.style_dim}, the generator uses {G.style_dim}")
        if cfg.size != G.size:
            raise ValueError(f"{path}: encoder reads {cfg.size}x{cfg.size} images, the generator makes "
                             f"{G.size}x{G.size}")
    return E.to(map_location).eval()


def default_encoder_path(domain: str) -> Path | None:
    """Where a shipped domain's encoder may be: ``resources/encoders/<domain>.pt``, then the
    generator run folder ``runs/generator-<domain>/encoder.pt`` (relative to the working directory)."""
    from ..domains import resources_dir

    for p in (resources_dir() / "encoders" / f"{domain}.pt", Path("runs") / f"generator-{domain}" / "encoder.pt"):
        if p.is_file():
            return p
    return None

