"""FIR resampling (upsample, pad, filter, downsample) in plain PyTorch ops.

StyleGAN2 resamples feature maps and RGB skips with the separable [1, 3, 3, 1]
FIR filter.  NVIDIA and rosinality ship a CUDA kernel for this ("upfirdn2d");
here it is written with ``pad`` + ``conv2d`` so it runs on any device without
compilation.  The numerics follow the reference ("native") implementation.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """2-D FIR kernel from 1-D taps (outer product), normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with ``kernel``, downsample.

    x: [N, C, H, W]; kernel: [kh, kw]; ``pad`` = (before, after), same for both
    axes (negative values crop).  Returns [N, C, H', W'] with
    H' = (H * up + pad0 + pad1 - kh) // down + 1.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    p0, p1 = pad
    out = x.reshape(n * c, 1, h, w)
    if up > 1:
        # [NC, 1, H, 1, W, 1] -> zero-stuffed [NC, 1, H*up, W*up]
        out = out.reshape(n * c, 1, h, 1, w, 1)
        out = F.pad(out, (0, up - 1, 0, 0, 0, up - 1))
        out = out.reshape(n * c, 1, h * up, w * up)
    out = F.pad(out, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:
        hh, ww = out.shape[-2:]
        out = out[:, :, max(-p0, 0): hh - max(-p1, 0), max(-p0, 0): ww - max(-p1, 0)]
    # true convolution: flip the kernel for conv2d's cross-correlation
    weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).to(out.dtype)
    out = F.conv2d(out, weight)
    if down > 1:
        out = out[:, :, ::down, ::down]
    return out.reshape(n, c, out.shape[-2], out.shape[-1])
