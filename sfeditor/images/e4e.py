"""The e4e encoder (Tov et al. 2021, "Designing an Encoder for StyleGAN Image Manipulation").

Paper Sec. 6.1 pairs StyleFusion with inversion; users who bring an official
e4e checkpoint (``{"state_dict": encoder.* + decoder.*, "opts", "latent_avg"}``)
get a one-pass image -> W+ encoder here, used as the projector's initial guess.

Architecture (the checkpoint's ``encoder.*`` tensors load with strict key
matching): an IR-SE-50 backbone (input conv + BN + PReLU, 24 bottleneck units
with squeeze-excitation), three feature maps taken after units 6, 20 and 23,
FPN-style lateral 1x1 convs, and one "gradual style block" per W+ entry
(stride-2 convs down to 1x1, LeakyReLU, an equalised linear layer).  e4e
predicts one w from the coarsest map and adds a delta per further entry; the
result is offset by the checkpoint's ``latent_avg``.  Input: 256x256 RGB in
[-1, 1] (images of other sizes are area/bilinear resized here).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Encoder4Editing", "E4EEncoder", "IR_SE_50_UNITS", "E4EUnsupported", "E4EInfo", "read_e4e", "load_e4e", "is_e4e_file"]

#: (in_channels, depth, stride) of the 24 IR-SE-50 bottleneck units: 3 / 4 / 14 / 3 per stage
IR_SE_50_UNITS: tuple[tuple[int, int, int], ...] = tuple(
    unit
    for cin, depth, n in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
    for unit in [(cin, depth, 2)] + [(depth, depth, 1)] * (n - 1)
)
TAPS = (6, 20, 23)        # units whose outputs feed the fine, middle and coarse style blocks
COARSE, MIDDLE = 3, 7     # W+ entries [0, 3) read the coarse map, [3, 7) the middle one, the rest the fine one


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * g


class _BottleneckIRSE(nn.Module):
    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), _SqueezeExcite(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut_layer(x) + self.res_layer(x)


class _EqualLinear(nn.Module):
    """Linear layer with the weight scaled by 1/sqrt(fan_in) at run time (StyleGAN2's equalised lr)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1 / math.sqrt(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class _GradualStyleBlock(nn.Module):
    def __init__(self, cin: int, cout: int, spatial: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = _EqualLinear(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """e4e's encoder: image ``[B, 3, 256, 256]`` -> W+ offsets ``[B, n_styles, 512]`` (before latent_avg)."""

    def __init__(self, n_styles: int = 18, w_dim: int = 512, deltas: bool = True):
        super().__init__()
        self.n_styles = n_styles
        self.deltas = deltas          # False: pSp's GradualStyleEncoder (every entry predicted on its own)
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = nn.Sequential(*[_BottleneckIRSE(*u) for u in IR_SE_50_UNITS])
        self.styles = nn.ModuleList(
            _GradualStyleBlock(512, w_dim, 16 if i < COARSE else 32 if i < MIDDLE else 64) for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(256, 512, 1)       # FPN laterals onto the 512-channel coarse map
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        taps = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in TAPS:
                taps[i] = x
        fine, middle, coarse = (taps[i] for i in TAPS)
        w0 = self.styles[0](coarse)
        out = [w0]
        features = coarse
        for i in range(1, self.n_styles):
            if i == COARSE:
                features = p2 = _upsample_add(coarse, self.latlayer1(middle))
            elif i == MIDDLE:
                features = _upsample_add(p2, self.latlayer2(fine))
            d = self.styles[i](features)
            out.append(w0 + d if self.deltas else d)      # e4e: one w plus a delta per entry
        return torch.stack(out, 1)


class E4EEncoder(nn.Module):
    """An official e4e checkpoint as a projector initialiser: image ``[B, 3, S, S]`` in [-1, 1] -> w+."""

    input_size = 256

    def __init__(self, net: Encoder4Editing, latent_avg: torch.Tensor | None):
        super().__init__()
        self.net = net
        avg = torch.zeros(net.n_styles, 512) if latent_avg is None else latent_avg.float()
        if avg.ndim == 1:
            avg = avg[None].expand(net.n_styles, -1)
        self.register_buffer("latent_avg", avg.clone())

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            mode = "area" if x.shape[-1] > self.input_size else "bilinear"
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=mode,
                              **({} if mode == "area" else {"align_corners": False}))
        return self.net(x.to(self.latent_avg.device)) + self.latent_avg[None]

    @classmethod
    def from_state_dict(cls, state_dict: dict, n_styles: int, latent_avg: torch.Tensor | None,
                        source: str | os.PathLike = "e4e checkpoint", deltas: bool = True) -> "E4EEncoder":
        """Build from a checkpoint's ``encoder.*`` tensors (strict: a missing or extra key is an error,
        except BatchNorm's ``num_batches_tracked`` counters, which older files lack)."""
        enc = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        with torch.device("meta"):       # no random init of ~100M parameters: every tensor comes from the file
            net = Encoder4Editing(n_styles, deltas=deltas)
        want = net.state_dict()
        for k in want:
            if k.endswith("num_batches_tracked") and k not in enc:
                enc[k] = torch.zeros((), dtype=torch.long)
        missing = sorted(set(want) - set(enc))
        extra = sorted(set(enc) - set(want))
        if missing or extra:
            raise ValueError(f"{source}: not an IR-SE-50 Encoder4Editing ({len(missing)} tensors missing, e.g. "
                             f"{missing[:3]}; {len(extra)} unexpected, e.g. {extra[:3]})")
        bad = [k for k in want if tuple(enc[k].shape) != tuple(want[k].shape)]
        if bad:
            k = bad[0]
            raise ValueError(f"{source}: tensor encoder.{k} has shape {tuple(enc[k].shape)}, expected "
                             f"{tuple(want[k].shape)} ({len(bad)} mismatched)")
        # a NaN or inf makes the sum non-finite; only then (or on overflow) is every element checked
        if not all(bool(torch.isfinite(v.sum())) or bool(torch.isfinite(v).all())
                   for v in enc.values() if v.is_floating_point()):
            raise ValueError(f"{source}: the encoder weights hold NaN or infinite values")
        net.load_state_dict({k: v.to(want[k].dtype) for k, v in enc.items()}, assign=True)
        return cls(net.eval(), latent_avg).eval()


# ------------------------------------------------------------------ reading e4e checkpoints
class E4EUnsupported(ValueError):
    """The file is a valid e4e/pSp checkpoint of an encoder type that is not supported."""


@dataclass
class E4EInfo:
    """What a valid e4e checkpoint holds."""

    path: str
    encoder_type: str
    resolution: int
    n_styles: int
    latent_avg_shape: tuple[int, ...] | None
    encoder_tensors: int
    decoder_tensors: int
    opts: dict


def _load_e4e_file(p: Path):
    """torch.load with ``weights_only`` (argparse.Namespace allowed for ``opts``): no code from the file runs."""
    import argparse

    from ..model.safe_torch import safe_torch_load

    try:   # sizes and CRCs checked before anything is allocated (sfeditor.model.safe_torch)
        # an official e4e file (IR-SE-50 + a 1024 px decoder) holds ~1.1 GB of float32; 2 GiB bounds what
        # a small file of aliased views may declare
        return safe_torch_load(p, safe_globals=[argparse.Namespace], declared_limit=2 << 30)
    except Exception as e:
        raise ValueError(f"{p}: not a readable e4e checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None


def read_e4e(path: str | os.PathLike) -> E4EInfo:
    """Read and validate an official e4e checkpoint safely (``weights_only``; no code runs).

    Expected: ``{"state_dict": {"encoder.*", "decoder.*"}, "opts": {...}, "latent_avg": [n_latent, 512]
    or [512]}``.  Raises ``ValueError`` for anything else, ``FileNotFoundError`` if missing.
    """
    return _read_e4e(path)[0]


def _read_e4e(path: str | os.PathLike) -> tuple[E4EInfo, dict]:
    """:func:`read_e4e`, also returning the loaded checkpoint (read once: e4e files are ~1 GB)."""
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"no e4e checkpoint at {p}")
    import argparse

    obj = _load_e4e_file(p)
    if not isinstance(obj, dict) or "state_dict" not in obj or "opts" not in obj:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{p}: not an e4e checkpoint (expected keys state_dict, opts, latent_avg; found {keys})")
    sd, opts = obj["state_dict"], obj["opts"]
    if isinstance(opts, argparse.Namespace):
        opts = vars(opts)
    if not isinstance(sd, dict) or not isinstance(opts, dict):
        raise ValueError(f"{p}: e4e 'state_dict' and 'opts' must be dictionaries")
    enc = [k for k in sd if k.startswith("encoder.")]
    dec = [k for k in sd if k.startswith("decoder.")]
    if not enc:
        raise ValueError(f"{p}: the e4e state dict has no encoder.* tensors")
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{p}: the e4e state dict holds non-tensor values")
    res = int(opts.get("stylegan_size", opts.get("output_size", 1024)) or 1024)
    if res < 4 or res & (res - 1):
        raise ValueError(f"{p}: e4e opts give an invalid StyleGAN size {res}")
    n_styles = int(math.log2(res)) * 2 - 2
    la = obj.get("latent_avg")
    la_shape = None
    if la is not None:
        if not isinstance(la, torch.Tensor) or not torch.isfinite(la).all():
            raise ValueError(f"{p}: e4e latent_avg must be a finite tensor")
        la_shape = tuple(la.shape)
        if la.ndim not in (1, 2) or la.shape[-1] < 1 or (la.ndim == 2 and la.shape[0] not in (1, n_styles)):
            raise ValueError(f"{p}: unexpected e4e latent_avg shape {la_shape} (expected [{n_styles}, w_dim] "
                             "or [w_dim])")
    info = E4EInfo(str(p), str(opts.get("encoder_type", "?")), res, n_styles, la_shape, len(enc), len(dec),
                   {k: v for k, v in opts.items() if isinstance(v, (str, int, float, bool)) or v is None})
    return info, obj


#: encoder types of e4e / pSp checkpoints that :func:`load_e4e` runs (-> predicts deltas on one w)
E4E_TYPES = {"Encoder4Editing": True, "GradualStyleEncoder": False}


def load_e4e(path: str | os.PathLike, G=None, map_location="cpu"):
    """An official e4e (or pSp ``GradualStyleEncoder``) checkpoint as a projector initialiser.

    Validated by :func:`read_e4e` (no code runs), then built as
    :class:`sfeditor.images.e4e.E4EEncoder` with strict key matching.  With ``G``, the
    W+ shape must match it ([n_latent, 512]).  Other encoder types raise
    :class:`E4EUnsupported`.
    """

    info, obj = _read_e4e(path)
    if info.encoder_type not in E4E_TYPES:
        raise E4EUnsupported(f"{info.path}: encoder type {info.encoder_type!r} is not supported (supported: "
                             f"{', '.join(E4E_TYPES)}); invert with the optimisation projector instead")
    if G is not None and (G.n_latent != info.n_styles or G.style_dim != 512):
        raise ValueError(f"{info.path}: this e4e encoder predicts {info.n_styles} x 512 codes (a "
                         f"{info.resolution}px StyleGAN2); the generator needs {G.n_latent} x {G.style_dim}")
    enc = E4EEncoder.from_state_dict(obj["state_dict"], info.n_styles, obj.get("latent_avg"), info.path,
                                     deltas=E4E_TYPES[info.encoder_type])
    return enc.to(map_location)


def is_e4e_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` reads as an e4e/pSp checkpoint (:func:`sfeditor.images.e4e.read_e4e`): its
    tensors may declare more bytes than a toy encoder file is allowed, so the toy reader refuses it."""
    try:
        read_e4e(path)
    except (ValueError, OSError):
        return False
    return True
