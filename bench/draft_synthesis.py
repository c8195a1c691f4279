"""Draft synthesis: what ``G.synthesis(s, max_resolution=r)`` costs against the full image.

A 1024 px config-f generator (random weights) stopped after the toRGB layer of each
resolution; batch 1, float32.  The ratio column is each row's time over the full
synthesis measured in the same run (these machines are noisy: compare ratios).  The
editor's preview shows a 256 px draft of a large model on the CPU before the full
frame, and renders node thumbnails at 128 px (``sfeditor.editor.render_service``).

    python bench/draft_synthesis.py [--size 1024] [--device cpu] [--repeats 3] [--bf16]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from _timing import timed  # noqa: E402
from sfeditor import Generator  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU with native bf16 only)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    G = Generator(size=args.size).to(dev).eval()
    s = G.random_styles(1, seed=0).to(dev)
    print(f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()} size={args.size} "
          f"bf16={args.bf16}")

    def run(r):
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            return G.synthesis(s, max_resolution=r)

    full = timed(lambda: run(None), args.repeats, dev, reduce=statistics.median)
    print(f"{'resolution':>10} {'ms':>9} {'ratio to full':>14}")
    r = 4
    while r <= args.size:
        sec = full if r == args.size else timed(lambda: run(r), args.repeats, dev, reduce=statistics.median)
        print(f"{r:>10} {1000 * sec:>9.1f} {sec / full:>14.3f}", flush=True)
        r *= 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
