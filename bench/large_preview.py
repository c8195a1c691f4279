"""What the editor's user waits for with an FFHQ-sized model on the CPU, full size against drafts.

A 1024 px config-f generator and the FFHQ tree's 5 FusionNets (paper variant), random weights.
Times, after one leaf is re-rolled (the worker's path: fuse, then synthesise):

* the full frame, and the 256 px draft the preview shows first (``RenderService``);
* one node thumbnail at full size and at the 128 px the service renders them;
* one locality-heatmap sample (fixed base: two fusions and syntheses) at full size and at the
  256 px the app's overlay uses for models larger than that.

Ratios are against the full frame measured in the same run (these machines are noisy).

    python bench/large_preview.py [--size 1024] [--repeats 3] [--threads 2] [--bf16]
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
from sfeditor.editor.commands import SetSeed  # noqa: E402
from sfeditor.fusion.fusion_net import FusionNetConfig  # noqa: E402
from sfeditor.fusion.hierarchy import FusionHierarchy
from sfeditor.regions.tree import PAPER_TREES  # noqa: E402
from sfeditor.editor.locality import locality_heatmap  # noqa: E402
from sfeditor.editor.render_service import THUMBNAIL_RESOLUTION, CodeCache, RenderRequest, render_request  # noqa: E402
from sfeditor.editor.session import ModelBundle  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--draft", type=int, default=256)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with native bf16)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    torch.manual_seed(0)
    G = Generator(size=args.size).eval().requires_grad_(False)
    h = FusionHierarchy.with_random_nets(PAPER_TREES["faces"], FusionNetConfig.for_layout(G.layout, "paper"),
                                         layout=G.layout).eval().requires_grad_(False)
    b = ModelBundle("ffhq-shaped", G, hierarchy=h, truncation=0.7)
    comp = b.new_composition(0)
    cache = CodeCache()
    leaf = comp.leaves[0]
    seeds = iter(range(1, 10 ** 9))
    print(f"device=cpu torch={torch.__version__} threads={torch.get_num_threads()} size={args.size} "
          f"bf16={args.bf16} nodes={len(comp.node_names)}")

    def ac():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def frame(res):
        def run():
            SetSeed(leaf, next(seeds)).apply(comp)          # a new code on one leaf: only its path is recomputed
            with ac():
                render_request(G, h, RenderRequest(comp.snapshot(), 0), cache, max_resolution=res)
        return run

    def thumb(res):
        code = comp.code_for(leaf, G)

        def run():
            with torch.no_grad(), ac():
                G.synthesis(code, max_resolution=res)
        return run

    def heat(res):
        def run():
            with ac():
                for _ in locality_heatmap(G, h, comp, leaf, "fixed", samples=1, batch=1, max_resolution=res):
                    pass
        return run

    med = statistics.median
    full = timed(frame(None), args.repeats, dev, reduce=med)
    rows = [("frame after a re-roll", "full", full),
            ("frame after a re-roll", f"draft {args.draft}", timed(frame(args.draft), args.repeats, dev, reduce=med)),
            ("node thumbnail", "full", timed(thumb(None), args.repeats, dev, reduce=med)),
            ("node thumbnail", f"{THUMBNAIL_RESOLUTION}", timed(thumb(THUMBNAIL_RESOLUTION), args.repeats, dev,
                                                               reduce=med)),
            ("heatmap, 1 sample + base", "full", timed(heat(None), args.repeats, dev, reduce=med)),
            ("heatmap, 1 sample + base", f"{args.draft}", timed(heat(args.draft), args.repeats, dev, reduce=med))]
    print(f"{'what':<26} {'resolution':>10} {'ms':>9} {'ratio to full frame':>20}")
    for what, res, sec in rows:
        print(f"{what:<26} {res:>10} {1000 * sec:>9.0f} {sec / full:>20.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
