"""How the number of Ward clusters K changes a toy domain's regions (a recipe choice for ``sfeditor-train regions``).

    python experiments/regions_k.py --domain toy-faces [--clusters 20 30 64 100 200] [--pixels 6000]
                              [--label-images 64] [--prune] [--threads 2]

One Ward tree is built (Sec. 4.2, the same options as ``sfeditor-train regions``) and cut at every K;
each cut is named by the region oracle's majority vote on the labelling images (seed 0, as
``--auto-label``) and scored on *other* generated images (seed 1000, as ``regions-eval``): mIoU and
per-region IoU of the nearest-centroid masks against the oracle.  Small regions (eyes, mouth) get
clusters of their own only once K is large: the toy generators' DeepPixels mostly encode position.
``--prune`` adds a row per K for the same cut after :mod:`trainer.centroid_pruning` (pool: 128
images, seed 2, as ``regions --prune``) and a column with each mask's time for one frame.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--generator", help="generator checkpoint (default: the shipped one)")
    p.add_argument("--clusters", type=int, nargs="+", default=[20, 30, 64, 100, 200])
    p.add_argument("--pixels", type=int, default=6000)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--min-resolution", type=int, default=32)
    p.add_argument("--normalization", default="layer", choices=("none", "channel", "layer"))
    p.add_argument("--pca", type=int, default=64)
    p.add_argument("--eval-images", type=int, default=128)
    p.add_argument("--label-images", type=int, default=64)
    p.add_argument("--prune", action="store_true", help="also score each cut after centroid pruning")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from _timing import timed
    from trainer.centroid_pruning import prune_regions
    from sfeditor.model.checkpoints import load_generator
    from sfeditor.regions.clustering import ClusteringOptions, cluster_generator
    from sfeditor.domains import get_domain
    from sfeditor.regions.masks import RegionModel
    from trainer.region_eval import auto_label, evaluate_regions
    from sfeditor.regions.tree import paper_tree
    from sfeditor.toy.oracle import load_oracle

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    G = load_generator(args.generator or args.domain, device="cpu").eval()
    oracle = load_oracle(args.domain)
    psi = get_domain(args.domain).truncation
    o = ClusteringOptions(samples=args.samples, pixels=args.pixels, truncation=psi, min_resolution=args.min_resolution,
                          normalization=args.normalization, pca=args.pca or None)
    t0 = time.perf_counter()
    result = cluster_generator(G, o)
    print(f"# {args.domain}: Ward tree of {o.pixels} DeepPixels from {o.samples} images "
          f"(psi {psi}, layers >= {o.min_resolution} px, {o.normalization}, PCA {o.pca}) in "
          f"{time.perf_counter() - t0:.1f} s; labels: oracle majority on {args.label_images} images (seed 0); "
          f"scores: {args.eval_images} other images (seed 1000)")
    names = list(oracle.region_names)
    print("# kept: centroids in the file (fewer after --prune); ms: hard masks of one frame, features given")
    print("| K | kept | mIoU | " + " | ".join(names) + " | pixel acc. | ms | s |")
    print("|---|---|---|" + "---|" * len(names) + "---|---|---|")
    frame = G.synthesis(G.random_styles(1, seed=5, truncation=psi), "const", return_features=True)[1]

    def row(model, k: int, t: float) -> None:
        s = evaluate_regions(model, oracle, n=args.eval_images, seed=1000, truncation=psi)
        ms = timed(lambda: model.hard_labels(features=frame), 5, torch.device("cpu")) * 1000
        print(f"| {k} | {model.regions.num_clusters} | {s['miou']:.3f} | "
              + " | ".join(f"{s['iou'][n]:.2f}" for n in names)
              + f" | {s['pixel_accuracy']:.3f} | {ms:.1f} | {time.perf_counter() - t:.0f} |", flush=True)

    for k in args.clusters:
        t = time.perf_counter()
        regions = result.to_regions(args.domain, k)
        labels, _ = auto_label(RegionModel(G, regions), oracle, n=args.label_images, seed=0, truncation=psi)
        model = RegionModel(G, regions.relabelled(labels, paper_tree(args.domain)))
        row(model, k, t)
        if args.prune:
            t = time.perf_counter()
            pruned, _ = prune_regions(model, images=128, seed=2, truncation=psi)
            row(RegionModel(G, pruned), k, t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
