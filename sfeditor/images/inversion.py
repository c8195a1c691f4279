"""GAN inversion: a photo -> w+ (and optionally noise maps) that the generator renders back.

Paper Sec. 6.1 inverts real images before editing them.  This module gives

* :class:`Projector` - per-image optimisation in W+ (the StyleGAN2 projector
  recipe: Adam, linear warm-up then cosine ramp-down of the learning rate,
  decaying Gaussian noise on the latent early on, optional noise-map
  optimisation with the multi-scale autocorrelation regulariser and
  re-normalisation).  Loss = pixel (MSE or L1) + ``1 - MS-SSIM`` (written
  here, works at 64x64 by using fewer scales) + an optional perceptual term
  (any callable; LPIPS only if the user has it: :func:`lpips_loss`).
  Initialisation from the mean w, a given w / w+, or an encoder
  (image -> w or w+, e.g. :class:`sfeditor.images.toy_encoder.ToyEncoder`).
  Progress callback ``(step, total, info)`` and a cancel token
  (:mod:`sfeditor.jobs`).
* :class:`InversionCache` - results keyed by sha256(pixels, generator
  fingerprint, settings, initialiser); atomic writes, unreadable or
  mismatching entries are ignored.  Default folder
  ``$SFEDITOR_CACHE/inversions`` or ``~/.cache/sfeditor/inversions``.
* :func:`read_e4e` / :func:`load_e4e` - safe reading and validation of official
  e4e encoder checkpoints (``{"state_dict", "opts", "latent_avg"}``) and the
  encoder itself (:mod:`sfeditor.images.e4e`) as the projector's initial guess.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_torch_save
from ..model.device import bf16_is_fast
from ..jobs import Cancelled, ProgressCallback
from ..model.identity import generator_fingerprint, module_fingerprint
from .metrics import psnr
from ..model.style_code import StyleCode

__all__ = ["InversionSettings", "InversionResult", "Projector", "InversionCache", "invert", "ssim", "ms_ssim",
           "noise_regularization", "normalize_noise_", "lr_schedule",
           "default_cache_dir", "lpips_loss", "image_to_tensor",
           "module_fingerprint", "save_latents", "load_latents"]

CACHE_FORMAT = "sfeditor-inversion"
CACHE_VERSION = 1


# ================================================================== metrics
def _gauss_1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' borders, per channel."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data_range: float):
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx * mx
    syy = _filter(y * y, g) - my * my
    sxy = _filter(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).flatten(2).mean(-1), cs.flatten(2).mean(-1)     # [B, C] each


def _window(size: int, win_size: int) -> int:
    w = min(win_size, size)
    return w if w % 2 else w - 1


def _to_unit(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = value_range
    if hi <= lo:
        raise ValueError("value_range must be (low, high) with low < high")
    return (x - lo) / (hi - lo)


def ssim(x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), win_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image ``[B]`` (Gaussian window, valid borders).

    Images are mapped from ``value_range`` (default [-1, 1]) to [0, 1] first:
    SSIM's luminance term depends on the absolute level, so this gives the
    usual values (as for 8-bit pictures with data range 255).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two [B, C, H, W] tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    ws = _window(min(x.shape[-2:]), win_size)
    g = _gauss_1d(ws, sigma, x.device, x.dtype)
    s, _ = _ssim_cs(_to_unit(x, value_range), _to_unit(y, value_range), g, 1.0)
    return s.mean(1)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), win_size: int = 11,
            sigma: float = 1.5, weights: Sequence[float] = MS_SSIM_WEIGHTS) -> torch.Tensor:
    """Multi-scale SSIM per image ``[B]`` (Wang et al. 2003).

    Uses as many of the 5 standard scales as the picture allows (the coarsest
    scale keeps at least one window): all 5 from 176 px up, 3 at 64 px;
    the weights of the scales used are renormalised to sum to 1.  Negative
    SSIM / contrast terms are clamped to 0 (as pytorch-msssim does).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ms_ssim needs two [B, C, H, W] tensors of one shape, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    side = min(x.shape[-2:])
    ws = _window(side, win_size)
    levels = 1
    while levels < len(weights) and side / 2 ** levels >= ws:
        levels += 1
    w = torch.tensor(weights[:levels], device=x.device, dtype=x.dtype)
    w = w / w.sum()
    g = _gauss_1d(ws, sigma, x.device, x.dtype)
    x, y = _to_unit(x, value_range), _to_unit(y, value_range)
    vals = []
    for i in range(levels):
        s, cs = _ssim_cs(x, y, g, 1.0)
        if i < levels - 1:
            vals.append(F.relu(cs))
            pad = [0, x.shape[-1] % 2, 0, x.shape[-2] % 2]
            x = F.avg_pool2d(F.pad(x, pad, mode="replicate") if any(pad) else x, 2)
            y = F.avg_pool2d(F.pad(y, pad, mode="replicate") if any(pad) else y, 2)
        else:
            vals.append(F.relu(s))
    stack = torch.stack(vals, dim=0)                     # [levels, B, C]
    out = torch.prod(stack ** w.view(-1, 1, 1), dim=0)   # [B, C]
    return out.mean(1)


# ============================================================ noise maps
def noise_regularization(noises: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared autocorrelation at lag 1 (both axes) of every noise map, at every scale down to 8x8.

    Keeps optimised noise maps white so they cannot smuggle image content in.
    """
    total = None
    for n in noises:
        while True:
            term = (n * torch.roll(n, 1, dims=3)).mean().pow(2) + (n * torch.roll(n, 1, dims=2)).mean().pow(2)
            total = term if total is None else total + term
            if n.shape[-1] <= 8 or n.shape[-2] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    if total is None:
        return torch.zeros(())
    return total


@torch.no_grad()
def normalize_noise_(noises: Sequence[torch.Tensor]) -> None:
    """Zero mean, unit variance for every map (in place)."""
    for n in noises:
        m = n.mean()
        s = n.std().clamp_min(1e-8)
        n.sub_(m).div_(s)


def lr_schedule(t: float, base: float, warmup: float, rampdown: float) -> float:
    """Learning rate at progress ``t`` in [0, 1): linear warm-up over the first ``warmup``
    fraction, cosine ramp-down over the last ``rampdown`` fraction."""
    r = 1.0
    if rampdown > 0:
        r = min(1.0, (1.0 - t) / rampdown)
        r = 0.5 - 0.5 * math.cos(r * math.pi)
    if warmup > 0:
        r *= min(1.0, t / warmup)
    return base * r


# ============================================================ settings
@dataclass
class InversionSettings:
    """Optimisation settings; every field is part of the cache key."""

    steps: int = 150
    lr: float = 0.05
    warmup: float = 0.05              # fraction of steps with a linear lr warm-up
    rampdown: float = 0.25            # fraction of steps with a cosine lr ramp-down
    space: str = "w+"                 # "w+" (one w per layer) or "w" (one w, broadcast)
    w_phase: float = 0.2              # w+: fraction of the steps that first move one shared w only
    init: str = "auto"                # "auto" (encoder if given, else mean), "encoder", "mean", "given"
    pixel_loss: str = "mse"           # "mse" or "l1"
    pixel_weight: float = 1.0
    msssim_weight: float = 0.2        # weight of (1 - MS-SSIM)
    perceptual_weight: float = 1.0    # only used with a perceptual callable
    latent_noise: float = 0.0         # initial noise on w (x the spread of w), decays to 0 by 75%
    optimize_noise: bool = False      # also optimise the per-layer noise maps
    noise_lr_scale: float = 1.0
    noise_reg: float = 1e5            # weight of the noise-map regulariser
    loss_size: int = 0                # compare at this resolution (area down-sampling); 0 = full
    bf16: bool = False                # bfloat16 autocast for the generator (~1.7x faster on a modern CPU)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError("steps must be >= 0")
        if self.space not in ("w+", "w"):
            raise ValueError("space must be 'w+' or 'w'")
        if self.init not in ("auto", "encoder", "mean", "given"):
            raise ValueError("init must be 'auto', 'encoder', 'mean' or 'given'")
        if self.pixel_loss not in ("mse", "l1"):
            raise ValueError("pixel_loss must be 'mse' or 'l1'")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("lr must be a positive number")
        if not (0 <= self.warmup <= 1 and 0 <= self.rampdown <= 1 and 0 <= self.w_phase <= 1):
            raise ValueError("warmup, rampdown and w_phase are fractions in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InversionSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def for_generator(cls, G, domain: str | None = None, **overrides) -> "InversionSettings":
        """The settings a user gets by default (CLI, editor) for ``G``; ``overrides`` win.

        Small generators (<= 128 px, the toy domains) get the preset measured in
        BENCHMARKS.md ("Inversion presets"): MSE only (MS-SSIM has one or two
        scales at 64x64; it cost 0.25 dB PSNR and a third more time per step),
        no shared-w phase, lr 0.1, bf16 autocast where it is fast, and the
        domain's measured step count and learning rate (:attr:`sfeditor.domains.Domain.inversion_steps`,
        ``inversion_lr``).
        Larger generators keep the StyleGAN2 projector's defaults.
        """
        base: dict[str, Any] = {}
        if int(getattr(G, "size", 1024)) <= 128:
            base = dict(steps=SMALL_GENERATOR_STEPS, lr=0.1, msssim_weight=0.0, w_phase=0.0,
                        bf16=bf16_is_fast(getattr(G, "device", torch.device("cpu"))))
            if domain:
                from ..domains import SHIPPED

                if domain in SHIPPED and SHIPPED[domain].inversion_steps:
                    base["steps"] = SHIPPED[domain].inversion_steps
                if domain in SHIPPED and SHIPPED[domain].inversion_lr:
                    base["lr"] = SHIPPED[domain].inversion_lr
        base.update(overrides)
        return cls(**base)


#: default projector steps for a small generator of no shipped domain
SMALL_GENERATOR_STEPS = 400


@dataclass
class InversionResult:
    """An inversion: ``w_plus`` ``[1, n_latent, w_dim]`` (CPU float32), optional noise maps."""

    w_plus: torch.Tensor
    noise: list[torch.Tensor] | None
    psnr: float
    loss: float
    steps: int
    seconds: float
    key: str = ""
    from_cache: bool = False
    init_psnr: float | None = None
    history: list[dict] = field(default_factory=list)

    def styles(self, G) -> StyleCode:
        """The S-space code (``G.styles(w_plus)``) on ``G``'s device."""
        return G.styles(self.w_plus.to(G.device))

    @torch.no_grad()
    def render(self, G) -> torch.Tensor:
        """The reconstruction ``[1, 3, S, S]`` in [-1, 1]."""
        noise = None if self.noise is None else [n.to(G.device) for n in self.noise]
        return G.synthesis(self.styles(G), noise_mode="const", noise=noise)


# ======================================================= fingerprints


# ============================================================ images
def image_to_tensor(image, size: int | None = None, device=None) -> tuple[torch.Tensor, bytes]:
    """uint8 RGB ``[H, W, 3]`` or a float tensor ``[1, 3, H, W]`` / ``[3, H, W]`` in [-1, 1]
    -> (``[1, 3, H, W]`` float in [-1, 1], bytes identifying the pixels exactly)."""
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[:2] != (1, 3):
            raise ValueError(f"expected an image tensor [1, 3, H, W], got {tuple(image.shape)}")
        t = t.float().cpu()
        ident = b"f32" + str(tuple(t.shape)).encode() + t.contiguous().numpy().tobytes()
    else:
        a = np.asarray(image)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {a.dtype} {a.shape}")
        a = np.ascontiguousarray(a)
        ident = b"u8" + str(a.shape).encode() + a.tobytes()
        t = torch.from_numpy(a).permute(2, 0, 1)[None].float().div(127.5).sub(1)
    if size is not None and (t.shape[-1] != size or t.shape[-2] != size):
        raise ValueError(f"the image is {t.shape[-1]}x{t.shape[-2]}; the generator needs {size}x{size} "
                         "(align or crop it first: sfeditor.images.alignment.prepare_image)")
    return t.to(device), ident


# ============================================================== cache
def default_cache_dir() -> Path:
    base = os.environ.get("SFEDITOR_CACHE")
    if base:
        return Path(base) / "inversions"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "sfeditor" / "inversions"


class InversionCache:
    """One ``<key>.pt`` file per result (``torch.load(weights_only=True)``), written atomically.

    Entries that cannot be read, carry another key, or do not fit the
    generator are ignored (treated as a miss).
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str, G=None) -> InversionResult | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            from ..model.safe_torch import safe_torch_load

            obj = safe_torch_load(p)
            if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT or obj.get("key") != key:
                return None
            if int(obj.get("version", 0)) > CACHE_VERSION:
                return None
            w = obj["w_plus"]
            if not isinstance(w, torch.Tensor) or w.ndim != 3 or w.shape[0] != 1 or not torch.isfinite(w).all():
                return None
            noise = obj.get("noise")
            if noise is not None:
                if not isinstance(noise, list) or not all(isinstance(n, torch.Tensor) and torch.isfinite(n).all()
                                                          for n in noise):
                    return None
            if G is not None:
                if tuple(w.shape[1:]) != (G.n_latent, G.style_dim):
                    return None
                if noise is not None:
                    want = [tuple(m.shape[-2:]) for m in G.noise_maps(1, "const")]
                    if [tuple(n.shape[-2:]) for n in noise] != want:
                        return None
            return InversionResult(w.float(), None if noise is None else [n.float() for n in noise],
                                   float(obj["psnr"]), float(obj["loss"]), int(obj["steps"]),
                                   float(obj.get("seconds", 0.0)), key, True,
                                   None if obj.get("init_psnr") is None else float(obj["init_psnr"]))
        except Exception:   # corrupt / truncated / foreign file: a miss, never a crash
            return None

    def put(self, key: str, result: InversionResult, settings: InversionSettings | None = None) -> Path | None:
        state = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key,
                 "w_plus": result.w_plus.detach().cpu().float(),
                 "noise": None if result.noise is None else [n.detach().cpu().float() for n in result.noise],
                 "psnr": float(result.psnr), "loss": float(result.loss), "steps": int(result.steps),
                 "seconds": float(result.seconds), "init_psnr": result.init_psnr,
                 "settings": json.dumps(settings.to_dict(), sort_keys=True) if settings else None}
        p = self.path(key)
        try:
            atomic_torch_save(state, p)
        except OSError:     # a read-only or full cache folder must not break inversion
            return None
        return p


# ============================================================ projector
class Projector:
    """Optimisation-based inversion into W+ for one generator.

    ``encoder``: optional callable image ``[B, 3, S, S]`` -> w ``[B, w_dim]`` or
    w+ ``[B, n_latent, w_dim]`` for the initial guess.  ``perceptual``:
    optional callable ``(pred, target) -> scalar`` on [-1, 1] images, with a
    ``perceptual_name`` that identifies it in the cache key.  ``cache``: an
    :class:`InversionCache`, a folder, ``None`` (default folder) or ``False``
    (no caching).
    """

    def __init__(self, G, settings: InversionSettings | None = None, *, encoder: Callable | None = None,
                 perceptual: Callable | None = None, perceptual_name: str | None = None,
                 cache: InversionCache | str | os.PathLike | bool | None = None):
        self.G = G
        self.settings = settings or InversionSettings()
        self.encoder = encoder
        self.perceptual = perceptual
        if perceptual is not None and not perceptual_name:
            perceptual_name = type(perceptual).__name__ if not hasattr(perceptual, "__name__") else perceptual.__name__
        self.perceptual_name = perceptual_name
        if cache is False:
            self.cache = None
        elif isinstance(cache, InversionCache):
            self.cache = cache
        else:
            self.cache = InversionCache(cache if cache not in (None, True) else None)
        self._w_stats: tuple[torch.Tensor, float] | None = None

    # ---------------------------------------------------------------- keys
    def _init_kind(self, w_init) -> str:
        kind = self.settings.init
        if kind == "auto":
            kind = "given" if w_init is not None else ("encoder" if self.encoder is not None else "mean")
        if kind == "encoder" and self.encoder is None:
            raise ValueError("init='encoder' needs an encoder")
        if kind == "given" and w_init is None:
            raise ValueError("init='given' needs w_init")
        return kind

    def cache_key(self, image, w_init: torch.Tensor | None = None) -> str:
        _, ident = image_to_tensor(image, self.G.size)
        return self._key(ident, self._init_kind(w_init), w_init)

    def _key(self, ident: bytes, kind: str, w_init) -> str:
        h = hashlib.sha256()
        h.update(b"sfeditor-inversion/1\0")
        h.update(hashlib.sha256(ident).digest())
        h.update(generator_fingerprint(self.G).encode())
        h.update(json.dumps(self.settings.to_dict(), sort_keys=True).encode())
        h.update(kind.encode())
        if kind == "encoder":
            enc = self.encoder
            h.update((module_fingerprint(enc) if isinstance(enc, torch.nn.Module) else repr(enc)).encode())
        elif kind == "given":
            t = w_init.detach().cpu().float().contiguous()
            h.update(str(tuple(t.shape)).encode() + t.numpy().tobytes())
        if self.perceptual is not None and self.settings.perceptual_weight:
            h.update(b"perceptual:" + str(self.perceptual_name).encode())
        return h.hexdigest()

    # ------------------------------------------------------------- helpers
    @torch.no_grad()
    def _w_statistics(self) -> tuple[torch.Tensor, float]:
        """(mean w, spread) from 4096 mapped z; the stored ``w_avg`` is used as the mean when set."""
        if self._w_stats is None:
            G = self.G
            w = G.sample_w(4096, seed=12345)
            mean = G.w_avg.detach().clone() if bool(G.w_avg.abs().sum() > 0) else w.mean(0)
            spread = float((w - w.mean(0)).pow(2).sum(1).mean().sqrt())
            self._w_stats = (mean, spread)
        return self._w_stats

    @torch.no_grad()
    def _initial(self, target: torch.Tensor, kind: str, w_init) -> torch.Tensor:
        G = self.G
        if kind == "given":
            w = w_init.detach().to(G.device).float()
        elif kind == "encoder":
            w = self.encoder(target).detach().float()
        else:
            w = self._w_statistics()[0][None].to(G.device)
        if w.ndim == 1:
            w = w[None]
        if w.ndim == 2:
            if w.shape != (1, G.style_dim):
                raise ValueError(f"initial w must be [1, {G.style_dim}], got {tuple(w.shape)}")
            w = w[:, None, :].expand(1, G.n_latent, G.style_dim)
        if w.shape != (1, G.n_latent, G.style_dim):
            raise ValueError(f"initial w+ must be [1, {G.n_latent}, {G.style_dim}], got {tuple(w.shape)}")
        if not torch.isfinite(w).all():
            raise ValueError("the initial latent is not finite")
        return w.clone()

    def _losses(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.settings
        if s.loss_size and pred.shape[-1] > s.loss_size:
            pred = F.interpolate(pred, size=(s.loss_size, s.loss_size), mode="area")
            target = F.interpolate(target, size=(s.loss_size, s.loss_size), mode="area")
        out = {}
        if s.pixel_weight:
            d = pred - target
            out["pixel"] = s.pixel_weight * (d.pow(2).mean() if s.pixel_loss == "mse" else d.abs().mean())
        if s.msssim_weight:
            out["msssim"] = s.msssim_weight * (1 - ms_ssim(pred, target).mean())
        if self.perceptual is not None and s.perceptual_weight:
            out["perceptual"] = s.perceptual_weight * self.perceptual(pred, target)
        return out

    # --------------------------------------------------------------- main
    def invert(self, image, *, w_init: torch.Tensor | None = None, progress: ProgressCallback | None = None,
               cancel: Any = None, use_cache: bool = True, keep_history: bool = False) -> InversionResult:
        """Invert one picture (uint8 RGB ``[S, S, 3]`` or ``[1, 3, S, S]`` in [-1, 1]).

        Raises :class:`sfeditor.jobs.Cancelled` (``.partial`` = the result so
        far, not cached) when ``cancel.requested`` becomes true.
        """
        G, s = self.G, self.settings
        target, ident = image_to_tensor(image, G.size, G.device)
        kind = self._init_kind(w_init)
        key = self._key(ident, kind, w_init)
        if use_cache and self.cache is not None:
            hit = self.cache.get(key, G)
            if hit is not None:
                if progress is not None:
                    progress(s.steps, s.steps, {"psnr": hit.psnr, "loss": hit.loss, "cached": 1.0})
                return hit

        t0 = time.time()
        was_training = G.training
        grads = [p.requires_grad for p in G.parameters()]
        G.eval()
        for p in G.parameters():
            p.requires_grad_(False)
        try:
            result = self._optimise(target, kind, w_init, progress, cancel, keep_history, t0, key)
        finally:
            for p, r in zip(G.parameters(), grads):
                p.requires_grad_(r)
            G.train(was_training)
        if self.cache is not None:
            self.cache.put(key, result, s)
        return result

    def _optimise(self, target, kind, w_init, progress, cancel, keep_history, t0, key) -> InversionResult:
        G, s = self.G, self.settings
        gen = torch.Generator(device="cpu").manual_seed(int(s.seed))
        w0 = self._initial(target, kind, w_init)
        # w+ = base (one w shared by all layers) + delta (per layer); during the first
        # ``w_phase`` of the steps (and always in space "w") only the shared base moves
        base = w0.mean(1, keepdim=True).clone().requires_grad_(True)
        delta = (w0 - base).detach().clone() if s.space == "w+" else torch.zeros_like(w0)
        switch = int(round(s.w_phase * s.steps)) if s.space == "w+" else None
        params = [{"params": [base], "lr": s.lr, "kind": "w"}]
        noises = None
        if s.optimize_noise:
            noises = [m.detach().clone().float().requires_grad_(True) for m in G.noise_maps(1, "const")]
            params.append({"params": noises, "lr": s.lr * s.noise_lr_scale, "kind": "noise"})
        opt = torch.optim.Adam(params, betas=(0.9, 0.999))
        spread = self._w_statistics()[1] if s.latent_noise > 0 else 0.0

        def full_w():
            return base + delta

        with torch.no_grad():
            pred0 = G.synthesis(G.styles(full_w()), noise_mode="const", noise=noises)
            init_psnr = float(psnr(pred0, target)[0])
        history: list[dict] = []
        loss_val = float("nan")
        best: tuple[float, Any] = (float("inf"), None)

        def partial(step: int) -> InversionResult:
            with torch.no_grad():
                pred = G.synthesis(G.styles(full_w()), noise_mode="const", noise=noises)
                p = float(psnr(pred, target)[0])
            return InversionResult(full_w().detach().cpu().float().clone(),
                                   None if noises is None else [n.detach().cpu().clone() for n in noises],
                                   p, loss_val, step, time.time() - t0, key, False, init_psnr, history)

        for i in range(s.steps):
            if cancel is not None and getattr(cancel, "requested", False):
                raise Cancelled(f"inversion cancelled at step {i}/{s.steps}", partial(i))
            t = i / max(s.steps, 1)
            lr = lr_schedule(t, s.lr, s.warmup, s.rampdown)
            if switch is not None and i == switch:
                delta.requires_grad_(True)
                opt.add_param_group({"params": [delta], "lr": lr, "kind": "delta"})
            for g in opt.param_groups:
                if g["kind"] == "noise":
                    g["lr"] = lr * s.noise_lr_scale
                elif g["kind"] == "delta":   # its own warm-up: no jump when the layers come loose
                    g["lr"] = lr * min(1.0, (i - switch + 1) / max(1.0, 0.1 * s.steps))
                else:
                    g["lr"] = lr
            w = full_w()
            strength = spread * s.latent_noise * max(0.0, 1.0 - t / 0.75) ** 2 if spread else 0.0
            if strength > 0:
                w = w + torch.randn(w.shape, generator=gen).to(w.device) * strength
            with torch.autocast(G.device.type, dtype=torch.bfloat16, enabled=s.bf16):
                pred = G.synthesis(G.styles(w), noise_mode="const", noise=noises)
            pred = pred.float()
            parts = self._losses(pred, target)
            if noises is not None and s.noise_reg:
                parts["noise_reg"] = s.noise_reg * noise_regularization(noises)
            loss = sum(parts.values()) if parts else pred.sum() * 0
            snapshot = (base.detach().clone(), delta.detach().clone(),
                        None if noises is None else [n.detach().clone() for n in noises])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if noises is not None:
                normalize_noise_(noises)
            loss_val = float(loss.detach())
            if not math.isfinite(loss_val):
                raise FloatingPointError(f"inversion diverged at step {i} (loss {loss_val}); lower the lr")
            if strength == 0 and loss_val < best[0]:   # the loss of the parameters before this step
                best = (loss_val, snapshot)
            if progress is not None or keep_history:
                with torch.no_grad():
                    p = float(psnr(pred, target)[0])
                info = {"loss": loss_val, "psnr": p, "lr": lr, **{k: float(v.detach()) for k, v in parts.items()}}
                if keep_history:
                    history.append({"step": i + 1, **info})
                if progress is not None:
                    progress(i + 1, s.steps, info)
        # keep the best parameters seen, unless the final ones are better
        final = self._losses_no_grad(full_w(), noises, target)
        if best[1] is not None and best[0] < final:
            with torch.no_grad():
                base.copy_(best[1][0])
                delta.copy_(best[1][1])
                if noises is not None:
                    for n, b in zip(noises, best[1][2]):
                        n.copy_(b)
            loss_val = best[0]
        else:
            loss_val = final
        return partial(s.steps)

    @torch.no_grad()
    def _losses_no_grad(self, w, noises, target) -> float:
        pred = self.G.synthesis(self.G.styles(w), noise_mode="const", noise=noises)
        parts = self._losses(pred, target)
        if noises is not None and self.settings.noise_reg:
            parts["noise_reg"] = self.settings.noise_reg * noise_regularization(noises)
        return float(sum(parts.values())) if parts else 0.0


def invert(G, image, settings: InversionSettings | None = None, **kwargs) -> InversionResult:
    """One-shot :meth:`Projector.invert` (``encoder``, ``cache``, ``perceptual`` go to the projector)."""
    proj_kw = {k: kwargs.pop(k) for k in ("encoder", "cache", "perceptual", "perceptual_name") if k in kwargs}
    return Projector(G, settings, **proj_kw).invert(image, **kwargs)


# ================================================================ LPIPS
def lpips_loss(net: str = "vgg", device=None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """An LPIPS perceptual term for :class:`Projector` - only for users who have the ``lpips``
    package and its downloaded backbone weights (not a dependency of sfeditor)."""
    try:
        import lpips  # type: ignore
    except ImportError:
        raise ImportError("the LPIPS perceptual loss needs the optional 'lpips' package and its backbone "
                          "weights (pip install lpips; weights are downloaded on first use)") from None
    model = lpips.LPIPS(net=net, verbose=False).eval()
    if device is not None:
        model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return model(pred, target).mean()

    loss.__name__ = f"lpips-{net}"
    return loss


# ================================================================== e4e
LATENTS_FORMAT = "sfeditor-wplus"
LATENTS_VERSION = 1


def save_latents(path: str | os.PathLike, w_plus: torch.Tensor, noise: Sequence[torch.Tensor] | None = None,
                 meta: dict | None = None) -> None:
    """Write w+ ``[B, n_latent, w_dim]`` (and optional noise maps) atomically; loads with
    ``torch.load(weights_only=True)``.  ``meta``: JSON-able facts (source image, PSNR, generator)."""
    if w_plus.ndim != 3:
        raise ValueError(f"w_plus must be [B, n_latent, w_dim], got {tuple(w_plus.shape)}")
    atomic_torch_save({"format": LATENTS_FORMAT, "version": LATENTS_VERSION,
                       "w_plus": w_plus.detach().cpu().float(),
                       "noise": None if noise is None else [n.detach().cpu().float() for n in noise],
                       "meta": json.dumps(meta or {}, sort_keys=True, default=str)}, path)


def load_latents(path: str | os.PathLike, G=None) -> tuple[torch.Tensor, list[torch.Tensor] | None, dict]:
    """Read a w+ file -> (w_plus, noise or None, meta); checks the shapes against ``G`` if given."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise FileNotFoundError(f"no latent file at {p}")
    from ..model.safe_torch import safe_torch_load

    try:   # sizes and CRCs checked before anything is allocated (sfeditor.model.safe_torch)
        obj = safe_torch_load(p)
    except Exception as e:
        raise ValueError(f"{p}: not a readable w+ file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    if isinstance(obj, dict) and obj.get("format") == "sfeditor-stylecode":
        raise ValueError(f"{p}: this is an S-space style code; editing with W directions needs the w+ file "
                         "written next to it by 'sfeditor invert' (*-wplus.pt)")
    if not isinstance(obj, dict) or obj.get("format") != LATENTS_FORMAT:
        raise ValueError(f"{p}: not an sfeditor w+ file")
    if int(obj.get("version", 0)) > LATENTS_VERSION:
        raise ValueError(f"{p}: w+ file version {obj.get('version')} is newer than supported")
    w = obj.get("w_plus")
    if not isinstance(w, torch.Tensor) or w.ndim != 3 or not torch.isfinite(w).all():
        raise ValueError(f"{p}: the w+ tensor is missing, not [B, n_latent, w_dim], or not finite")
    noise = obj.get("noise")
    if noise is not None and (not isinstance(noise, list) or
                              not all(isinstance(n, torch.Tensor) and torch.isfinite(n).all() for n in noise)):
        raise ValueError(f"{p}: damaged noise maps")
    if G is not None:
        if tuple(w.shape[1:]) != (G.n_latent, G.style_dim):
            raise ValueError(f"{p}: w+ is {tuple(w.shape[1:])}, the generator needs ({G.n_latent}, {G.style_dim})")
        if noise is not None and [tuple(n.shape[-2:]) for n in noise] != \
                [tuple(m.shape[-2:]) for m in G.noise_maps(1, "const")]:
            raise ValueError(f"{p}: noise maps do not fit the generator")
    try:
        meta = json.loads(obj.get("meta") or "{}")
    except (TypeError, json.JSONDecodeError, RecursionError):
        meta = {}
    return w.float(), noise, meta if isinstance(meta, dict) else {}
