"""Synthesis speed: ms per image at 64, 256 and 1024 (random config-f weights), batch 1 and 8.

Prints a table; the ratio column compares each row with the 64x64 batch-1
row measured in the same run (these machines are noisy: compare ratios).
Usage: python bench/synthesis.py [--device cpu|cuda] [--repeats N] [--sizes 64,256,1024]
"""
from __future__ import annotations

import argparse

import torch

from sfeditor import Generator

from _timing import timed  # noqa: E402  (bench/ is on sys.path when run as a script)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="64,256,1024")
    p.add_argument("--batches", default="1,8")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'size':>5} {'batch':>5} {'path':>7} {'ms/image':>9} {'ratio':>7}")
    base = None
    for size in [int(s) for s in args.sizes.split(",")]:
        torch.manual_seed(0)
        G = Generator(size=size).to(device).eval()   # config-f widths, 8-layer mapping
        for batch in [int(b) for b in args.batches.split(",")]:
            s = G.random_styles(batch, seed=0)
            s = s.to(device)
            for fused in (False, True):
                with torch.no_grad():
                    sec = timed(lambda: G.synthesis(s, fused=fused), args.repeats, device)
                ms = 1000 * sec / batch
                base = base or ms
                print(f"{size:>5} {batch:>5} {'fused' if fused else 'unfused':>7} {ms:>9.1f} {ms / base:>7.2f}",
                      flush=True)
        del G


if __name__ == "__main__":
    main()
