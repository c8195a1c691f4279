"""Warm start of a wider toy generator: another run's weights, the image unchanged.

Generator v5 (issue 38) gives the eyes and mouth more channels where their pixels are by widening the
32 and 64 px layers.  A new architecture cannot load the old state dict, and a fresh run costs hours
on the CPU; :func:`widen_state` maps the old weights into the wider network so that it draws exactly
the old images (function-preserving widening, as in Net2Net):

* every old feature channel keeps its group (``trainer.generator_blocks.channel_groups``): group k's
  old channels become group k's first channels in the wider layer, so the block-sparse affines, the
  isolated groups' conv masks and the silence loss still hold;
* a new channel is computed from the old ones with fresh weights (the new network's own
  initialisation), but every layer reads it with a zero weight, so it changes nothing until training
  gives it a use (its readers' weights get gradients: its activations are not zero);
* a toRGB layer has no demodulation, so its weights are rescaled for the wider fan-in (EqualConv's
  1/sqrt(fan-in), StyleGAN2 Sec. B); the modulated convs' demodulation (Eq. 3) cancels that scale.
"""
from __future__ import annotations

import math

import torch

from sfeditor.model.generator import Generator

from .generator_blocks import channel_groups


def _layer_names(G: Generator) -> tuple[list[str], list[str]]:
    """The state-dict prefixes of ``G.conv_layers`` and ``G.rgb_layers``, in their order."""
    name_of = {id(m): n for n, m in G.named_modules()}
    return [name_of[id(m)] for m in G.conv_layers], [name_of[id(m)] for m in G.rgb_layers]


def _feature_res(G: Generator) -> tuple[list[int], list[int]]:
    """Per conv layer, the resolution of the feature map it reads and of the one it writes."""
    lay = G.layout
    ins = list(lay.conv_res)
    outs = ins[1:] + [lay.rgb_res[-1]]
    return ins, outs


def channel_map(d_old: int, d_new: int, res: int, groups: tuple[str, ...] | None = None,
                group_shares: dict | None = None, old_shares: dict | None = None) -> torch.Tensor:
    """Where each of a feature map's ``d_old`` channels goes among ``d_new``: without groups the
    first ``d_old``; with them group k's old channels (split by ``old_shares``, default the same
    shares) onto group k's first new ones (ValueError if a group would lose channels)."""
    if d_new < d_old:
        raise ValueError(f"the {res} px layers would shrink from {d_old} to {d_new} channels")
    if not groups:
        return torch.arange(d_old)
    old = channel_groups(d_old, res, groups, old_shares or group_shares)
    new = channel_groups(d_new, res, groups, group_shares)
    out = torch.empty(d_old, dtype=torch.long)
    for k, g in enumerate(groups):
        src, dst = (old == k).nonzero().flatten(), (new == k).nonzero().flatten()
        if len(dst) < len(src):
            raise ValueError(f"at {res} px group {g!r} would go from {len(src)} to {len(dst)} channels; "
                             "widen the layer or raise its share")
        out[src] = dst[:len(src)]
    return out


def _place(fresh: torch.Tensor, old: torch.Tensor, maps: dict[int, torch.Tensor],
           zero_axes: tuple[int, ...] = ()) -> torch.Tensor:
    """``fresh`` with ``old`` written at the mapped indices (``maps``: axis -> index map); the
    entries of ``zero_axes`` that no old index maps to are zeroed first (nobody reads a new channel)."""
    t = fresh.clone()
    for ax in zero_axes:
        keep = torch.zeros(t.shape[ax], dtype=torch.bool)
        keep[maps[ax]] = True
        idx = [slice(None)] * t.dim()
        idx[ax] = ~keep
        t[tuple(idx)] = 0
    idx = [slice(None)] * t.dim()
    for ax, m in maps.items():
        shape = [1] * len(maps)
        shape[sorted(maps).index(ax)] = -1
        idx[ax] = m.view(shape)
    t[tuple(idx)] = old.to(t.dtype)
    return t


@torch.no_grad()
def widen_state(old: dict, G: Generator, groups: tuple[str, ...] | None = None,
                group_shares: dict | None = None, old_shares: dict | None = None) -> dict:
    """``old`` (a generator state dict, no ``prior.*`` entries) as a state dict of ``G``, which may
    be wider at any resolution (same depth, same style_dim).  ``old_shares``: the group shares the
    old run split its channels by (default ``group_shares``).  New entries take ``G``'s current
    values (its initialisation: call after any init-time rescaling), then are made unread."""
    fresh = G.state_dict()
    if set(old) != set(fresh):
        diff = sorted(set(old) ^ set(fresh))
        raise ValueError(f"the generator to start from has another layout (another resolution or number of "
                         f"layers): its entries differ from this one's at {', '.join(diff[:3])}")
    conv, rgb = _layer_names(G)
    ins, outs = _feature_res(G)

    def widths(sd: dict) -> dict[int, int]:
        """Channels of the feature map at each resolution: the constant input's, then each conv's output."""
        return {4: int(sd["input.input"].shape[1]),
                **{r: int(sd[f"{name}.conv.weight"].shape[1]) for name, r in zip(conv, outs)}}

    d_old, d_new = widths(old), widths(fresh)
    maps = {r: channel_map(d_old[r], d_new[r], r, groups, group_shares, old_shares) for r in d_new}
    out = dict(fresh)
    done = set()

    def put(key, m, zero=(), scale=1.0):
        out[key] = _place(fresh[key], old[key] * scale, m, zero)
        done.add(key)

    put("input.input", {1: maps[4]})
    for name, r_in, r_out in zip(conv, ins, outs):
        put(f"{name}.conv.weight", {1: maps[r_out], 2: maps[r_in]}, zero=(2,))
        put(f"{name}.conv.modulation.weight", {0: maps[r_in]})
        put(f"{name}.conv.modulation.bias", {0: maps[r_in]})
        put(f"{name}.activate.bias", {0: maps[r_out]})
    for name, r in zip(rgb, G.layout.rgb_res):
        put(f"{name}.conv.weight", {2: maps[r]}, zero=(2,), scale=math.sqrt(d_new[r] / d_old[r]))
        put(f"{name}.conv.modulation.weight", {0: maps[r]})
        put(f"{name}.conv.modulation.bias", {0: maps[r]})
    for key, v in old.items():
        if key in done:
            continue
        if tuple(v.shape) != tuple(fresh[key].shape):
            raise ValueError(f"{key}: shape {tuple(v.shape)} cannot be widened to {tuple(fresh[key].shape)}")
        out[key] = v.clone()
    return out


def needs_widening(old: dict, G: Generator) -> bool:
    """True when ``old`` has the same keys as ``G``'s state but some narrower tensors."""
    fresh = G.state_dict()
    return any(k in fresh and tuple(v.shape) != tuple(fresh[k].shape) for k, v in old.items())
