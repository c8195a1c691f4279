"""Generator v5's factorised code: w = [w_global | one block per region], block-sparse affines.

Issue 38: in a toy StyleGAN2 whose every style channel is an affine function of the whole w, a small
region (eyes: ~2 % of a 64 px face) never gets channels of its own, and swapping a group of S
channels leaves the space of codes the generator was trained on.  Generator v5 splits w into blocks
and each layer's affine A (Sec. 3, ``s = A(w)``) into groups of channels: the channels of region k
read only ``w_global`` and ``w_k``, the global channels only ``w_global``.  Every other weight of the
affine is zero, so the file stays an ordinary StyleGAN2 checkpoint (every loader, the S space and the
FusionNets are unchanged; the hierarchy is never told the grouping).

Where the channels go is a recipe setting (``group_shares``): a share of each resolution's channels
per group, so the eyes and mouth get their channels in the 16-64 px layers where their pixels are.
"""
from __future__ import annotations

import math

import torch

from sfeditor.model.generator import Generator


def block_sizes(groups: tuple[str, ...], style_dim: int, global_dim: int) -> dict[str, int]:
    """The width of each block of w: ``global_dim`` for ``global``, the rest split evenly over the
    regions (the first ones take the remainder)."""
    regions = [g for g in groups if g != "global"]
    if "global" not in groups or not regions:
        raise ValueError(f"the groups must be 'global' and at least one region, not {groups}")
    rest = style_dim - global_dim
    if global_dim < 1 or rest < len(regions):
        raise ValueError(f"w_global_dim {global_dim} leaves {rest} of style_dim {style_dim} for "
                         f"{len(regions)} regions")
    per, extra = divmod(rest, len(regions))
    sizes = {"global": global_dim}
    for i, g in enumerate(regions):
        sizes[g] = per + (1 if i < extra else 0)
    return {g: sizes[g] for g in groups}


def block_masks(groups: tuple[str, ...], style_dim: int, global_dim: int) -> torch.Tensor:
    """[n_groups, style_dim] 0/1: the dimensions of w that make up each group's block (the blocks
    are contiguous, in the order of ``groups``)."""
    sizes = block_sizes(groups, style_dim, global_dim)
    m = torch.zeros(len(groups), style_dim)
    start = 0
    for i, g in enumerate(groups):
        m[i, start:start + sizes[g]] = 1
        start += sizes[g]
    return m


def _allocate(n: int, shares: list[float]) -> list[int]:
    """Split ``n`` channels by ``shares`` (largest remainders; every positive share gets >= 1)."""
    total = sum(shares)
    raw = [n * s / total for s in shares]
    counts = [max(1, int(math.floor(r))) if s > 0 else 0 for r, s in zip(raw, shares)]
    while sum(counts) > n:
        i = max(range(len(counts)), key=lambda j: counts[j] - raw[j])
        counts[i] -= 1
    order = sorted(range(len(raw)), key=lambda j: raw[j] - counts[j], reverse=True)
    k = 0
    while sum(counts) < n:
        if shares[order[k % len(order)]] > 0:
            counts[order[k % len(order)]] += 1
        k += 1
    return counts


def shares_at(group_shares: dict, res: int) -> dict:
    """The shares table for resolution ``res``: the entry of the largest listed resolution <= res."""
    keys = sorted(int(k) for k in group_shares)
    if not keys or keys[0] > res:
        raise ValueError(f"group_shares has no entry for resolution {res} (keys {keys})")
    best = max(k for k in keys if k <= res)
    return group_shares[str(best)] if str(best) in group_shares else group_shares[best]


def channel_groups(dim: int, res: int, groups: tuple[str, ...], group_shares: dict) -> torch.Tensor:
    """The group index of each of ``dim`` channels at resolution ``res``: split by the shares of that
    resolution, interleaved (channel c goes to group ``order[c]``), so a group's channels are not all
    neighbours."""
    table = shares_at(group_shares, res)
    unknown = set(table) - set(groups)
    if unknown:
        raise ValueError(f"group_shares at {res} px names {sorted(unknown)}, not groups of {groups}")
    counts = _allocate(dim, [float(table.get(g, 0.0)) for g in groups])
    # interleave: deal the channels round-robin over the groups that still have some left
    left, ids = list(counts), []
    while len(ids) < dim:
        for i in range(len(groups)):
            if left[i]:
                ids.append(i)
                left[i] -= 1
    return torch.tensor(ids, dtype=torch.long)


def layer_groups(G: Generator, groups: tuple[str, ...], group_shares: dict) -> list[torch.Tensor]:
    """Per S layer (conv layers, then toRGB layers: :class:`StyleLayout`'s order), the group index of
    each channel (:func:`channel_groups`) by the layout's resolution of the layer: that of the feature
    map its styles modulate (an upsampling conv's is its input's), so every layer reading one feature
    map groups its channels alike, which :func:`conv_masks` relies on."""
    lay = G.layout
    return [channel_groups(dim, r, groups, group_shares)
            for dim, r in zip(lay.conv_dims + lay.rgb_dims, lay.conv_res + lay.rgb_res)]


def conv_masks(G: Generator, groups: tuple[str, ...], group_shares: dict,
               isolated: dict) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(conv weight, 0/1 mask) per modulated conv for ``isolated`` groups ({group: [groups it reads]}):
    no other group's feature channels are computed from an isolated group's channels, and an isolated
    group's channels only from its own, the global ones and the groups it is given to read (the eyes
    read the skin they are drawn on: a sum of toRGB outputs cannot otherwise cover the skin's colour).
    The other groups read each other and the global channels, as in a dense layer.

    Measured on generator v5 try 3 (``docs/experiments/toy-domains-v5.md``): with dense convolutions
    the eyes' input channels carry 20-26 % of every 16-64 px output channel's demodulation mass
    (StyleGAN2 Eq. 3), so a new eyes code rescales every feature map by 0.3-1 % per layer and changes
    the whole image (0.02 per pixel outside the eyes against 0.24 inside).  With these masks a region's
    styles reach only its own channels (and those of groups reading it), and the pixels through toRGB."""
    bad = [g for g in isolated if g not in groups or g == "global"] + \
        [r for reads in isolated.values() for r in reads if r not in groups]
    if bad:
        raise ValueError(f"isolated groups: {bad[0]!r} is not a region of {groups}")
    ids = layer_groups(G, groups, group_shares)
    n_conv = len(G.conv_layers)
    gi = groups.index("global")
    allowed = torch.zeros(len(groups), len(groups), dtype=torch.bool)     # [out group, in group]
    for b, gb in enumerate(groups):
        for a, ga in enumerate(groups):
            if gb in isolated:
                allowed[b, a] = a == b or a == gi or ga in isolated[gb]
            else:
                allowed[b, a] = ga not in isolated
    pairs = []
    for j, layer in enumerate(G.conv_layers):
        w = layer.conv.weight                                   # [1, O, I, k, k]
        in_ids = ids[j]
        # the output feeds the next conv (same tensor as the toRGB at that resolution reads)
        out_ids = ids[j + 1] if j + 1 < n_conv else ids[n_conv + len(G.rgb_layers) - 1]
        if len(out_ids) != w.shape[1] or len(in_ids) != w.shape[2]:
            raise ValueError(f"conv {j}: channel groups do not match its weight {tuple(w.shape)}")
        m = allowed[out_ids[:, None], in_ids[None, :]]
        pairs.append((w, m.float()[None, :, :, None, None].to(w.device)))
    return pairs


def affine_masks(G: Generator, groups: tuple[str, ...], group_shares: dict,
                 global_dim: int, coarse: tuple[str, ...] = (), fine_from: int = 0
                 ) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(affine weight, 0/1 mask) per S layer: a channel of group k reads ``w_global`` and ``w_k``;
    a global channel reads ``w_global`` only.  The channels of the ``coarse`` groups in layers that
    modulate maps smaller than ``fine_from`` px read ``w_global`` only as well: their own block cannot
    reach those layers (a 4 or 8 px map cannot draw a region of 2 % of the image; generator v5 try 5,
    ``experiments/group_leak.py``)."""
    blocks = block_masks(groups, G.style_dim, global_dim)
    gi = groups.index("global")
    cut = [groups.index(g) for g in coarse]
    layers = [layer.conv.modulation for layer in G.conv_layers] + [layer.conv.modulation for layer in G.rgb_layers]
    lay = G.layout
    pairs = []
    for mod, ids, res in zip(layers, layer_groups(G, groups, group_shares), lay.conv_res + lay.rgb_res):
        rows = blocks[ids].clone()
        if res < fine_from:
            for k in cut:
                rows[ids == k] = 0
        rows[:, blocks[gi].bool()] = 1
        pairs.append((mod.weight, rows.to(mod.weight.device)))
    return pairs


@torch.no_grad()
def apply_affine_masks(pairs) -> None:
    """Zero every affine weight outside its block (after each optimiser step, and once at the start)."""
    for weight, mask in pairs:
        weight.mul_(mask)


@torch.no_grad()
def ramp_conv_masks(pairs, step: int, ramp: int) -> None:
    """Fade the cross-group conv weights out over ``ramp`` steps, then hold them at zero.

    After optimiser step ``step`` (1-based) the masked-out entries are multiplied by
    (ramp - step) / (ramp - step + 1): with no gradient they would follow (1 - step / ramp), reaching
    zero at ``step == ramp``; from there the mask is applied hard.  Masking at once (try 4 of
    ``docs/experiments/toy-domains-v5.md``) dropped the reconstruction from 22 to 12 dB, because the
    other groups' channels were computed largely from the eyes' and mouth's."""
    if step >= ramp:
        apply_affine_masks(pairs)
        return
    keep = (ramp - step) / (ramp - step + 1)
    for weight, mask in pairs:
        weight.mul_(mask + (1 - mask) * keep)


@torch.no_grad()
def rescale_masked_init(pairs) -> None:
    """Keep a fresh affine's output scale after masking: row r keeps n_r of the ``style_dim`` inputs,
    so its random weights are multiplied by sqrt(style_dim / n_r) (EqualLinear's 1/sqrt(fan-in)
    assumes the full fan-in)."""
    for weight, mask in pairs:
        n = mask.sum(1, keepdim=True).clamp(min=1)
        weight.mul_(torch.sqrt(mask.shape[1] / n) * mask)


def is_block_sparse(pairs, tol: float = 0.0) -> bool:
    """True when every affine weight outside its block is (within ``tol``) zero."""
    with torch.no_grad():
        return all(float((w * (1 - m)).abs().max()) <= tol for w, m in pairs)


def swap_blocks(w_a: torch.Tensor, w_b: torch.Tensor, blocks: torch.Tensor, gi) -> torch.Tensor:
    """A's code with block ``gi[i]`` of w taken from B's, per pair: the region swap in w space (a
    real code, unlike a swap of S channel groups)."""
    take = blocks.to(w_a.device)[torch.as_tensor(gi, device=w_a.device)]
    return take * w_b + (1 - take) * w_a
