"""The Latent Blender (paper Sec. 4.3, Fig. 6, Appendix A.3).

Given two S-space codes ``a`` and ``b`` a shared fully-connected network D
predicts a per-channel fusion coefficient ``q`` in [0, 1] and the codes are
blended channel by channel.  D sees one generator layer at a time (the
"layer encoding" of A.3):

    x_l = [ up(a_l), up(b_l), (up(extra_l)), onehot(l) tiled ``index_repeat`` times ]
    q_l = pool(sigmoid(D(x_l)))

``up`` is nearest-neighbour upsampling of a layer's ``C_l`` channels to the
blender width ``W`` (the widest layer: 512 for the official 1024/512/256
generators), i.e. every channel repeated ``W / C_l`` times; ``pool`` is a
max-pool with kernel and stride ``W / C_l`` back to ``C_l`` channels.  The
one-hot has ``n_slots`` entries: slot ``i`` marks the layer's index inside its
own list (conv layers ``conv1, convs[0..]`` or rgb layers
``to_rgb1, to_rgbs[0..]``), the last slot is the tRGB bit r(l).  The whole
slot vector is tiled (``[v, v, ..., v]``), not each entry repeated.

Every selected layer of every image goes through ONE batched MLP call: rows
``[B * n_layers, in_dim]``; layers of equal width share one upsample / pool.

Two conventions (``BlenderConfig.convention``):

``"paper"`` (Eq. 2)
    ``q`` is max-pooled to the layer width and ``s' = q * a + (1 - q) * b``:
    ``q`` is the weight of the FIRST input.
``"official"`` (the published StyleFusion code)
    the blend happens at width ``W`` and the blended vector is max-pooled:
    ``s' = maxpool(up(a) + q * (up(b) - up(a)))``: ``q`` is the weight of the
    SECOND input.  For layers narrower than ``W`` this is not exactly Eq. 2
    with a pooled ``q`` (max of a blend is not the blend of a max); the ``q``
    this module returns for reporting / regularisation is ``maxpool(q)``.

Layer widths must divide ``W``.  How widths scale with the generator is
decided by :class:`sfeditor.fusion.fusion_net.FusionNetConfig` (``for_layout``).

Inference fast path (``LatentBlender.mlp``): whenever autograd is not
recording, D runs from a folded copy of its weights: the equalised-LR scale
is multiplied into each weight matrix once (``w * lr_mul / sqrt(in)``, the
very product ``EqualLinear`` forms on every call), stored contiguous in the
layout ``F.linear`` reads (``[out, in]``; a transposed copy is not bit-identical);
the bias is pre-multiplied by ``lr_mul``.  The copy is rebuilt whenever a
parameter changes (in-place version counters), so a trained or re-loaded net
is never served stale weights; the training path (autograd recording) always
runs the modules themselves.  In float32 the result is bit-identical to the
module path (same products, same summation: ``tests/test_fast_fusion.py``).
``set_inference_dtype(torch.bfloat16)`` keeps the folded copy in bf16 (half
the bytes to read; use only where the CPU runs bf16 natively, see
:func:`sfeditor.model.device.bf16_is_fast`); q is then computed from bf16
matrix products and differs from float32 by ~1e-2 at most.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.generator import SQRT2, EqualLinear
from ..model.style_code import StyleCode, StyleLayout

CONVENTIONS = ("paper", "official")
#: one-hot slots for layer indices at the official resolutions (MAX_LAYERS of the official code)
BASE_INDEX_SLOTS = 18


def default_slots(layout: StyleLayout | None) -> int:
    """Number of one-hot slots: ``max(18, n_conv, n_rgb) + 1`` (the +1 is the tRGB bit).

    19 for every generator up to 1024x1024 (17 conv layers), as in the paper
    (18 + 1) and the official code; larger only for 2048+ generators.
    """
    if layout is None:
        return BASE_INDEX_SLOTS + 1
    return max(BASE_INDEX_SLOTS, len(layout.conv_dims), len(layout.rgb_dims)) + 1


@dataclass(frozen=True)
class BlenderConfig:
    """Shape of one Latent Blender's network D: ``[in_dim, hidden, hidden, hidden, width, width]``.

    in_dim = 2 * width (+ width if ``extra``) + n_slots * index_repeat.
    """

    width: int = 512
    hidden: int = 1536
    n_slots: int = 19
    index_repeat: int = 10
    extra: bool = False
    convention: str = "paper"
    final_activation: bool = True   # fused leaky ReLU (x sqrt 2) on the last layer too, as officially
    lr_mul: float = 0.01

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if min(self.width, self.hidden, self.n_slots, self.index_repeat) < 1:
            raise ValueError("width, hidden, n_slots and index_repeat must be positive")
        if self.n_slots < 2:
            raise ValueError("n_slots must leave room for the tRGB bit")

    @property
    def in_dim(self) -> int:
        return (3 if self.extra else 2) * self.width + self.n_slots * self.index_repeat

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.in_dim, self.hidden, self.hidden, self.hidden, self.width, self.width)

    def to_dict(self) -> dict:
        return asdict(self)


class BlendCoefficients:
    """Per-layer fusion coefficients ``q``: ``layers[l]`` is ``[B, C_l]`` or ``None`` (layer not blended).

    Layers follow the flat S order (conv layers, then rgb layers).
    """

    __slots__ = ("layers", "layout")

    def __init__(self, layers: Sequence[torch.Tensor | None], layout: StyleLayout):
        self.layers, self.layout = list(layers), layout

    @property
    def computed(self) -> list[int]:
        """Flat indices of the layers that were blended."""
        return [i for i, t in enumerate(self.layers) if t is not None]

    def flat(self) -> torch.Tensor:
        """``[B, n]``: the computed layers only, concatenated."""
        parts = [t for t in self.layers if t is not None]
        if not parts:
            raise ValueError("no layer was blended")
        return torch.cat(parts, dim=1)

    def as_code(self, fill: float = 0.0) -> StyleCode:
        """A StyleCode of ``q``; layers that were not blended hold ``fill``."""
        ref = next(t for t in self.layers if t is not None)
        full = [t if t is not None else ref.new_full((ref.shape[0], c), fill)
                for t, c in zip(self.layers, self.layout.dims)]
        n = len(self.layout.conv_dims)
        return StyleCode(full[:n], full[n:], self.layout)

    def __repr__(self) -> str:
        return f"BlendCoefficients(layers={self.computed})"


def layer_slots(layout: StyleLayout) -> list[tuple[int, bool]]:
    """``(index inside its list, is_rgb)`` for every flat layer."""
    n = len(layout.conv_dims)
    return [(i, False) for i in range(n)] + [(i, True) for i in range(len(layout.rgb_dims))]


def broadcast_codes(*codes: StyleCode | None) -> list[StyleCode | None]:
    """Expand batch-1 codes to the common batch size (``None`` passes through)."""
    sizes = {len(c) for c in codes if c is not None}
    if len(sizes) <= 1:
        return list(codes)
    big = max(sizes)
    if sizes - {1, big}:
        raise ValueError(f"codes have incompatible batch sizes {sorted(sizes)}")
    return [c if c is None or len(c) == big else c.map(lambda t: t.expand(big, -1)) for c in codes]


class LatentBlender(nn.Module):
    """Latent Blender with network D in ``self.disentangle_net`` (official parameter names)."""

    def __init__(self, config: BlenderConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = BlenderConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword arguments")
        self.config = config
        d = config.dims
        last = len(d) - 2
        self.disentangle_net = nn.Sequential(*[
            EqualLinear(d[i], d[i + 1], lr_mul=config.lr_mul, activation=(i < last or config.final_activation))
            for i in range(len(d) - 1)])
        self._enc_cache: dict[tuple, torch.Tensor] = {}
        self._folded: tuple | None = None          # (key, [(w, bias, act), ...]) for mlp()
        self.inference_dtype = torch.float32
        self.fast_inference = True                 # False: no-grad calls run the modules too (reference)

    # ------------------------------------------------------ fast inference
    def set_inference_dtype(self, dtype: torch.dtype) -> None:
        """Precision of the folded inference weights (float32, or bfloat16 where bf16 is native)."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError("inference dtype must be torch.float32 or torch.bfloat16")
        if dtype != self.inference_dtype:
            self.inference_dtype = dtype
            self._folded = None

    def drop_folded(self) -> None:
        """Free the folded inference copy (it is rebuilt on the next no-grad call)."""
        self._folded = None

    def folded_layers(self) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
        """``[(w [out, in], bias [out], activation), ...]``: D with the equalised-LR scales folded in.

        Built once per parameter version; ``w = weight * scale`` (contiguous) and
        ``bias * lr_mul`` are the exact products ``EqualLinear.forward`` forms on each call.
        """
        mods = list(self.disentangle_net)
        params = [t for m in mods for t in (m.weight, m.bias)]
        key = (tuple((id(t), t._version, t.device, t.dtype) for t in params), self.inference_dtype)
        if self._folded is not None and self._folded[0] == key:
            return self._folded[1]
        self._folded = None                       # free the stale copy before building the new one
        layers = []
        with torch.no_grad():
            for m in mods:
                w = (m.weight * m.scale).to(self.inference_dtype).contiguous()
                b = (m.bias * m.lr_mul).to(self.inference_dtype)
                layers.append((w, b, bool(m.activation)))
        self._folded = (key, layers)
        return layers

    def _fast_ok(self, x: torch.Tensor) -> bool:
        if not self.fast_inference:
            return False
        if not torch.is_grad_enabled():
            return True
        return not x.requires_grad and not any(p.requires_grad for p in self.parameters())

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) for ``x = [rows, in_dim]`` (before the sigmoid).

        No autograd recording: one chain of matrix products over the folded weights
        (:meth:`folded_layers`), activations in place.  Otherwise the modules themselves.
        """
        if not self._fast_ok(x):
            return self.disentangle_net(x)
        layers = self.folded_layers()
        out_dtype = x.dtype
        h = x.to(self.inference_dtype)
        for w, b, act in layers:
            h = F.linear(h, w)                    # the product EqualLinear forms, without its weight * scale
            h.add_(b)
            if act:
                F.leaky_relu_(h, 0.2)
                h.mul_(SQRT2)
        return h.to(out_dtype)

    def _apply(self, fn, *args, **kwargs):   # .to() / .half(): the folded copy is stale
        self._folded = None
        return super()._apply(fn, *args, **kwargs)

    # ----------------------------------------------------------- encodings
    def encoding(self, slots: Sequence[tuple[int, bool]], rgb_flag: bool, device, dtype) -> torch.Tensor:
        """``[L, n_slots * index_repeat]``: one-hot layer index + tRGB bit, the slot vector tiled."""
        key = (tuple(slots), bool(rgb_flag), str(device), dtype)
        enc = self._enc_cache.get(key)
        if enc is None:
            c = self.config
            v = torch.zeros(len(slots), c.n_slots, dtype=dtype)
            for row, (i, is_rgb) in enumerate(slots):
                if not 0 <= i < c.n_slots - 1:
                    raise ValueError(f"layer index {i} does not fit the blender's {c.n_slots - 1} index slots")
                v[row, i] = 1
                if rgb_flag and is_rgb:
                    v[row, -1] = 1
            enc = v.repeat(1, c.index_repeat).to(device)
            if len(self._enc_cache) > 64:
                self._enc_cache.clear()
            self._enc_cache[key] = enc
        return enc

    # ---------------------------------------------------------------- core
    def blend_layers(self, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor],
                     slots: Sequence[tuple[int, bool]], extra: Sequence[torch.Tensor | None] | None = None,
                     rgb_flag: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Blend lists of ``[B, C_l]`` layer tensors in one MLP call; returns ``(s', q)`` lists.

        ``slots[k] = (index inside its list, is_rgb)`` for layer k.  ``extra[k]``
        (only with ``config.extra``) is a ``[B, C_l]`` tensor or ``None`` (zeros).
        ``rgb_flag=False`` leaves the tRGB bit 0 for every layer (official quirk).
        """
        c = self.config
        n = len(a)
        if not (len(b) == len(slots) == n) or (extra is not None and len(extra) != n):
            raise ValueError("a, b, slots and extra must have one entry per layer")
        if n == 0:
            return [], []
        first = self.disentangle_net[0]
        dtype, device = first.weight.dtype, first.weight.device
        bsz = a[0].shape[0]
        W = c.width
        groups: dict[int, list[int]] = {}
        for k, t in enumerate(a):
            ch = t.shape[1]
            if t.ndim != 2 or b[k].shape != t.shape or t.shape[0] != bsz:
                raise ValueError(f"layer {k}: a and b must be [B, C] with equal shapes, "
                                 f"got {tuple(t.shape)} and {tuple(b[k].shape)}")
            if ch > W or W % ch:
                raise ValueError(f"layer width {ch} does not divide the blender width {W}")
            groups.setdefault(ch, []).append(k)

        def up(ts: list[torch.Tensor], rep: int) -> torch.Tensor:   # [B, L, C] -> [B, L, W]
            x = torch.stack(ts, 1).to(dtype)
            return x if rep == 1 else x.repeat_interleave(rep, dim=2)

        zeros = None
        rows, stash = [], []
        for ch, ks in groups.items():
            rep = W // ch
            au, bu = up([a[k] for k in ks], rep), up([b[k] for k in ks], rep)
            parts = [au, bu]
            if c.extra:
                if extra is None or all(extra[k] is None for k in ks):
                    if zeros is None:
                        zeros = au.new_zeros(bsz, 1, W)
                    parts.append(zeros.expand(bsz, len(ks), W))
                else:
                    parts.append(up([extra[k] if extra[k] is not None else a[k].new_zeros(a[k].shape)
                                     for k in ks], rep))
            enc = self.encoding([slots[k] for k in ks], rgb_flag, device, dtype)
            parts.append(enc.unsqueeze(0).expand(bsz, -1, -1))
            rows.append(torch.cat(parts, dim=2))
            stash.append((ch, ks, rep, au, bu))
        x = torch.cat(rows, dim=1) if len(rows) > 1 else rows[0]          # [B, L, in_dim]
        n_rows = x.shape[1]
        q_all = torch.sigmoid(self.mlp(x.reshape(bsz * n_rows, c.in_dim))).view(bsz, n_rows, W)

        out: list[torch.Tensor | None] = [None] * n
        qs: list[torch.Tensor | None] = [None] * n
        start = 0
        for ch, ks, rep, au, bu in stash:
            q_up = q_all[:, start:start + len(ks)]
            start += len(ks)
            if c.convention == "paper":
                q = q_up if rep == 1 else q_up.view(bsz, len(ks), ch, rep).amax(dim=3)
                a_l = au if rep == 1 else au[:, :, ::rep]
                b_l = bu if rep == 1 else bu[:, :, ::rep]
                s = q * a_l + (1 - q) * b_l
            else:
                s_up = au + q_up * (bu - au)
                s = s_up if rep == 1 else s_up.view(bsz, len(ks), ch, rep).amax(dim=3)
                q = q_up if rep == 1 else q_up.view(bsz, len(ks), ch, rep).amax(dim=3)
            for j, k in enumerate(ks):
                out[k], qs[k] = s[:, j], q[:, j]
        return out, qs  # type: ignore[return-value]

    # ------------------------------------------------------------- public
    def forward(self, a: StyleCode, b: StyleCode, layers: Iterable[int] | None = None,
                extra: StyleCode | Sequence[torch.Tensor | None] | None = None, rgb_flag: bool = True,
                fill: StyleCode | None = None) -> tuple[StyleCode, BlendCoefficients]:
        """Blend two codes; returns ``(s', q)``.

        layers: flat layer indices to blend (conv layers first, then rgb); ``None`` = all.
        The other layers copy ``fill``, by default the input that ``q = 0`` selects
        (``b`` for the paper convention, ``a`` for the official one); their ``q`` is ``None``.
        extra: per-layer extra input (``config.extra`` only): a StyleCode or a list with
        ``None`` for zero entries.
        """
        if not isinstance(a, StyleCode) or not isinstance(b, StyleCode):
            raise TypeError("LatentBlender expects StyleCode inputs")
        if a.layout.dims != b.layout.dims:
            raise ValueError("a and b have different S-space layouts")
        ex_code = extra if isinstance(extra, StyleCode) else None
        a, b, ex_code, fill = broadcast_codes(a, b, ex_code, fill)
        layout = a.layout
        n_layers = layout.n_layers
        sel = list(range(n_layers)) if layers is None else sorted(set(int(i) for i in layers))
        if any(not 0 <= i < n_layers for i in sel):
            raise ValueError(f"layer indices must be in [0, {n_layers})")
        if extra is not None and not self.config.extra:
            raise ValueError("this blender takes no extra input")
        ex_layers: list | None = None
        if ex_code is not None:
            ex_layers = ex_code.layers
        elif extra is not None:
            ex_layers = list(extra)
            if len(ex_layers) != n_layers:
                raise ValueError(f"extra must have {n_layers} layers")
        if ex_layers is not None and len(ex_layers) and len(ex_layers) != n_layers:
            raise ValueError("extra code has a different layout")
        al, bl = a.layers, b.layers
        slots = layer_slots(layout)
        outs, qs = self.blend_layers([al[i] for i in sel], [bl[i] for i in sel], [slots[i] for i in sel],
                                     None if ex_layers is None else [ex_layers[i] for i in sel], rgb_flag)
        if fill is None:
            fill = b if self.config.convention == "paper" else a
        result = list(fill.layers)
        q_layers: list[torch.Tensor | None] = [None] * n_layers
        for i, s, q in zip(sel, outs, qs):
            result[i], q_layers[i] = s, q
        n = len(layout.conv_dims)
        return StyleCode(result[:n], result[n:], layout), BlendCoefficients(q_layers, layout)
