"""FusionNet (paper Sec. 4.3, Fig. 5): LB_align on the coarse layers, then LB_fuse.

``FusionNet(s1, s2, s_align)`` returns ``s_result`` whose region R1 follows
``s1``, region R2 follows ``s2`` and whose layout follows ``s_align``, plus the
intermediates the trainer needs (``s'1``, ``s'2``, ``q_align``, ``q_fuse``).

Module names follow the official code so that official weight files load as
they are: ``blender_common`` is LB_align, ``blender_segments`` is LB_fuse
(``.lb_align`` / ``.lb_fuse`` are aliases).

Coarse layers (A.4): a layer is coarse when its index inside its own list
(conv list ``conv1, convs[..]`` or rgb list ``to_rgb1, to_rgbs[..]``) is below
``n_common`` (default 5), in both lists, as in the official code.  LB_align
blends only these; every other layer of ``s'i`` copies ``si``.

Meaning of the returned coefficients, the same for both variants:
``q_align`` is the weight of ``s_align`` in ``s'i`` (all ones would give the
trivial ``s'1 = s'2 = s_align`` that L_alignReg prevents), ``q_fuse`` is the
weight of ``s'2`` in ``s_result`` (1 = the channel comes from child 2).

Variants (:class:`FusionNetConfig`):

``paper``
    D = [2W + 10 n_slots, 3W, 3W, 3W, W, W] (A.3: [1214, 1536, 1536, 1536, 512, 512]
    at W = 512), Eq. 2 blending with max-pooled ``q``:
    ``s'i = q_align * s_align + (1 - q_align) * si`` and
    ``s_result = q_fuse * s'2 + (1 - q_fuse) * s'1``; the tRGB bit is set for rgb layers.
    The paper does not name D's layer type, so it uses the official one
    (EqualLinear, lr_mul 0.01, fused leaky ReLU x sqrt 2 on every layer including
    the last, then sigmoid); ``final_activation=False`` makes the last layer linear.
``official``
    the published model: D = [2W + 10 n_slots (+W for LB_fuse), 5W, 5W, 5W, W, W],
    ``x = maxpool(up(a) + q * (up(b) - up(a)))`` with ``common(si, s_align)`` and
    ``segments(s'1, s'2, extra)``; extra = ``s_align`` on coarse layers and zeros
    elsewhere; the tRGB bit is 0 in full mode (an official quirk) and set only
    in stage-1-only mode; with LB_align disabled LB_fuse gets zeros as extra
    on every layer.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping

import torch
import torch.nn as nn

from .latent_blender import BlendCoefficients, BlenderConfig, LatentBlender, broadcast_codes, default_slots
from ..model.style_code import StyleCode, StyleLayout

VARIANTS = ("paper", "official")
N_MLP_LAYERS = 5
_KEY_RE = re.compile(r"^blender_(segments|common)\.disentangle_net\.(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class FusionNetConfig:
    """Widths of a FusionNet.

    Scaling rule for a generator whose widest S layer is ``W`` (``for_layout``):
    ``width = W``; hidden = ``3W`` (paper: 1536 at 512) or ``5W`` (official:
    2560 at 512); in_dim = ``2W + index_repeat * n_slots`` (+ ``W`` for the
    official LB_fuse extra input); ``n_slots = max(18, n_conv, n_rgb) + 1``
    (19 up to 1024x1024).
    """

    variant: str = "paper"
    width: int = 512
    hidden: int = 0          # 0 = the variant's default (3W paper, 5W official)
    n_slots: int = 19
    index_repeat: int = 10
    n_common: int = 5
    final_activation: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.hidden == 0:
            object.__setattr__(self, "hidden", (3 if self.variant == "paper" else 5) * self.width)
        if self.n_common < 0:
            raise ValueError("n_common must be >= 0")
        # sane bounds before any weight is allocated (a file may declare any width)
        for name, value, hi in (("width", self.width, 8192), ("hidden", self.hidden, 16 * max(self.width, 1)),
                                ("n_slots", self.n_slots, 1024), ("index_repeat", self.index_repeat, 256),
                                ("n_common", self.n_common, 1024)):
            if not isinstance(value, int) or isinstance(value, bool) or value > hi or (value < 1 and name != "n_common"):
                raise ValueError(f"{name} {value!r} is outside 1..{hi}")

    @classmethod
    def for_layout(cls, layout: StyleLayout, variant: str = "paper", **overrides) -> "FusionNetConfig":
        W = max(layout.dims)
        bad = sorted({c for c in layout.dims if W % c})
        if bad:
            raise ValueError(f"layer widths {bad} do not divide the widest layer {W}")
        kw = dict(variant=variant, width=W, n_slots=default_slots(layout))
        kw.update(overrides)
        return cls(**kw)

    def blender_configs(self) -> tuple[BlenderConfig, BlenderConfig]:
        """(LB_align = blender_common, LB_fuse = blender_segments)."""
        conv = "paper" if self.variant == "paper" else "official"
        common = BlenderConfig(width=self.width, hidden=self.hidden, n_slots=self.n_slots,
                               index_repeat=self.index_repeat, extra=False, convention=conv,
                               final_activation=self.final_activation)
        return common, replace(common, extra=(self.variant == "official"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "FusionNetConfig":
        try:
            known = {f for f in cls.__dataclass_fields__}
            return cls(**{k: v for k, v in dict(d).items() if k in known})
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid FusionNet config: {e}") from None

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], variant: str | None = None,
                        index_repeat: int = 10, **overrides) -> "FusionNetConfig":
        """Infer widths from a state dict; LB_fuse with an extra input means the official variant."""
        try:
            w_c = sd["blender_common.disentangle_net.0.weight"]
            w_s = sd["blender_segments.disentangle_net.0.weight"]
            W = int(sd["blender_common.disentangle_net.4.weight"].shape[0])
        except KeyError as e:
            raise ValueError(f"not a FusionNet state dict: missing {e.args[0]}") from None
        if not (isinstance(w_c, torch.Tensor) and isinstance(w_s, torch.Tensor)) or w_c.ndim != 2 or w_s.ndim != 2:
            raise ValueError("not a FusionNet state dict: first-layer weights must be 2-D tensors")
        hidden, in_c, in_s = int(w_c.shape[0]), int(w_c.shape[1]), int(w_s.shape[1])
        extra = in_s - in_c
        if extra not in (0, W):
            raise ValueError(f"LB_fuse input {in_s} vs LB_align input {in_c}: expected a difference of 0 or {W}")
        guessed = "official" if extra == W else "paper"
        if variant is not None and variant != guessed:
            raise ValueError(f"state dict has the {guessed} layout (LB_fuse extra input "
                             f"{'present' if extra else 'absent'}), not {variant!r}")
        enc = in_c - 2 * W
        if enc <= 0 or enc % index_repeat:
            raise ValueError(f"LB_align input {in_c} is not 2*{W} + {index_repeat} * n_slots")
        kw = dict(variant=guessed, width=W, hidden=hidden, n_slots=enc // index_repeat, index_repeat=index_repeat)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class FusionOutput:
    """What one FusionNet call produces.

    result: s_result (``None`` in stage-1-only mode); s1_aligned / s2_aligned: s'1, s'2;
    q_align: (q for s'1, q for s'2) as :class:`BlendCoefficients` over the coarse layers
    (weight of s_align), or ``None`` with LB_align disabled; q_fuse: weight of s'2, or ``None``.
    """

    result: StyleCode | None
    s1_aligned: StyleCode
    s2_aligned: StyleCode
    q_align: tuple[BlendCoefficients, BlendCoefficients] | None = None
    q_fuse: BlendCoefficients | None = None
    extras: dict = field(default_factory=dict)


class FusionNet(nn.Module):
    """LB_align (``blender_common``) + LB_fuse (``blender_segments``)."""

    def __init__(self, config: FusionNetConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = FusionNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword arguments")
        self.config = config
        common, segments = config.blender_configs()
        self.blender_segments = LatentBlender(segments)
        self.blender_common = LatentBlender(common)

    @property
    def lb_align(self) -> LatentBlender:
        return self.blender_common

    @property
    def lb_fuse(self) -> LatentBlender:
        return self.blender_segments

    @property
    def variant(self) -> str:
        return self.config.variant

    def coarse_layers(self, layout: StyleLayout) -> list[int]:
        """Flat indices of the layers LB_align blends (index inside its list < n_common)."""
        n = len(layout.conv_dims)
        k = self.config.n_common
        return [i for i in range(n) if i < k] + [n + j for j in range(len(layout.rgb_dims)) if j < k]

    def forward(self, s1: StyleCode, s2: StyleCode, s_align: StyleCode | None = None, *,
                align: bool = True, fuse: bool = True) -> FusionOutput:
        """Fuse ``s1`` (region R1), ``s2`` (region R2) with the layout of ``s_align``.

        align=False: LB_align disabled (ablation "No Global"; ``s_align`` unused).
        fuse=False: stage-1-only (no LB_fuse; ``result`` is ``None``).
        Batch-1 codes broadcast against the others.
        """
        if not align and not fuse:
            raise ValueError("at least one of align / fuse must be enabled")
        if align and s_align is None:
            raise ValueError("s_align is required when LB_align is enabled")
        s1, s2, s_align = broadcast_codes(s1, s2, s_align if align else None)
        if s1.layout.dims != s2.layout.dims or (s_align is not None and s_align.layout.dims != s1.layout.dims):
            raise ValueError("s1, s2 and s_align must share one S-space layout")
        official = self.config.variant == "official"
        layout = s1.layout
        coarse = self.coarse_layers(layout)
        bsz = len(s1)

        q_align = None
        if align and coarse:
            both = StyleCode.cat([s1, s2])
            al2 = StyleCode.cat([s_align, s_align])
            if official:   # common(s_i, s_align) = s_i + q (s_align - s_i); tRGB bit only without LB_fuse
                out, q = self.blender_common(both, al2, layers=coarse, rgb_flag=not fuse)
            else:          # Eq. 2 with s_A = s_align, s_B = s_i
                out, q = self.blender_common(al2, both, layers=coarse, rgb_flag=True)
            s1p, s2p = out[:bsz], out[bsz:]
            q_align = (BlendCoefficients([t if t is None else t[:bsz] for t in q.layers], layout),
                       BlendCoefficients([t if t is None else t[bsz:] for t in q.layers], layout))
        else:
            s1p, s2p = s1, s2
        if not fuse:
            return FusionOutput(None, s1p, s2p, q_align, None)

        if official:
            if align:
                cset = set(coarse)
                extra = [t if i in cset else None for i, t in enumerate(s_align.layers)]
            else:
                extra = None
            result, q_fuse = self.blender_segments(s1p, s2p, extra=extra, rgb_flag=False)
        else:              # Eq. 2 with s_A = s'2, s_B = s'1: q_fuse is the weight of s'2
            result, q_fuse = self.blender_segments(s2p, s1p, rgb_flag=True)
        return FusionOutput(result, s1p, s2p, q_align, q_fuse)

    # ------------------------------------------------------------ weights
    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], variant: str | None = None,
                        **overrides) -> "FusionNet":
        """Build a FusionNet whose widths match ``sd`` and load it (strict; ValueError on mismatch)."""
        sd = clean_state_dict(sd)
        net = cls(FusionNetConfig.from_state_dict(sd, variant, **overrides))
        net.load_checked(sd)
        return net

    def load_checked(self, sd: Mapping[str, torch.Tensor]) -> None:
        """``load_state_dict`` with clear ValueErrors for missing / unexpected keys, shapes and non-finite values."""
        sd = clean_state_dict(sd)
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise ValueError(f"FusionNet weights do not match: missing {missing[:6]}"
                             f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                             f"{'...' if len(unexpected) > 6 else ''}")
        for k, t in own.items():
            v = sd[k]
            if tuple(v.shape) != tuple(t.shape):
                raise ValueError(f"FusionNet weight {k} has shape {tuple(v.shape)}, expected {tuple(t.shape)}")
            if not v.is_floating_point() or not torch.isfinite(v).all():
                raise ValueError(f"FusionNet weight {k} is not a finite floating-point tensor")
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})


def clean_state_dict(sd) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` and a ``module.`` prefix; check it is a str -> Tensor mapping."""
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError("not a FusionNet state dict (expected a non-empty mapping of tensors)")
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ValueError(f"not a FusionNet state dict: entry {k!r} is not a named tensor")
        out[k[7:] if k.startswith("module.") else k] = v
    odd = [k for k in out if not _KEY_RE.match(k)]
    if odd:
        raise ValueError(f"not a FusionNet state dict: unexpected keys {odd[:6]}")
    return out


def read_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a FusionNet weight file (raw state dict or ``{"state_dict": ...}``) with ``weights_only=True``.

    The file is inspected first (CRCs and declared sizes, :func:`sfeditor.model.safe_torch.safe_torch_load`).
    A file whose metadata names classes torch does not allow (saved training options...) is read with
    those turned into inert records (:func:`sfeditor.model.safe_pickle.torch_load_inert`): tensors only,
    nothing from the file is executed.
    """
    from ..model.safe_pickle import torch_load_inert
    from ..model.safe_torch import safe_torch_load

    path = os.fspath(path)
    try:
        try:
            data = safe_torch_load(path)
        except ValueError as e:      # torch refused a global the file's metadata names
            if "Unsupported global" not in str(e) and "Weights only load failed" not in str(e):
                raise
            data = torch_load_inert(path)     # sizes already checked by safe_torch_load's inspection
            if isinstance(data, Mapping) and not isinstance(data.get("state_dict"), Mapping):
                data = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}     # tensors only
    except FileNotFoundError:
        raise
    except Exception as e:  # garbage, truncated
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise ValueError(f"{path}: not a readable FusionNet weight file ({type(e).__name__}: {msg})") from None
    try:
        return clean_state_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_fusion_net(path: str | os.PathLike, variant: str | None = None, map_location="cpu",
                    **overrides) -> FusionNet:
    """Load one FusionNet weight file (official files give ``variant='official'``)."""
    sd = read_weight_file(path)
    try:
        net = FusionNet.from_state_dict(sd, variant, **overrides)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from None
    return net.to(map_location)
