"""Through which inputs a small region's block of w reaches its channels outside the region (generator v5).

A modulated convolution's output channel o is sum_i W_oi s_i x_i / sigma_o(s) (StyleGAN2 Eq. 1-3). When
the eyes block of w is swapped, an eyes output channel changes outside the eyes through its *own*
inputs (the eyes channels of the layer before, whose styles s_i the block sets, times their activation
x_i there) or through the demodulation sigma_o alone (the global and other groups' inputs, whose styles
stay). Per conv layer writing eyes channels, this splits the change of their pre-activation outside
the region (the oracle's labels of A's synthesis, one cell dilated) by input group, next to the eyes
input channels' |x| outside / inside.

    python experiments/leak_paths.py runs/gen-toy-faces-v5/checkpoint.pt --domain toy-faces [--group eyes]
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
from trainer.generator_losses import region_cells, synth_w  # noqa: E402


def _inputs(G, w):
    """Every conv layer's (input x, styles s) for codes ``w``."""
    cap = []
    hooks = [layer.conv.register_forward_pre_hook(lambda m, i: cap.append((i[0], i[1]))) for layer in G.conv_layers]
    try:
        img = synth_w(G, w)
    finally:
        for h in hooks:
            h.remove()
    return img, cap


def _part(conv, x, s, keep, out_sel):
    """The pre-activation of the output channels ``out_sel`` from the inputs ``keep`` only, demodulated
    with every input's styles (as the layer does)."""
    weight = conv.scale * conv.weight[0]
    xs = x * (s * keep.float())[:, :, None, None]
    if conv.upsample:
        out = conv.blur(F.conv_transpose2d(xs, weight.transpose(0, 1), padding=0, stride=2))
    else:
        out = F.conv2d(xs, weight, padding=conv.padding)
    d = torch.rsqrt(s.pow(2) @ weight.pow(2).sum([2, 3]).t() + 1e-8)
    return (out * d[:, :, None, None])[:, out_sel]


@torch.no_grad()
def main(argv=None) -> int:
    args = run_arguments(__doc__, pairs=16).parse_args(argv)
    G, _, P, blocks, phase, step, opts = load_param_run(args)
    groups = tuple(swap_groups(args.domain))
    gi, k = groups.index(args.group), region_names(args.domain).index(args.group)
    ids = layer_groups(G, groups, opts["group_shares"])
    n = args.pairs
    _, _, pa = render(args.domain, HELDOUT_SEED_OFFSET + 500_000 + np.arange(n), G.size, return_params=True)
    _, _, pb = render(args.domain, HELDOUT_SEED_OFFSET + 600_000 + np.arange(n), G.size, return_params=True)
    wa, wb = P(pa), P(pb)
    img, base = _inputs(G, wa)
    _, swapped = _inputs(G, swap_blocks(wa, wb, blocks, [gi] * n))
    region = load_oracle(args.domain)(img).argmax(1) == k
    n_conv, g_global = len(G.conv_layers), groups.index("global")
    print(f"# {args.checkpoint} ({phase} step {step}); {n} pairs; {args.group} block swapped")
    print(f"| conv | map | {args.group} inputs' |x| outside / inside | change outside from own inputs | "
          "from global inputs (demodulation) | from other groups (demodulation) | change inside, all |")
    print("|---|---|---|---|---|---|---|")
    for j, layer in enumerate(G.conv_layers):
        out_ids = ids[j + 1] if j + 1 < n_conv else ids[n_conv + len(G.rgb_layers) - 1]
        out_sel, in_ids = out_ids == gi, ids[j]
        if not bool(out_sel.any()):
            continue
        keeps = {"own": in_ids == gi, "global": in_ids == g_global, "other": (in_ids != gi) & (in_ids != g_global)}
        change = {name: (_part(layer.conv, *swapped[j], keep, out_sel) - _part(layer.conv, *base[j], keep, out_sel)).abs()
                  for name, keep in keeps.items()}
        size = change["own"].shape[-1]
        out_m = region_cells(region, size)[1]
        in_m = F.interpolate(region[:, None].float(), size=size, mode="area")

        def mean(t, m):
            return float((t * m).sum() / (m.sum() * t.shape[1]).clamp_min(1e-9))

        x_in = base[j][0][:, keeps["own"]].abs()
        if x_in.shape[1]:
            xo, xi = mean(x_in, region_cells(region, x_in.shape[-1])[1]), \
                mean(x_in, F.interpolate(region[:, None].float(), size=x_in.shape[-1], mode="area"))
            act = f"{xo:.3f} / {xi:.3f}"
        else:
            act = "–"
        total = change["own"] + change["global"] + change["other"]
        print(f"| {j} | {size} | {act} | {mean(change['own'], out_m):.4f} | {mean(change['global'], out_m):.4f} | "
              f"{mean(change['other'], out_m):.4f} | {mean(total, in_m):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
