"""``sfeditor-train regions`` / ``regions-eval``: a domain's semantic regions from its generator.

``regions`` (paper Sec. 4.2): sample DeepPixels, build the full Ward tree
(saved as ``ward-tree.npz``: a later run with another ``clusters`` in its recipe recuts it
without re-clustering), cut it into K clusters and write

* ``regions.json``: the regions file (:mod:`sfeditor.regions.regions_file`).  Unlabelled,
  its leaves are ``cluster_<id>`` under the Ward hierarchy: rename them to
  region names (several clusters may share one) and give the region tree;
  or, for a toy domain, ``auto_label = true`` names every cluster by the majority
  label of the domain's region *oracle* (a segmentation net trained on
  renderer labels) and uses the paper tree (Appendix A.1);
* ``clusters/cluster_<id>.png``: one contact sheet per cluster (sample
  images, the cluster's pixels highlighted) and ``clusters.png`` (all
  clusters colour-coded), so a person can label a new domain in minutes.

``regions-eval``: mIoU of the hard masks vs the oracle on fresh generated
images, a mask-overlay grid and the channel-region matrix M (Eq. 1) as a
regions x layers heatmap; the numbers go into the regions file's ``card``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfeditor.model.device import pick_device
from sfeditor.validate import device_arg
from sfeditor.regions.cluster_sheets import (banner as _banner, colours as _colours, contact_sheet, label_overview,
                                     legend as _legend, outline as _outline, upscale as _upscale)


# ---------------------------------------------------------------- helpers
def _setup(args: argparse.Namespace):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def _truncation(args: argparse.Namespace, domain: str) -> float:
    """--truncation, else the domain's ψ (paper A.6: faces 0.7, cars and churches 0.5; 1.0 otherwise)."""
    if args.truncation is not None:
        return args.truncation
    from sfeditor.model.truncation import truncation_for

    psi, why = truncation_for(domain, getattr(args, "generator", None) or None)
    print(f"truncation psi = {psi:g} ({why})", file=sys.stderr)
    return psi


def _progress_fn(label: str):
    """An adapter from the core's progress(done, total, stage) to a stderr bar per stage."""
    from .common import Progress

    bars: dict[str, Progress] = {}

    def report(done: int, total: int, stage: str) -> None:
        if stage not in bars:
            bars[stage] = Progress(total, desc=f"{label} {stage}")
        bars[stage].update(done)

    return report


def _load_oracle(domain: str, device):
    from sfeditor.toy.oracle import load_oracle

    try:
        return load_oracle(domain, device=device)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"the {domain} oracle is needed here but cannot be loaded: {e}") from None


def overlay_grid(images: np.ndarray, pred: np.ndarray, target: np.ndarray | None, names: list[str],
                 scale: int = 2) -> np.ndarray:
    """Per image: the image | hard masks blended over it | the oracle's labels (if given)."""
    from sfeditor.images.imageio import make_grid

    col = _colours(len(names)).astype(np.float32)
    blend = (0.45 * images + 0.55 * col[pred]).astype(np.uint8)
    edge = _outline(np.stack([pred == k for k in range(len(names))]).transpose(1, 0, 2, 3)).any(1)
    blend[edge] = 255
    parts = [images, blend] + ([] if target is None else [col[target].astype(np.uint8)])
    gap = np.full(images.shape[:2] + (1, 3), 24, dtype=np.uint8)
    tiles = np.concatenate([x for p in parts for x in (p, gap)][:-1], axis=2)
    grid = make_grid(_upscale(tiles, scale), cols=4, pad=6)
    head = "image | nearest-centroid regions" + (" | oracle" if target is not None else "")
    return np.concatenate([_banner(grid.shape[1], head), grid,
                           _legend(grid.shape[1], names, col.astype(np.uint8))])


def heatmap(values: np.ndarray, rows: list[str], cols: list[str], title: str, cell: int = 38) -> np.ndarray:
    """A labelled [R, L] heatmap in [0, 1] (viridis) with the values printed."""
    import cv2

    r, c = values.shape
    left, top = 9 * max(len(n) for n in rows) + 12, 50
    img = np.full((top + r * cell + 6, left + c * cell + 6, 3), 24, dtype=np.uint8)
    v8 = (np.clip(values, 0, 1) * 255).astype(np.uint8)
    colour = cv2.applyColorMap(v8, cv2.COLORMAP_VIRIDIS)[..., ::-1]                   # [R, L, 3] RGB
    for i in range(r):
        for j in range(c):
            y, x = top + i * cell, left + j * cell
            img[y:y + cell - 1, x:x + cell - 1] = colour[i, j]
            ink = (0, 0, 0) if v8[i, j] > 150 else (230, 230, 230)
            cv2.putText(img, f"{values[i, j]:.2f}"[1:] if values[i, j] < 1 else "1.0", (x + 5, y + cell // 2 + 5),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, ink, 1, cv2.LINE_AA)
        cv2.putText(img, rows[i], (4, top + i * cell + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (235, 235, 235), 1, cv2.LINE_AA)
    for j, name in enumerate(cols):
        cv2.putText(img, name, (left + j * cell + 3, top - 6 - 12 * (j % 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (235, 235, 235), 1, cv2.LINE_AA)
    cv2.putText(img, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    return img


def layer_names(layout) -> list[str]:
    """Short S-layer names by output resolution: c8u = the upsampling conv to 8x8, c8 = the 8x8 conv, t8 = tRGB."""
    names = []
    for i, r in enumerate(layout.conv_res):   # conv_res is the *input* resolution; odd layers upsample
        names.append(f"c{2 * r}u" if i % 2 == 1 else f"c{r}")
    return names + [f"t{r}" for r in layout.rgb_res]


# ---------------------------------------------------------------- commands
def _without_grad(command):
    """Run a command with autograd off and the caller's setting restored (commands also run in-process)."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        import torch

        with torch.no_grad():
            return command(args)

    return run


@_without_grad
def cmd_regions(args: argparse.Namespace) -> int:
    from sfeditor.model.checkpoints import load_generator
    from sfeditor.regions.clustering import Cancelled, ClusteringOptions, ClusteringResult, cluster_generator
    from sfeditor.regions.cluster_sheets import cluster_samples, resize_labels, sheet_title
    from sfeditor.images.imageio import save_png
    from sfeditor.regions.masks import RegionModel
    from sfeditor.model.identity import generator_fingerprint
    from sfeditor.regions.tree import paper_tree

    from .common import CancelToken

    device = _setup(args)
    G = load_generator(args.generator or args.domain, device=device)
    out = Path(args.out or f"runs/regions-{args.domain}")
    out.mkdir(parents=True, exist_ok=True)
    if getattr(args, "recipe_used", None) is not None:
        from sfeditor.atomic import atomic_write_text

        from .recipe import recipe_dict

        atomic_write_text(out / "options.json", json.dumps({"recipe": recipe_dict(args.recipe_used),
                                                            "generator": args.generator or args.domain},
                                                           indent=2, sort_keys=True) + "\n")
    options = ClusteringOptions(samples=args.samples, pixels=args.pixels, size=args.size,
                                truncation=_truncation(args, args.domain), seed=args.seed,
                                normalization=args.normalization, min_resolution=args.min_resolution,
                                pca=args.pca or None, batch=args.batch)
    tree_path = out / "ward-tree.npz"
    result = None
    if tree_path.exists() and not args.recluster:
        saved = ClusteringResult.load(tree_path)
        if saved.options == options and saved.generator.get("fingerprint") == generator_fingerprint(G) \
                and saved.tree.num_units >= args.clusters:
            result = saved
            print(f"reusing the Ward tree in {tree_path} (pass --recluster to rebuild)", file=sys.stderr)
    if result is None:
        cancel = CancelToken()
        cancel.install_signal_handlers()
        try:
            result = cluster_generator(G, options, progress=_progress_fn("regions"), cancel=cancel)
        except Cancelled:
            print("\ncancelled", file=sys.stderr)
            return 130
        result.save(tree_path, max_k=max(64, args.clusters))
        print(f"clustered {options.pixels} DeepPixels of {options.samples} images: "
              f"{result.seconds['deep_pixels']:.1f} s DeepPixels + {result.seconds['ward']:.1f} s Ward",
              file=sys.stderr)
    K = args.clusters
    regions = result.to_regions(args.domain, K)
    model = RegionModel(G, regions)
    label_report = None
    if args.auto_label:
        from trainer.region_eval import auto_label

        oracle = _load_oracle(args.domain, device)
        labels, label_report = auto_label(model, oracle, n=args.label_images, seed=args.seed,
                                          truncation=options.truncation, progress=_progress_fn("regions"))
        tree = paper_tree(args.tree or args.domain)
        regions = regions.relabelled(labels, tree)
        regions.clustering["auto_label"] = {"method": "majority vote of the region oracle", **label_report}
    elif args.tree:
        print("tree is used with auto_label; an unlabelled file keeps the Ward hierarchy", file=sys.stderr)
    kept = list(range(K))
    if args.prune:
        from trainer.centroid_pruning import prune_regions

        cancel = CancelToken()
        cancel.install_signal_handlers()
        try:
            regions, prune_report = prune_regions(RegionModel(G, regions), images=args.prune_images,
                                                  seed=args.seed + 2, truncation=options.truncation,
                                                  progress=_progress_fn("regions"), cancel=cancel)
        except Cancelled:
            print("\ncancelled", file=sys.stderr)
            return 130
        kept = prune_report["kept"]
        print(f"pruned {K} -> {len(kept)} centroids (every region decision on {prune_report['images']} "
              f"pool images kept)", file=sys.stderr)
        K = len(kept)
    regions.card["created"] = datetime.datetime.now().isoformat(timespec="seconds")
    regions.save(out / "regions.json")

    # contact sheets: the first images of the clustering sample, cluster pixels highlighted
    imgs, lab = cluster_samples(G, regions, n=args.sheet_images, seed=args.seed, truncation=options.truncation,
                                batch=args.batch)
    lab = resize_labels(lab, imgs.shape[1:3])
    sheets = out / "clusters"
    sheets.mkdir(exist_ok=True)
    for stale in sheets.glob("cluster_*.png"):          # from an earlier run with another K
        stale.unlink()
    sizes = result.tree.cluster_sizes(args.clusters) / result.tree.cluster_sizes(args.clusters).sum()
    digits = max(2, len(str(K - 1)))
    for k in range(K):
        name = regions.clusters[k]
        title = sheet_title(k, name, sizes[kept[k]])   # share of the clustering sample's pixels
        if label_report is not None:
            title += f" (purity {label_report['purity'][kept[k]]:.2f})"
        save_png(sheets / f"cluster_{k:0{digits}d}.png", contact_sheet(imgs, lab, k, title))
    save_png(out / "clusters.png", label_overview(imgs[:16], lab[:16], [regions.clusters[k] for k in range(K)]))
    if args.install:
        from sfeditor.domains import get_domain, resources_dir

        dest = resources_dir() / get_domain(args.domain).regions_file
        dest.parent.mkdir(parents=True, exist_ok=True)
        regions.save(dest)
        print(f"installed {dest}", file=sys.stderr)
    summary = {"regions_file": str(out / "regions.json"), "clusters": K, "leaves": regions.leaves,
               "seconds": result.seconds, "temperature": regions.temperature}
    if label_report is not None:
        per_region = {leaf: len(regions.clusters_of(leaf)) for leaf in regions.leaves}
        summary["clusters_per_region"] = per_region
        if K <= 64:                                    # (the file holds them all)
            summary["labels"] = {str(k): v for k, v in regions.clusters.items()}
    print(json.dumps(summary, indent=1))
    return 0


@_without_grad
def cmd_regions_eval(args: argparse.Namespace) -> int:
    import torch

    from sfeditor.model.checkpoints import load_generator
    from sfeditor.regions.correlation import code_correlation, layer_means, mean_correlation
    from sfeditor.images.imageio import save_png, to_uint8
    from sfeditor.regions.masks import RegionModel
    from trainer.region_eval import evaluate_regions
    from sfeditor.regions.regions_file import load_regions

    device = _setup(args)
    regions = load_regions(args.regions)
    domain = args.domain or regions.domain
    G = load_generator(args.generator or domain, device=device)
    model = RegionModel(G, regions)
    trunc = _truncation(args, domain)
    oracle = _load_oracle(domain, device)
    t0 = time.perf_counter()
    scores = evaluate_regions(model, oracle, n=args.samples, seed=args.seed, truncation=trunc,
                              progress=_progress_fn("regions-eval"))
    seconds = time.perf_counter() - t0

    n_show = min(16, args.samples)
    s = G.random_styles(n_show, seed=args.seed, truncation=trunc)
    images = G.synthesis(s, "const")
    names = list(oracle.region_names)
    to_oracle = torch.tensor([names.index(leaf) for leaf in model.leaves])
    pred = to_oracle[model.hard_labels(s).cpu()].numpy()
    target = oracle.predict(images.float())[0].cpu().numpy()
    if args.out:
        out = Path(args.out)
    else:
        out = Path(args.regions).parent if os.path.exists(args.regions) else Path(".")
    prefix = args.prefix or domain
    save_png(out / f"{prefix}-regions-overlay.png", overlay_grid(to_uint8(images), pred, target, names))

    n_m = min(args.samples, args.m_images)
    codes = G.random_styles(n_m, seed=args.seed, truncation=trunc)
    M = mean_correlation(code_correlation(model, codes))                       # [L, |S|]
    per_layer = layer_means(M, G.layout).cpu().numpy()
    save_png(out / f"{prefix}-regions-M.png",
             heatmap(per_layer, model.leaves, layer_names(G.layout),
                     f"M (Eq. 1), mean over each layer's channels, {n_m} images"))
    share = {leaf: round(float((M[i] > 0.5).float().mean()), 4) for i, leaf in enumerate(model.leaves)}
    card = {"oracle_miou": round(scores["miou"], 4), "oracle_iou": scores["iou"],
            "oracle_pixel_accuracy": round(scores["pixel_accuracy"], 4),
            "oracle_region_share": scores["target_share"], "eval_images": args.samples,
            "eval_seed": args.seed, "eval_truncation": trunc,
            "channels_mostly_in_region": share, "evaluated": datetime.datetime.now().isoformat(timespec="seconds")}
    print(f"mIoU vs oracle {scores['miou']:.4f} ({args.samples} images, {seconds:.1f} s); per region: "
          + ", ".join(f"{k} {v}" for k, v in scores["iou"].items()), file=sys.stderr)
    if not args.no_card and os.path.exists(args.regions):
        regions.card.update(card)
        regions.save(args.regions)
    print(json.dumps(card, indent=1))
    return 0


@_without_grad
def cmd_regions_prune(args: argparse.Namespace) -> int:
    from trainer.centroid_pruning import prune_regions
    from sfeditor.model.checkpoints import load_generator
    from sfeditor.regions.clustering import Cancelled
    from sfeditor.regions.masks import RegionModel
    from sfeditor.regions.regions_file import load_regions

    from .common import CancelToken

    if args.out is None and not os.path.exists(args.regions):
        raise ValueError(f"{args.regions} is a shipped domain's file: give --out")
    device = _setup(args)
    regions = load_regions(args.regions)
    domain = args.domain or regions.domain
    G = load_generator(args.generator or domain, device=device)
    if len(set(regions.clusters.values())) == regions.num_clusters:
        print("every cluster has a label of its own: only centroids no pool pixel is nearest to can go",
              file=sys.stderr)
    cancel = CancelToken()
    cancel.install_signal_handlers()
    try:
        new, report = prune_regions(RegionModel(G, regions), images=args.images, seed=args.seed,
                                    truncation=_truncation(args, domain), top=args.top,
                                    progress=_progress_fn("regions-prune"), cancel=cancel)
    except Cancelled:
        print("\ncancelled (nothing written)", file=sys.stderr)
        return 130
    out = Path(args.out or args.regions)
    new.save(out)
    print(f"pruned {report['from_clusters']} -> {report['clusters']} centroids in {report['seconds']:.1f} s; "
          f"wrote {out} (run regions-eval to score it)", file=sys.stderr)
    print(json.dumps({k: v for k, v in report.items() if k != "kept"}, indent=1))
    return 0


# ---------------------------------------------------------------- recipes
@dataclass
class RegionsRecipe:
    """``sfeditor-train regions``'s recipe: the clustering (sfeditor.regions.clustering.ClusteringOptions),
    the oracle labelling and the pruning of a regions file."""

    domain: str = ""              # a shipped domain, or any name with --generator ("" = give --domain)
    clusters: int = 12            # K: clusters to cut the Ward tree into
    samples: int = 256            # N generated images to sample DeepPixels from
    pixels: int = 6000            # DeepPixels kept for Ward (memory ~ pixels^2)
    size: int = 64                # DeepPixel resolution
    seed: int = 0
    truncation: float | None = None   # psi (None = the domain's, paper A.6; 1.0 otherwise)
    normalization: str = "layer"  # channel weighting of distances (sfeditor.regions.clustering)
    min_resolution: int = 0       # leave out layers whose feature maps are coarser (0 = all, as the paper)
    pca: int = 64                 # PCA dimensions for Ward (0 = all channels)
    batch: int = 8
    auto_label: bool = False      # toy domains: name clusters by the region oracle's majority label, paper tree
    label_images: int = 64        # images the oracle labels for auto_label
    tree: str = ""                # paper tree for the labels ("" = the domain's)
    prune: bool = False           # after auto_label, drop the centroids that never decide a region
    prune_images: int = 128       # pool images for prune
    sheet_images: int = 16        # images per contact sheet
    threads: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        from sfeditor.regions.regions_file import NORMALIZATIONS
        from sfeditor.regions.tree import PAPER_TREES

        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {self.normalization!r}")
        if self.tree and self.tree not in PAPER_TREES:
            raise ValueError(f"tree must be one of {', '.join(sorted(PAPER_TREES))}, not {self.tree!r}")
        for k in ("clusters", "samples", "pixels", "size", "batch", "label_images", "prune_images", "sheet_images"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, not {getattr(self, k)}")
        if self.prune and not self.auto_label:
            raise ValueError("prune needs labelled clusters: set auto_label, or label the file and run "
                             "`sfeditor-train regions-prune`")


@dataclass
class RegionsEvalRecipe:
    """``sfeditor-train regions-eval``'s settings."""

    samples: int = 128            # generated images to score
    seed: int = 1000              # seed of the evaluation codes (not the clustering's)
    m_images: int = 32            # images the M heatmap averages over
    truncation: float | None = None
    threads: int = 0
    device: str = "auto"


@dataclass
class RegionsPruneRecipe:
    """``sfeditor-train regions-prune``'s settings (trainer.centroid_pruning)."""

    images: int = 128             # pool images (generated; seed)
    seed: int = 2                 # seed of the pool codes (not the clustering's or labelling's)
    top: int = 64                 # nearest centroids remembered per pool pixel
    truncation: float | None = None
    threads: int = 0
    device: str = "auto"


def _with_recipe(cls, command):
    """Wrap a command: its recipe (``--recipe``, the run flags on top) fills ``args`` before it runs."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from .recipe import apply_recipe

        recipe = apply_recipe(args, cls, names=[n for n in ("domain", "device", "threads", "seed")
                                                 if n in cls.__dataclass_fields__])
        if cls is RegionsRecipe and not args.domain:
            raise ValueError("give --domain (or a recipe with a domain)")
        args.recipe_used = recipe
        return command(args)

    return run


# ---------------------------------------------------------------- parsers
def _common(p: argparse.ArgumentParser, what: str) -> None:
    from .recipe import add_recipe_flag

    add_recipe_flag(p, what)
    p.add_argument("--generator", help="generator checkpoint (default: the domain's shipped generator)")
    p.add_argument("--device", type=device_arg, help="cpu, cuda, auto (default: the recipe's)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the recipe's; 0 = torch's)")


def add_parsers(subparsers) -> None:
    """Register ``regions``, ``regions-eval`` and ``regions-prune`` on an ``add_subparsers()`` object."""
    r = subparsers.add_parser("regions", help="discover a domain's regions: DeepPixel Ward clustering (Sec. 4.2)",
                              description="Cluster a generator's DeepPixels into a regions file (Sec. 4.2) from a "
                                          "recipe (trainer/recipes/regions-*.json; keys: RegionsRecipe in "
                                          "trainer/regions.py); writes regions.json, contact sheets and "
                                          "options.json in --out. The flags override the recipe.")
    _common(r, "clustering")
    r.add_argument("--domain", help="domain name (a shipped one, or any name with --generator)")
    r.add_argument("--out", help="output folder (default runs/regions-<domain>)")
    r.add_argument("--recluster", action="store_true", help="ignore a saved Ward tree in --out")
    r.add_argument("--install", action="store_true", help="also write resources/regions/<domain>.json")
    r.set_defaults(func=_with_recipe(RegionsRecipe, cmd_regions))

    e = subparsers.add_parser("regions-eval", help="mIoU of a regions file vs the toy oracle, overlays and M heatmap")
    _common(e, "evaluation")
    e.add_argument("--regions", required=True, help="regions file, or a shipped domain name")
    e.add_argument("--domain", help="domain (default: the regions file's)")
    e.add_argument("--out", help="folder for the PNGs (default: beside the regions file)")
    e.add_argument("--prefix", help="PNG name prefix (default: the domain)")
    e.add_argument("--no-card", action="store_true", help="do not write the numbers into the regions file")
    e.set_defaults(func=_with_recipe(RegionsEvalRecipe, cmd_regions_eval))
    _add_prune_parser(subparsers)


def _add_prune_parser(subparsers) -> None:
    p = subparsers.add_parser("regions-prune", help="drop a labelled regions file's centroids that never decide a region",
                              description="Keep only the centroids that decide some pool pixel's region "
                              "(trainer.centroid_pruning): the same masks on the pool, fewer distances per mask.")
    _common(p, "pruning")
    p.add_argument("--regions", required=True, help="labelled regions file, or a shipped domain name (with --out)")
    p.add_argument("--domain", help="domain (default: the regions file's)")
    p.add_argument("--out", help="where to write the pruned file (default: overwrite --regions)")
    p.set_defaults(func=_with_recipe(RegionsPruneRecipe, cmd_regions_prune))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m trainer.regions regions ...``."""
    p = argparse.ArgumentParser(prog="python -m trainer.regions")
    add_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"{args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
