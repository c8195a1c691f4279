"""Where a small region's block of w leaks out of the region, layer by layer (generator v5, issue 38).

For held-out renders A (codes from the run's parameter code) and a block swap of one group (default
the eyes) from renders B, per synthesis layer:

- conv j: the group's own output channels: mean |x| inside the region (the oracle's labels of A's
  synthesis, resized to the map) and outside, and the same for |x_swap - x|; the layer's noise strength;
- toRGB k: the layer's own RGB contribution (before the skip sum): |change| inside and outside, and the
  share of that layer's change that falls inside.

A share >= 0.85 for a region of 2 % of the image needs the change outside to stay below ~1/250 of the
change inside; this shows which layers and which paths (the group's activations outside the region,
modulated by its code) carry it.

    python experiments/group_leak.py runs/gen-toy-faces-v5/checkpoint.pt --domain toy-faces [--group eyes]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from experiments.block_swaps import load_param_run, run_arguments  # noqa: E402
from sfeditor.toy import region_names, render, swap_groups  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from trainer.generator_blocks import layer_groups, swap_blocks  # noqa: E402
from trainer.generator_data import HELDOUT_SEED_OFFSET  # noqa: E402
from trainer.generator_losses import synth_w  # noqa: E402


def _run(G, w):
    convs, rgbs = [], []
    hooks = [layer.register_forward_hook(lambda m, i, o: convs.append(o)) for layer in G.conv_layers]
    hooks += [layer.conv.register_forward_hook(lambda m, i, o: rgbs.append(o)) for layer in G.rgb_layers]
    try:
        img = synth_w(G, w)
    finally:
        for h in hooks:
            h.remove()
    return img, convs, rgbs


def _in_out(t: torch.Tensor, region: torch.Tensor) -> tuple[float, float]:
    """Mean of ``t`` [B, C, h, w] (already |.|) inside / outside ``region`` [B, H, W] resized to h x w."""
    m = F.interpolate(region[:, None].float(), size=t.shape[-2:], mode="area")   # fraction of region pixels
    inside = (t * m).sum() / (m.sum() * t.shape[1]).clamp_min(1e-9)
    outside = (t * (1 - m)).sum() / ((1 - m).sum() * t.shape[1]).clamp_min(1e-9)
    return float(inside), float(outside)


@torch.no_grad()
def main(argv=None) -> int:
    args = run_arguments(__doc__, pairs=32).parse_args(argv)
    G, _, P, blocks, phase, step, opts = load_param_run(args)
    groups = tuple(swap_groups(args.domain))
    gi = groups.index(args.group)
    ids = layer_groups(G, groups, opts["group_shares"])
    n_conv = len(G.conv_layers)
    n = args.pairs
    _, _, pa = render(args.domain, HELDOUT_SEED_OFFSET + 500_000 + np.arange(n), G.size, return_params=True)
    _, _, pb = render(args.domain, HELDOUT_SEED_OFFSET + 600_000 + np.arange(n), G.size, return_params=True)
    wa, wb = P(pa), P(pb)
    img, convs, rgbs = _run(G, wa)
    img2, convs2, rgbs2 = _run(G, swap_blocks(wa, wb, blocks, [gi] * n))
    oracle = load_oracle(args.domain)
    k = region_names(args.domain).index(args.group)
    region = (oracle(img).argmax(1) == k) | (oracle(img2).argmax(1) == k)
    print(f"# {args.checkpoint} ({phase} step {step}); block {args.group!r} swapped; {n} held-out pairs; "
          f"region = the union of both images' {args.group} (oracle), {float(region.float().mean()) * 100:.1f} % of pixels")
    print(f"| layer | res | {args.group} channels | noise strength | |x| in / out | |Δx| in / out | out / in |")
    print("|---|---|---|---|---|---|---|")
    for j in range(n_conv):
        out_ids = ids[j + 1] if j + 1 < n_conv else ids[n_conv + len(G.rgb_layers) - 1]
        sel = out_ids == gi
        x, x2 = convs[j], convs2[j]
        noise = float(G.conv_layers[j].noise.weight.abs())
        if not bool(sel.any()):
            d_in, d_out = _in_out((x2 - x).abs(), region)
            print(f"| conv {j} | {x.shape[-1]} | 0 | {noise:.3f} | – | (all channels) {d_in:.4f} / {d_out:.4f} | "
                  f"{d_out / max(d_in, 1e-12):.3f} |")
            continue
        a_in, a_out = _in_out(x[:, sel].abs(), region)
        d_in, d_out = _in_out((x2 - x)[:, sel].abs(), region)
        print(f"| conv {j} | {x.shape[-1]} | {int(sel.sum())} | {noise:.3f} | {a_in:.3f} / {a_out:.3f} | "
              f"{d_in:.4f} / {d_out:.4f} | {d_out / max(d_in, 1e-12):.3f} |")
    print()
    print("| toRGB | res | |Δrgb| in / out | out / in | share inside |")
    print("|---|---|---|---|---|")
    area = float(region.float().mean())
    for r, (a, b) in enumerate(zip(rgbs, rgbs2)):
        d = (b - a).abs()
        d_in, d_out = _in_out(d, region)
        share = d_in * area / max(d_in * area + d_out * (1 - area), 1e-12)
        print(f"| {r} | {a.shape[-1]} | {d_in:.4f} / {d_out:.4f} | {d_out / max(d_in, 1e-12):.3f} | {share:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
