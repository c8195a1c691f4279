"""What the editor's user waits for: one preview frame after each kind of edit, thumbnails, a heatmap.

Times :func:`sfeditor.editor.render_service.render_request` (the worker's function) on a
shipped toy domain with its hierarchy (random FusionNets of the right shape when
none is shipped), after: a full change (every node new: "randomise"), one
leaf re-rolled (only its path to the root is recomputed), and nothing changed
(cache hit: synthesis only).  Ratios are against one bare ``G.synthesis`` call
measured in the same run.

    python bench/editor.py [--domain toy-faces] [--device cpu] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from _timing import timed  # noqa: E402
from sfeditor.editor.commands import RandomizeUnlocked, Reroll  # noqa: E402
from sfeditor.fusion.fusion_net import FusionNetConfig  # noqa: E402
from sfeditor.fusion.hierarchy import FusionHierarchy  # noqa: E402
from sfeditor.editor.locality import locality_heatmap  # noqa: E402
from sfeditor.editor.render_service import CodeCache, RenderRequest, render_request  # noqa: E402
from sfeditor.editor.session import load_bundle  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--heatmap-samples", type=int, default=32)
    args = p.parse_args(argv)
    b = load_bundle(args.domain, device=args.device)
    G, dev = b.G, b.device
    h = b.hierarchy
    note = "shipped hierarchy"
    if h is None:
        cfg = FusionNetConfig.for_layout(G.layout)
        h = FusionHierarchy.with_random_nets(b.tree.to_dict(), cfg, layout=G.layout).to(dev).eval()
        note = "random FusionNets (none shipped)"
    comp = b.new_composition(0)
    cache = CodeCache()
    rng = random.Random(0)
    stamp = iter(range(1, 10 ** 9))

    def frame():
        return render_request(G, h, RenderRequest(comp.snapshot(), next(stamp)), cache)

    s0 = G.styles(G.sample_w(1, seed=0))

    @torch.no_grad()
    def bare():
        G.synthesis(s0)

    def full():
        RandomizeUnlocked(rng).apply(comp)
        frame()

    leaf = comp.leaves[0]

    def one_leaf():
        Reroll(leaf, rng).apply(comp)
        frame()

    def thumbs():
        with torch.no_grad():
            for n in comp.node_names:
                G.synthesis(cache.get(comp, n, G))

    t_bare = timed(bare, args.repeats, dev)
    rows = [("bare G.synthesis (1 image)", t_bare),
            ("frame after randomise (every node new)", timed(full, args.repeats, dev)),
            (f"frame after re-rolling one leaf ({leaf})", timed(one_leaf, args.repeats, dev)),
            ("frame, nothing changed (cache)", timed(frame, args.repeats, dev)),
            (f"thumbnails of all {len(comp.node_names)} nodes", timed(thumbs, 1, dev))]
    t = time.perf_counter()
    for _ in locality_heatmap(G, h, comp, leaf, "fixed", samples=args.heatmap_samples, batch=8):
        pass
    rows.append((f"locality heatmap, {args.heatmap_samples} samples (fixed base)", time.perf_counter() - t))
    model = b.region_model
    if model is not None:
        from sfeditor.regions.clustering import squared_distances
        from sfeditor.regions.masks import deep_pixels_from_features

        s1 = cache.get(comp, b.tree.name, G)

        @torch.no_grad()
        def masks_all_channels():       # every DeepPixel channel, as before the active-channel skip
            _, f = G.synthesis(s1, "const", return_features=True)
            squared_distances(deep_pixels_from_features(f, model.size), model.centroids, model.channel_scale).argmin(1)

        @torch.no_grad()
        def masks_by_distances():       # nearest centroid from the full distance tensor, as before
            model.distances(s1).argmin(1)

        rows += [(f"region masks of the frame ({model.regions.num_clusters} clusters)",
                  timed(lambda: model.hard_labels(s1), args.repeats, dev)),
                 ("  same, argmin of the [K, h, w] distances", timed(masks_by_distances, args.repeats, dev)),
                 (f"  same, all {sum(G.layout.conv_dims)} DeepPixel channels in the distances", timed(masks_all_channels, args.repeats, dev))]
    print(f"# {args.domain} {G.size}px on {dev} ({torch.get_num_threads()} threads), {note}")
    print(f"{'what':52s} {'ms':>9s} {'x bare':>8s}")
    for name, sec in rows:
        print(f"{name:52s} {sec * 1000:9.1f} {sec / t_bare:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
