"""How region-local a toy generator's style channels are, measured against the renderer's truth.

For held-out render pairs (A, B) and each swap group (the pose, then every region), A's style code
gets that group's channels from B's (``trainer.generator.swap_channel_groups``; codes from the
run's encoder) and the synthesis is compared with ``sfeditor.toy.render_swap`` (A with B's region).
A generator trained with ``--swap-weight`` should score high; one without it shows how much a
channel group leaks.  Prints PSNR per group and run; writes a grid (A, B, truth, output per group)
for the first run.

    python experiments/region_swap.py RUN [RUN ...] --domain toy-faces [--pairs 64] [--grid out.png]

RUN: a folder with generator.pt and encoder.pt (a finished run, or copies of shipped files), or a
run's checkpoint.pt.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfeditor.images.imageio import from_uint8, make_grid, save_png, to_uint8  # noqa: E402
from sfeditor.model.style_code import StyleCode  # noqa: E402
from sfeditor.toy import render, render_swap, swap_groups  # noqa: E402
from experiments.ae_regions import load_run  # noqa: E402
from trainer.generator import HELDOUT_SEED_OFFSET, swap_channel_groups
from sfeditor.images.metrics import psnr


@torch.no_grad()
def swap_scores(G, E, domain: str, pairs: int, keep: int = 0):
    names = swap_groups(domain)
    ids = swap_channel_groups(G.layout, len(names))
    a = HELDOUT_SEED_OFFSET + 500_000 + np.arange(pairs)
    b = HELDOUT_SEED_OFFSET + 600_000 + np.arange(pairs)
    sa = G.styles(E(from_uint8(render(domain, a)[0]))).flat()
    sb = G.styles(E(from_uint8(render(domain, b)[0]))).flat()
    scores, rows = {}, []
    for g, name in enumerate(names):
        take = (ids == g).float()[None]
        out = G.synthesis(StyleCode.from_flat(G, take * sb + (1 - take) * sa), noise_mode="const")
        truth = from_uint8(render_swap(domain, a, b, [name] * pairs)[0])
        scores[name] = float(psnr(out, truth).mean())
        if keep:
            rows += [to_uint8(truth[:keep]), to_uint8(out[:keep])]
    return scores, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--grid", help="PNG: rows A, B, then truth/output per group (first run)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = swap_groups(args.domain)
    print(f"# {args.domain}: PSNR (dB) of A's code with one channel group from B vs the renderer's "
          f"swap, {args.pairs} held-out pairs")
    print(f"{'run':32s} " + " ".join(f"{n[:10]:>10s}" for n in names) + f" {'mean':>6s}")
    for i, run in enumerate(args.runs):
        G, E, _, _ = load_run(run)
        keep = 8 if (args.grid and i == 0) else 0
        scores, rows = swap_scores(G, E, args.domain, args.pairs, keep)
        print(f"{run[-32:]:32s} " + " ".join(f"{scores[n]:10.2f}" for n in names)
              + f" {np.mean(list(scores.values())):6.2f}")
        if keep:
            a = HELDOUT_SEED_OFFSET + 500_000 + np.arange(keep)
            b = HELDOUT_SEED_OFFSET + 600_000 + np.arange(keep)
            head = [render(args.domain, a)[0], render(args.domain, b)[0]]
            save_png(args.grid, make_grid(np.concatenate(head + rows), cols=keep, scale=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
