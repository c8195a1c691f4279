"""StyleGAN2 generator with an explicit StyleSpace (S).

Pure PyTorch, any power-of-two resolution, any channel widths and mapping
depth.  Module and parameter names follow rosinality's stylegan2-pytorch, so
converted official checkpoints (``g_ema``) map one to one (``w_avg`` is our
extra buffer: ``latent_avg`` or a computed mean; see ``checkpoints.py``):

    style.{1..n_mlp}        mapping MLP (EqualLinear, lr_mul 0.01, fused lrelu)
    input.input             [1, C4, 4, 4] constant
    conv1, convs.{i}        StyledConv: conv.weight [1, O, I, 3, 3], conv.modulation.*,
                            noise.weight [1], activate.bias [O]; even i upsample
    to_rgb1, to_rgbs.{j}    ToRGB: conv.weight [1, 3, I, 1, 1], conv.modulation.*, bias
    noises.noise_{k}        constant noise maps, resolution 2 ** ((k + 5) // 2)

The three public stages are ``mapping`` (z -> w), ``styles`` (w / w+ -> S, the
affine layers; paper Sec. 3) and ``synthesis`` (S -> image), plus
``deep_pixels`` (paper Fig. 18 / Sec. 4.2).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .style_code import StyleCode, StyleLayout
from .upfirdn import make_kernel, upfirdn2d

NoiseMode = Literal["const", "random", "none"]
SQRT2 = math.sqrt(2.0)


def default_channels(size: int, channel_multiplier: int = 2, base: int = 512) -> dict[int, int]:
    """StyleGAN2 config-f widths: 512 up to 64, then 256*cm, 128*cm, 64*cm, 32*cm, 16*cm."""
    table = {4: base, 8: base, 16: base, 32: base, 64: 256 * channel_multiplier,
             128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
             512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    if base != 512:
        table = {r: min(c, base) for r, c in table.items()}
    return {r: table[r] for r in table if r <= size}


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator; saved as JSON beside the weights."""

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channels: dict[int, int] = field(default_factory=dict)   # resolution -> width; empty = config-f
    lr_mlp: float = 0.01
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)

    def __post_init__(self) -> None:
        if self.size < 4 or self.size & (self.size - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {self.size}")
        if not self.channels:
            self.channels = default_channels(self.size)
        self.channels = {int(r): int(c) for r, c in self.channels.items()}
        want = [2 ** i for i in range(2, int(math.log2(self.size)) + 1)]
        if sorted(self.channels) != want:
            raise ValueError(f"channels must give a width for every resolution {want}, got {sorted(self.channels)}")
        if self.n_mlp < 1 or self.style_dim < 1:
            raise ValueError("n_mlp and style_dim must be positive")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {str(r): c for r, c in self.channels.items()}
        d["blur_kernel"] = list(self.blur_kernel)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        known = {"size", "style_dim", "n_mlp", "channels", "lr_mlp", "blur_kernel"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown generator config keys: {sorted(extra)}")
        d = dict(d)
        if "blur_kernel" in d:
            d["blur_kernel"] = tuple(int(x) for x in d["blur_kernel"])
        return cls(**d)


# --------------------------------------------------------------------- layers
class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate; optional fused leaky ReLU (x sqrt 2)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale)
        out = out + self.bias * self.lr_mul
        if self.activation:
            out = F.leaky_relu(out, 0.2) * SQRT2
        return out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, lr_mul={self.lr_mul}, act={self.activation}"


class Blur(nn.Module):
    def __init__(self, kernel: tuple[int, ...], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor ** 2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the RGB skip."""

    def __init__(self, kernel: tuple[int, ...], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution (StyleGAN2 Eq. 1-3), driven by an S-space vector.

    ``modulation`` is the affine layer A: w -> s.  ``forward`` takes s directly.
    Two numerically equivalent paths: ``fused=True`` builds per-sample weights
    and runs a grouped conv (the reference); ``fused=False`` scales the input
    activations by s and the outputs by the demodulation coefficients, which
    is a plain batched conv and much faster on CPU.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))   # [1,O,I,k,k]
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def extra_repr(self) -> str:
        return f"{self.in_ch} -> {self.out_ch}, k={self.kernel_size}, up={self.upsample}, demod={self.demodulate}"

    def forward(self, x: torch.Tensor, s: torch.Tensor, fused: bool = False) -> torch.Tensor:
        b, i, h, w = x.shape                        # x: [B, I, H, W]; s: [B, I]
        weight = self.scale * self.weight[0]        # [O, I, k, k]
        if fused:
            wb = weight[None] * s[:, None, :, None, None]          # [B, O, I, k, k]
            if self.demodulate:
                d = torch.rsqrt(wb.pow(2).sum([2, 3, 4]) + 1e-8)
                wb = wb * d[:, :, None, None, None]
            if self.upsample:
                wb = wb.transpose(1, 2).reshape(b * i, self.out_ch, self.kernel_size, self.kernel_size)
                out = F.conv_transpose2d(x.reshape(1, b * i, h, w), wb, padding=0, stride=2, groups=b)
                out = self.blur(out.reshape(b, self.out_ch, out.shape[-2], out.shape[-1]))
            else:
                wb = wb.reshape(b * self.out_ch, i, self.kernel_size, self.kernel_size)
                out = F.conv2d(x.reshape(1, b * i, h, w), wb, padding=self.padding, groups=b)
                out = out.reshape(b, self.out_ch, h, w)
            return out
        x = x * s[:, :, None, None].to(x.dtype)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), padding=0, stride=2)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            d = torch.rsqrt(s.pow(2) @ weight.pow(2).sum([2, 3]).t() + 1e-8)   # [B, O]
            out = out * d[:, :, None, None].to(out.dtype)
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            return x
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias[None, :, None, None].to(x.dtype), 0.2) * SQRT2


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False,
                 blur_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x, s, noise=None, fused=False):
        return self.activate(self.noise(self.conv(x, s, fused), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True, blur_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, s, skip=None, fused=False):
        out = self.conv(x, s, fused) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


# ------------------------------------------------------------------ generator
class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z->w), ``styles`` (w->S), ``synthesis`` (S->image)."""

    def __init__(self, config: GeneratorConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = GeneratorConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword arguments")
        self.config = config
        c = config.channels
        self.size, self.style_dim = config.size, config.style_dim
        self.log_size = int(math.log2(config.size))
        self.layout = StyleLayout.for_channels(c)
        self.n_latent = self.log_size * 2 - 2

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(config.style_dim, config.style_dim, lr_mul=config.lr_mlp, activation=True)
            for _ in range(config.n_mlp)])
        self.input = ConstantInput(c[4])
        bk = config.blur_kernel
        self.conv1 = StyledConv(c[4], c[4], config.style_dim, blur_kernel=bk)
        self.to_rgb1 = ToRGB(c[4], config.style_dim, upsample=False, blur_kernel=bk)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        self.noises.register_buffer("noise_0", torch.randn(1, 1, 4, 4))
        in_ch = c[4]
        for i in range(3, self.log_size + 1):
            r, out_ch = 2 ** i, c[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, config.style_dim, upsample=True, blur_kernel=bk))
            self.convs.append(StyledConv(out_ch, out_ch, config.style_dim, blur_kernel=bk))
            self.to_rgbs.append(ToRGB(out_ch, config.style_dim, blur_kernel=bk))
            k = 2 * (i - 3) + 1
            self.noises.register_buffer(f"noise_{k}", torch.randn(1, 1, r, r))
            self.noises.register_buffer(f"noise_{k + 1}", torch.randn(1, 1, r, r))
            in_ch = out_ch
        self.register_buffer("w_avg", torch.zeros(config.style_dim))
        # optional z -> w prior replacing the mapping MLP (the toy generators': sfeditor.model.latent_prior)
        self.add_module("prior", None)
        assert self.layout.n_latent == self.n_latent

    # ----------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        return self.input.input.device

    @property
    def conv_layers(self) -> list[StyledConv]:
        return [self.conv1, *self.convs]

    @property
    def rgb_layers(self) -> list[ToRGB]:
        return [self.to_rgb1, *self.to_rgbs]

    @property
    def num_noises(self) -> int:
        return 1 + len(self.convs)

    def noise_maps(self, batch: int, mode: NoiseMode, dtype=None, generator: torch.Generator | None = None):
        if mode == "none":
            return [None] * self.num_noises
        maps = [getattr(self.noises, f"noise_{k}") for k in range(self.num_noises)]
        if mode == "const":
            return [m if dtype is None else m.to(dtype) for m in maps]
        if mode == "random":
            return [torch.randn((batch, 1) + tuple(m.shape[-2:]), device=m.device, generator=generator,
                                dtype=dtype or m.dtype) for m in maps]
        raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {mode!r}")

    # ----------------------------------------------------------------- mapping
    def mapping(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z [B, style_dim] -> w [B, style_dim]; ``truncation`` psi pulls w toward ``w_avg``.

        With a mixture prior attached (:meth:`set_prior`) z goes through it instead of the mapping MLP,
        and psi pulls w toward its own component's mean (:mod:`sfeditor.model.latent_prior`)."""
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise ValueError(f"z must be [B, {self.style_dim}], got {tuple(z.shape)}")
        if self.prior is not None:
            return self.prior(z, truncation)
        w = self.style(z)
        if truncation != 1.0:
            w = self.w_avg + truncation * (w - self.w_avg)
        return w

    def set_prior(self, prior) -> None:
        """Attach a :class:`sfeditor.model.latent_prior.MixturePrior` as z -> w (None: the mapping MLP again)."""
        if prior is not None and prior.dim != self.style_dim:
            raise ValueError(f"the prior samples {prior.dim}-dim codes; this generator's w has {self.style_dim}")
        self.prior = None if prior is None else prior.to(self.w_avg.device)

    def sample_w(self, n: int, seed: int | None = None, truncation: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """w for ``n`` Gaussian z drawn on the CPU from ``seed`` (device-independent)."""
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.style_dim, generator=generator).to(self.device)
        return self.mapping(z, truncation)

    @torch.no_grad()
    def update_w_avg(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Set ``w_avg`` to the mean of ``n`` mapped z (the official ``mean_latent``)."""
        self.w_avg.copy_(self.sample_w(n, seed=seed).mean(0))
        return self.w_avg

    # ------------------------------------------------------------------ styles
    def styles(self, w: torch.Tensor) -> StyleCode:
        """w [B, style_dim] or w+ [B, n_latent, style_dim] -> StyleCode (the affine layers)."""
        if w.ndim == 2:
            w = w[:, None, :].expand(-1, self.n_latent, -1)
        if w.ndim != 3 or w.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"w must be [B, {self.style_dim}] or [B, {self.n_latent}, {self.style_dim}], "
                             f"got {tuple(w.shape)}")
        conv = [layer.conv.modulation(w[:, i]) for layer, i in zip(self.conv_layers, self.layout.conv_w)]
        rgb = [layer.conv.modulation(w[:, i]) for layer, i in zip(self.rgb_layers, self.layout.rgb_w)]
        return StyleCode(conv, rgb, self.layout)

    def random_styles(self, n: int, seed: int | None = None, truncation: float = 1.0) -> StyleCode:
        return self.styles(self.sample_w(n, seed=seed, truncation=truncation))

    # --------------------------------------------------------------- synthesis
    def synthesis(self, s: StyleCode, noise_mode: NoiseMode = "const", return_features: bool = False,
                  fused: bool = False, noise: list[torch.Tensor | None] | None = None,
                  max_resolution: int | None = None, checkpoint: bool = False):
        """S -> images [B, 3, H, W] in about [-1, 1].

        With ``return_features`` also returns ``{"conv": [...], "rgb": [...]}``: for
        every S layer, the feature map its style channels modulate (the layer's input).

        ``max_resolution`` (a power of two >= 4) stops the synthesis after the toRGB
        layer of that resolution and returns the skip branch's image there (StyleGAN2's
        output is the sum of every toRGB layer's upsampled image, so this is the image
        without the finer layers' detail): a draft, e.g. 256 px of a 1024 px model for
        about a quarter of the cost (``bench/draft_synthesis.py``).  Values at or above
        ``self.size`` give the full image, identical to leaving it out.

        ``checkpoint`` (with autograd on): keep only each layer's input for the backward pass and
        recompute the layer's inner activations there (``torch.utils.checkpoint``): the same values and
        gradients for one more forward pass, and less memory.  A FusionNet stage-3 step on a config-f 1024
        generator at batch 1 peaked at 11.6 GB without it and 8.5 GB with it (bench/fullsize_chain.py,
        issue 40); only checkpointing the 512 and 1024 px layers left 9.8 GB.  (Training's stage 3 also runs
        its backward pass image by image: ``trainer/synthesis_by_parts.py``, 6.4 GB.)
        """
        if not isinstance(s, StyleCode):
            raise TypeError("synthesis expects a StyleCode (use G.styles(w))")
        if s.layout.dims != self.layout.dims:
            raise ValueError("StyleCode layout does not match this generator")
        stop = self.size
        if max_resolution is not None:
            r = int(max_resolution)
            if r != max_resolution or r < 4 or r & (r - 1):
                raise ValueError(f"max_resolution must be a power of two >= 4, got {max_resolution!r}")
            if return_features and r < self.size:
                raise ValueError("return_features needs the full synthesis (leave max_resolution out)")
            stop = min(r, self.size)
        b = len(s)
        if noise is None:
            noise = self.noise_maps(b, noise_mode, generator=None)
        feats_conv, feats_rgb = [], []
        if checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint as recomputed

            def run(layer, *args):
                return recomputed(layer, *args, use_reentrant=False)
        else:
            def run(layer, *args):
                return layer(*args)

        out = self.input(b)
        if return_features:
            feats_conv.append(out)
        out = run(self.conv1, out, s.conv[0], noise[0], fused)
        if return_features:
            feats_rgb.append(out)
        skip = run(self.to_rgb1, out, s.rgb[0], None, fused)
        for k, to_rgb in enumerate(self.to_rgbs):
            if 2 ** (k + 3) > stop:
                break
            for j in (2 * k, 2 * k + 1):
                if return_features:
                    feats_conv.append(out)
                out = run(self.convs[j], out, s.conv[j + 1], noise[j + 1], fused)
            if return_features:
                feats_rgb.append(out)
            skip = run(to_rgb, out, s.rgb[k + 1], skip, fused)
        if return_features:
            return skip, {"conv": feats_conv, "rgb": feats_rgb}
        return skip

    def forward(self, z: torch.Tensor, truncation: float = 1.0, noise_mode: NoiseMode = "const") -> torch.Tensor:
        return self.synthesis(self.styles(self.mapping(z, truncation)), noise_mode)

    def deep_pixels(self, s: StyleCode, size: int = 64, noise_mode: NoiseMode = "const") -> torch.Tensor:
        """DeepPixels (paper Sec. 4.2, Fig. 18): [B, C_conv, size, size].

        Every synthesis feature map that a conv style modulates, resized to
        ``size`` (bilinear) and concatenated along channels, so channel c lines
        up with conv style channel c (C_conv = 6,048 at 1024).
        """
        _, feats = self.synthesis(s, noise_mode, return_features=True)
        return torch.cat([resize_features(f, size) for f in feats["conv"]], dim=1)

    # -------------------------------------------------------------------- misc
    @torch.no_grad()
    def demodulated_weight_norms(self, s: StyleCode) -> list[torch.Tensor]:
        """Per-output-filter norms of the modulated, demodulated weights (all ~1); a check."""
        norms = []
        for layer, st in zip(self.conv_layers, s.conv):
            conv = layer.conv
            wb = conv.scale * conv.weight[0][None] * st[:, None, :, None, None]
            d = torch.rsqrt(wb.pow(2).sum([2, 3, 4]) + 1e-8)
            norms.append((wb * d[:, :, None, None, None]).pow(2).sum([2, 3, 4]).sqrt())
        return norms


def resize_features(f: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a feature map to ``size`` x ``size`` (bilinear; antialiased when shrinking)."""
    if f.shape[-1] == size and f.shape[-2] == size:
        return f
    return F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=f.shape[-1] > size)
