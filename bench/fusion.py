"""FusionNet hierarchy speed: the FFHQ-shaped tree (5 FusionNets, 1024 S layout, |S| = 9088).

Random weights, both variants (paper widths [1214, 1536, 1536, 1536, 512, 512];
official [1214|1726, 2560, 2560, 2560, 512, 512]).  Times a full hierarchy call
(every net runs; cache off) at each batch size, and an editor-style call with
the cache on where one leaf code ("eyes") changed (2 nets rerun: face, all).
The ratio column compares each row with the paper variant at batch 1 measured
in the same run (these machines are noisy: compare ratios).

Usage: python bench/fusion.py [--device cpu|cuda] [--threads 1] [--repeats 3] [--batches 1,16]
"""
from __future__ import annotations

import argparse

import torch

from sfeditor import StyleCode, StyleLayout
from sfeditor.fusion.fusion_net import FusionNetConfig
from sfeditor.model.generator import default_channels
from sfeditor.fusion.hierarchy import FusionHierarchy
from sfeditor.regions.tree import PAPER_TREES

from _timing import timed  # noqa: E402  (bench/ is on sys.path when run as a script)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the CI boxes are shared)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--variants", default="paper,official")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    layout = StyleLayout.for_channels(default_channels(1024))
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} |S|={layout.size}")
    print(f"{'variant':>9} {'batch':>5} {'call':>10} {'params':>7} {'ms/call':>9} {'ms/image':>9} {'ratio':>7}")
    base = None
    for variant in args.variants.split(","):
        torch.manual_seed(0)
        h = FusionHierarchy.with_random_nets(PAPER_TREES["faces"], FusionNetConfig.for_layout(layout, variant),
                                             layout=layout).to(device).eval().requires_grad_(False)
        n_params = sum(p.numel() for p in h.parameters())
        for batch in [int(b) for b in args.batches.split(",")]:
            g = torch.Generator().manual_seed(batch)
            codes = {n: StyleCode.from_flat(layout, 1 + 0.5 * torch.randn(batch, layout.size, generator=g)).to(device)
                     for n in h.node_map}
            with torch.no_grad():
                sec = timed(lambda: h(codes, use_cache=False), args.repeats, device)
                ms = 1000 * sec
                base = base or ms
                print(f"{variant:>9} {batch:>5} {'full':>10} {n_params / 1e6:>6.0f}M {ms:>9.1f} {ms / batch:>9.1f} "
                      f"{ms / base:>7.2f}", flush=True)
                if batch == 1:
                    eyes = [codes["eyes"], codes["eyes"].clone()]
                    k = [0]

                    def edit():
                        k[0] ^= 1
                        codes["eyes"] = eyes[k[0]]
                        h(codes)
                        assert h.last_recomputed == ["face", "all"]
                    h(codes)
                    sec = timed(edit, args.repeats, device)
                    ms = 1000 * sec
                    print(f"{variant:>9} {batch:>5} {'edit-leaf':>10} {n_params / 1e6:>6.0f}M {ms:>9.1f} "
                          f"{ms / batch:>9.1f} {ms / base:>7.2f}", flush=True)
        del h


if __name__ == "__main__":
    main()
