"""StyleSpace (S) codes: the per-layer outputs of StyleGAN2's affine layers.

Paper Sec. 3: S is spanned by the outputs of the learned affine transforms
("modulation" layers, +1 bias included).  At 1024x1024 it has 6,048 conv
channels and 3,040 tRGB channels (|S| = 9,088).  The layout follows the
official StyleFusion code: a code is ``[conv styles, rgb styles]`` with the
conv list ``conv1, convs[0], convs[1], ...`` and the rgb list
``to_rgb1, to_rgbs[0], ...``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..atomic import atomic_torch_save

_CODE_FORMAT = "sfeditor-stylecode"
_CODE_VERSION = 1


@dataclass(frozen=True)
class StyleLayout:
    """Shape of a generator's S space.

    conv_dims / rgb_dims: channels per layer (official order).
    conv_w / rgb_w: the w+ index synthesis feeds each layer
    (conv1 <- w[0], convs[i] <- w[i+1], to_rgb1 <- w[1], to_rgbs[j] <- w[2j+3]).
    conv_res / rgb_res: spatial resolution of the feature map each layer modulates.
    """

    conv_dims: tuple[int, ...]
    rgb_dims: tuple[int, ...]
    conv_w: tuple[int, ...]
    rgb_w: tuple[int, ...]
    conv_res: tuple[int, ...]
    rgb_res: tuple[int, ...]

    @classmethod
    def for_channels(cls, resolution_channels: dict[int, int]) -> "StyleLayout":
        """Layout of a generator whose feature width at resolution r is ``resolution_channels[r]``."""
        res = sorted(resolution_channels)
        if res[0] != 4:
            raise ValueError("channel table must start at resolution 4")
        ch = resolution_channels
        conv_dims, conv_res = [ch[4]], [4]
        rgb_dims, rgb_res = [ch[4]], [4]
        for r in res[1:]:
            conv_dims += [ch[r // 2], ch[r]]   # upsampling conv takes the previous width
            conv_res += [r // 2, r]            # it modulates the low-resolution input
            rgb_dims.append(ch[r])
            rgb_res.append(r)
        n_conv = len(conv_dims)
        conv_w = tuple(range(n_conv))                       # conv1 <- 0, convs[i] <- i + 1
        rgb_w = (1,) + tuple(2 * j + 3 for j in range(len(rgb_dims) - 1))
        return cls(tuple(conv_dims), tuple(rgb_dims), conv_w, rgb_w, tuple(conv_res), tuple(rgb_res))

    @property
    def n_layers(self) -> int:
        return len(self.conv_dims) + len(self.rgb_dims)

    @property
    def n_latent(self) -> int:
        """Number of w+ entries synthesis consumes."""
        return max(max(self.conv_w), max(self.rgb_w)) + 1

    @property
    def dims(self) -> tuple[int, ...]:
        """Channels per layer in flat order (conv layers, then rgb layers)."""
        return self.conv_dims + self.rgb_dims

    @property
    def size(self) -> int:
        """|S|: total channels."""
        return sum(self.dims)

    @property
    def conv_size(self) -> int:
        return sum(self.conv_dims)

    def is_rgb(self) -> tuple[bool, ...]:
        return (False,) * len(self.conv_dims) + (True,) * len(self.rgb_dims)

    def to_dict(self) -> dict:
        return {k: list(getattr(self, k)) for k in ("conv_dims", "rgb_dims", "conv_w", "rgb_w", "conv_res", "rgb_res")}

    @classmethod
    def from_dict(cls, d: dict) -> "StyleLayout":
        try:
            return cls(**{k: tuple(int(v) for v in d[k]) for k in
                          ("conv_dims", "rgb_dims", "conv_w", "rgb_w", "conv_res", "rgb_res")})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"invalid S-space layout: {e}") from None


class StyleCode:
    """A batch of S-space codes: ``.conv`` and ``.rgb`` lists of ``[B, C_l]`` tensors."""

    __slots__ = ("conv", "rgb", "layout")

    def __init__(self, conv: Sequence[torch.Tensor], rgb: Sequence[torch.Tensor], layout: StyleLayout | None = None):
        conv, rgb = list(conv), list(rgb)
        if not conv or not rgb:
            raise ValueError("a StyleCode needs at least one conv and one rgb layer")
        b = conv[0].shape[0]
        for t in conv + rgb:
            if t.ndim != 2 or t.shape[0] != b:
                raise ValueError(f"every layer must be [B, C] with the same B; got {tuple(t.shape)}")
        if layout is None:
            layout = StyleLayout(tuple(t.shape[1] for t in conv), tuple(t.shape[1] for t in rgb),
                                 tuple(range(len(conv))), (1,) + tuple(2 * j + 3 for j in range(len(rgb) - 1)),
                                 (0,) * len(conv), (0,) * len(rgb))
        elif tuple(t.shape[1] for t in conv) != layout.conv_dims or tuple(t.shape[1] for t in rgb) != layout.rgb_dims:
            raise ValueError("layer widths do not match the S-space layout")
        self.conv, self.rgb, self.layout = conv, rgb, layout

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.conv[0].shape[0]

    @property
    def batch_size(self) -> int:
        return len(self)

    @property
    def layers(self) -> list[torch.Tensor]:
        """All layers in flat order (conv then rgb)."""
        return self.conv + self.rgb

    @property
    def device(self) -> torch.device:
        return self.conv[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.conv[0].dtype

    def __repr__(self) -> str:
        return (f"StyleCode(batch={len(self)}, conv={len(self.conv)} layers, rgb={len(self.rgb)} layers, "
                f"|S|={self.layout.size}, device={self.device})")

    def map(self, fn) -> "StyleCode":
        """Apply ``fn`` to every layer tensor."""
        return StyleCode([fn(t) for t in self.conv], [fn(t) for t in self.rgb], self.layout)

    def to(self, *args, **kwargs) -> "StyleCode":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "StyleCode":
        return self.map(torch.Tensor.detach)

    def clone(self) -> "StyleCode":
        return self.map(torch.Tensor.clone)

    def requires_grad_(self, flag: bool = True) -> "StyleCode":
        for t in self.layers:
            t.requires_grad_(flag)
        return self

    def __getitem__(self, index) -> "StyleCode":
        """Index the batch; an int keeps the batch dimension (``code[0]`` is a batch of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self.map(lambda t: t[index])

    def repeat(self, n: int) -> "StyleCode":
        return self.map(lambda t: t.repeat(n, 1))

    @staticmethod
    def cat(codes: Iterable["StyleCode"]) -> "StyleCode":
        codes = list(codes)
        if not codes:
            raise ValueError("nothing to concatenate")
        layout = codes[0].layout
        if any(c.layout.dims != layout.dims for c in codes):
            raise ValueError("cannot concatenate codes of different S-space layouts")
        conv = [torch.cat([c.conv[i] for c in codes]) for i in range(len(layout.conv_dims))]
        rgb = [torch.cat([c.rgb[i] for c in codes]) for i in range(len(layout.rgb_dims))]
        return StyleCode(conv, rgb, layout)

    # ------------------------------------------------------------- arithmetic
    def _zip(self, other: "StyleCode", fn) -> "StyleCode":
        if self.layout.dims != other.layout.dims:
            raise ValueError("codes have different S-space layouts")
        return StyleCode([fn(a, b) for a, b in zip(self.conv, other.conv)],
                         [fn(a, b) for a, b in zip(self.rgb, other.rgb)], self.layout)

    def __add__(self, other: "StyleCode") -> "StyleCode":
        return self._zip(other, torch.add)

    def __sub__(self, other: "StyleCode") -> "StyleCode":
        return self._zip(other, torch.sub)

    def __mul__(self, k: float) -> "StyleCode":
        return self.map(lambda t: t * k)

    __rmul__ = __mul__

    def lerp(self, other: "StyleCode", t: float) -> "StyleCode":
        """self + t * (other - self)  (e.g. the perturbation of Eq. 4)."""
        return self._zip(other, lambda a, b: a + t * (b - a))

    # ------------------------------------------------------------ flat vector
    def flat(self) -> torch.Tensor:
        """[B, |S|]: conv layers then rgb layers."""
        return torch.cat(self.layers, dim=1)

    @classmethod
    def from_flat(cls, layout_or_generator, x: torch.Tensor) -> "StyleCode":
        """Inverse of :meth:`flat`; accepts a :class:`StyleLayout` or anything with ``.layout``."""
        layout = getattr(layout_or_generator, "layout", layout_or_generator)
        if not isinstance(layout, StyleLayout):
            raise TypeError("from_flat needs a StyleLayout or a generator")
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != layout.size:
            raise ValueError(f"expected [B, {layout.size}] flat codes, got {tuple(x.shape)}")
        parts = list(torch.split(x, list(layout.dims), dim=1))
        n = len(layout.conv_dims)
        return cls(parts[:n], parts[n:], layout)

    # ------------------------------------------------------------- save/load
    def state(self) -> dict:
        return {"format": _CODE_FORMAT, "version": _CODE_VERSION, "layout": self.layout.to_dict(),
                "flat": self.flat().detach().cpu().float()}

    @classmethod
    def from_state(cls, state: dict) -> "StyleCode":
        if not isinstance(state, dict) or state.get("format") != _CODE_FORMAT:
            raise ValueError("not an sfeditor style-code file")
        if int(state.get("version", 0)) > _CODE_VERSION:
            raise ValueError(f"style-code file version {state.get('version')} is newer than this sfeditor supports")
        layout = StyleLayout.from_dict(state.get("layout", {}))
        flat = state.get("flat")
        if not isinstance(flat, torch.Tensor) or not torch.isfinite(flat).all():
            raise ValueError("style-code file holds no finite code tensor")
        return cls.from_flat(layout, flat.float())

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write of a small torch file (loads with ``weights_only=True``)."""
        atomic_torch_save(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> "StyleCode":
        from .safe_torch import safe_torch_load

        try:   # sizes and CRCs checked before anything is allocated (sfeditor.model.safe_torch)
            state = safe_torch_load(path, map_location=map_location)
        except FileNotFoundError:
            raise
        except Exception as e:  # truncated / foreign / pickled code
            raise ValueError(f"{os.fspath(path)}: not a readable style-code file ({type(e).__name__}: {e})") from None
        try:
            return cls.from_state(state)
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from None
