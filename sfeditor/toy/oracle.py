"""Region oracle: a tiny U-Net that segments toy-domain images into regions.

It is trained only on renderer (image, label) pairs (see ``trainer/oracle.py``)
and shipped as ``resources/oracles/{domain}.pt``; it serves as an independent
judge of which region each pixel of a *generated* image belongs to.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write_bytes
from . import DOMAINS, region_names

FORMAT = "sfeditor-oracle"
VERSION = 1
DEFAULT_CONFIG = {"widths": [16, 32, 64, 80], "dec_widths": [48, 32, 16]}
RESOURCE_DIR = Path(__file__).resolve().parents[2] / "resources" / "oracles"


def default_path(domain: str) -> Path:
    """Location of the shipped weights for ``domain``."""
    return RESOURCE_DIR / f"{domain}.pt"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class RegionOracle(nn.Module):
    """Tiny U-Net: float RGB in [-1, 1] ``[B,3,H,W]`` -> logits ``[B,K,H,W]``.

    H and W must be divisible by 8 (three 2x poolings).
    """

    def __init__(self, num_classes: int, widths=(16, 32, 64, 80), dec_widths=(48, 32, 16),
                 domain: str | None = None):
        super().__init__()
        w0, w1, w2, w3 = widths
        d2, d1, d0 = dec_widths
        self.domain = domain
        self.num_classes = num_classes
        self.config = {"widths": list(widths), "dec_widths": list(dec_widths)}
        self.enc0 = _block(3, w0)
        self.enc1 = _block(w0, w1)
        self.enc2 = _block(w1, w2)
        self.enc3 = _block(w2, w3)
        self.dec2 = _conv(w3 + w2, d2)
        self.dec1 = _conv(d2 + w1, d1)
        self.dec0 = _conv(d1 + w0, d0)
        self.head = nn.Conv2d(d0, num_classes, 1)

    @staticmethod
    def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, skip], dim=1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's four feature maps (64, 32, 16, 8 px at 64 px input), for a perceptual loss."""
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        return [e0, e1, e2, self.enc3(F.max_pool2d(e2, 2))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0, e1, e2, e3 = self.features(x)
        y = self.dec2(self._up_cat(e3, e2))
        y = self.dec1(self._up_cat(y, e1))
        y = self.dec0(self._up_cat(y, e0))
        return self.head(y)

    @property
    def region_names(self) -> list[str]:
        return region_names(self.domain) if self.domain else [str(i) for i in range(self.num_classes)]

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256):
        """Segment images; returns ``(labels, confidence)``.

        ``images``: uint8 RGB ``[N,H,W,3]`` / ``[H,W,3]`` (numpy or tensor), or a
        float tensor in [-1, 1] ``[N,3,H,W]``. NumPy input gives NumPy output
        (uint8 labels, float32 confidence); tensor input gives tensors on the
        input's device (int64 labels, float confidence), each ``[N,H,W]``.
        """
        as_numpy = isinstance(images, np.ndarray)
        x = to_model_input(images)
        single = x.ndim == 3
        if single:
            x = x[None]
        dev = next(self.parameters()).device
        was_training = self.training
        self.eval()
        labs, confs = [], []
        for i in range(0, len(x), batch_size):
            logits = self(x[i:i + batch_size].to(dev, torch.float32))
            p = logits.softmax(dim=1)
            c, lab = p.max(dim=1)
            labs.append(lab)
            confs.append(c)
        self.train(was_training)
        if labs:
            lab, conf = torch.cat(labs), torch.cat(confs)
        else:
            lab = torch.zeros((0,) + tuple(x.shape[-2:]), dtype=torch.int64, device=dev)
            conf = torch.zeros(lab.shape, device=dev)
        if single:
            lab, conf = lab[0], conf[0]
        if as_numpy:
            return lab.cpu().numpy().astype(np.uint8), conf.cpu().numpy().astype(np.float32)
        if isinstance(images, torch.Tensor):
            lab, conf = lab.to(images.device), conf.to(images.device)
        return lab, conf


def to_model_input(images) -> torch.Tensor:
    """uint8 ``[...,H,W,3]`` (numpy/tensor) or float ``[...,3,H,W]`` in [-1,1] -> float tensor NCHW."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError("images must be a numpy array or a torch tensor")
    if images.dtype == torch.uint8:
        if images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be [...,H,W,3] RGB, got shape {tuple(images.shape)}")
        return images.movedim(-1, -3).float().div_(127.5).sub_(1.0)
    if not images.is_floating_point():
        raise ValueError(f"unsupported image dtype {images.dtype}")
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"float images must be [N,3,H,W] in [-1, 1], got shape {tuple(images.shape)}")
    return images


def build_oracle(domain: str, config: dict | None = None) -> RegionOracle:
    """A fresh (untrained) oracle for ``domain``."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown toy domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    cfg = dict(DEFAULT_CONFIG if config is None else config)
    return RegionOracle(len(region_names(domain)), tuple(cfg["widths"]), tuple(cfg["dec_widths"]),
                        domain=domain)


def export_payload(model: RegionOracle, metrics: dict | None = None, extra_config: dict | None = None) -> dict:
    """The shipped file's content: compact fp16 weights plus metadata."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        sd[k] = v.half() if v.is_floating_point() else v.clone()
    cfg = dict(model.config)
    cfg["num_classes"] = model.num_classes
    cfg["regions"] = model.region_names
    if extra_config:
        cfg.update(extra_config)
    return {"format": FORMAT, "version": VERSION, "domain": model.domain, "config": cfg,
            "state_dict": sd, "metrics": dict(metrics or {})}


def save_oracle(model: RegionOracle, path, metrics: dict | None = None, extra_config: dict | None = None) -> None:
    """Write an oracle file atomically (temporary file, then ``os.replace``)."""
    buf = io.BytesIO()
    torch.save(export_payload(model, metrics, extra_config), buf)
    atomic_write_bytes(path, buf.getvalue())
    os.chmod(path, 0o644)  # the temporary file was private; shipped weights are world-readable


def _check_payload(obj, where: str) -> dict:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{where} is not an sfeditor oracle file (missing format={FORMAT!r})")
    if obj.get("version") != VERSION:
        raise ValueError(f"{where}: unsupported oracle version {obj.get('version')!r} (expected {VERSION})")
    for key in ("domain", "config", "state_dict"):
        if key not in obj:
            raise ValueError(f"{where}: oracle file lacks {key!r}")
    if obj["domain"] not in DOMAINS:
        raise ValueError(f"{where}: unknown oracle domain {obj['domain']!r}")
    if not isinstance(obj["state_dict"], dict) or not isinstance(obj["config"], dict):
        raise ValueError(f"{where}: malformed oracle file")
    return obj


def load_oracle(domain: str, device=None, path=None) -> RegionOracle:
    """Load the shipped (or given) oracle for ``domain``, in eval mode.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError``
    when it is not a valid oracle file for ``domain``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown toy domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    path = Path(path) if path is not None else default_path(domain)
    if not path.is_file():
        raise FileNotFoundError(f"oracle weights not found: {path} (train them with trainer.oracle.train_oracle)")
    from ..integrity import verify_shipped
    from ..model.safe_torch import safe_torch_load

    verify_shipped(path)               # shipped resources: SHA-256 against resources/MANIFEST.json
    try:   # sizes and CRCs checked before anything is allocated (sfeditor.model.safe_torch)
        obj = safe_torch_load(path)
    except Exception as e:  # garbage bytes, truncated file, disallowed pickle content
        raise ValueError(f"{path} is not a readable sfeditor oracle file: {type(e).__name__}: {e}") from e
    obj = _check_payload(obj, str(path))
    if obj["domain"] != domain:
        raise ValueError(f"{path} holds an oracle for {obj['domain']!r}, not {domain!r}")
    cfg = obj["config"]
    try:
        model = build_oracle(domain, {"widths": cfg["widths"], "dec_widths": cfg["dec_widths"]})
        sd = {k: (v.float() if v.is_floating_point() else v) for k, v in obj["state_dict"].items()}
        model.load_state_dict(sd)
    except (KeyError, TypeError, RuntimeError, AttributeError) as e:
        raise ValueError(f"{path}: oracle weights do not match the architecture: {e}") from e
    model.metrics = dict(obj.get("metrics") or {})
    model.eval()
    if device is not None:
        model.to(device)
    return model


def pixel_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU of label maps."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    conf = np.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"pixel_accuracy": float(tp.sum() / max(conf.sum(), 1)), "iou": [float(v) for v in iou],
            "mean_iou": float(np.nanmean(iou))}


__all__ = ["RegionOracle", "build_oracle", "load_oracle", "save_oracle", "pixel_metrics", "default_path"]
