"""Which coarse S channels move what: one region's size against another region's colour.

LB_align (Sec. 4.3, A.4) hands the coarse layers to the node's global code, which
should hold the pose (for toy-cars: the car's position and size).  If the channels
that set the pose also colour a region, the global code takes that colour too, and
editing that region's own code no longer changes it (Sec. 7's "mode collapse").
This bench moves each coarse channel alone by ``--sigma`` standard deviations on
``--images`` sampled codes and has the region oracle measure

* size: the mean absolute change of the share of pixels labelled ``--size``;
* colour: the mean absolute colour change over the pixels labelled ``--colour`` in
  both images,

then prints how the two rank against each other.  "Coarse" is the FusionNet's:
conv and toRGB layers whose index in their own list is below ``--coarse-layers``
(the official layout's quirk: at 64 px the first 5 toRGB layers are all of them).

    python experiments/coarse_channels.py [--domain toy-cars] [--size car_body,wheels]
        [--colour background_bottom] [--images 8] [--sigma 3] [--coarse-layers 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfeditor.model.checkpoints import load_generator  # noqa: E402
from sfeditor.domains import get_domain  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def channel_effects(G, oracle, size_regions, colour_region, images: int, sigma: float, coarse: int,
                    truncation: float, seed: int = 11, chunk: int = 8):
    """``[(layer name, channel, size effect, colour effect)]`` for every coarse channel."""
    names = list(oracle.region_names)
    size_ids = torch.tensor([names.index(r) for r in size_regions])
    colour_id = names.index(colour_region)
    base = G.random_styles(images, seed=seed, truncation=truncation)
    spread = G.random_styles(512, seed=seed + 1, truncation=truncation)
    layers = [("conv", i) for i in range(min(coarse, len(base.conv)))] + \
             [("rgb", i) for i in range(min(coarse, len(base.rgb)))]
    chans = [(k, i, c) for k, i in layers for c in range(getattr(base, k)[i].shape[1])]
    img0 = G.synthesis(base).float()
    lab0, _ = oracle.predict(img0)
    size0 = torch.isin(lab0, size_ids).float().mean((1, 2))
    out = []
    for j in range(0, len(chans), chunk):
        part = chans[j:j + chunk]
        s = base.repeat(len(part)).clone()
        for m, (k, i, c) in enumerate(part):
            getattr(s, k)[i][m * images:(m + 1) * images, c] += sigma * getattr(spread, k)[i][:, c].std()
        img = G.synthesis(s).float()
        lab, _ = oracle.predict(img)
        for m, (k, i, c) in enumerate(part):
            im, lb = img[m * images:(m + 1) * images], lab[m * images:(m + 1) * images]
            size = torch.isin(lb, size_ids).float().mean((1, 2))
            both = ((lab0 == colour_id) & (lb == colour_id)).float()
            colour = ((im - img0).abs().mean(1) * both).sum((1, 2)) / both.sum((1, 2)).clamp(min=1)
            out.append((f"{k}{i}", c, float((size - size0).abs().mean()), float(colour.mean())))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", default="toy-cars")
    ap.add_argument("--size", default="car_body,wheels", help="regions whose pixel share is the 'size'")
    ap.add_argument("--colour", default="background_bottom", help="region whose colour change is measured")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=3.0)
    ap.add_argument("--coarse-layers", type=int, default=5)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    G = load_generator(args.domain)
    oracle = load_oracle(args.domain)
    t = time.perf_counter()
    res = channel_effects(G, oracle, args.size.split(","), args.colour, args.images, args.sigma,
                          args.coarse_layers, get_domain(args.domain).truncation)
    size = np.array([r[2] for r in res])
    colour = np.array([r[3] for r in res])
    pct = lambda a, v: float((a < v).mean())  # noqa: E731
    top_size, top_colour = np.argsort(-size)[:args.top], np.argsort(-colour)[:args.top]
    print(f"{len(res)} coarse channels, {args.images} images, {args.sigma} sd, {time.perf_counter() - t:.0f} s")
    print(f"Spearman(size, colour) over all coarse channels: {spearman(size, colour):.2f}")
    print(f"top {args.top} by size and by colour in common: {len(set(top_size) & set(top_colour))}")
    print(f"\n| rank | channel (by {args.size} size) | size change | {args.colour} colour change | colour percentile |")
    print("|---|---|---|---|---|")
    for r, i in enumerate(top_size, 1):
        print(f"| {r} | {res[i][0]}:{res[i][1]} | {size[i]:.4f} | {colour[i]:.3f} | {pct(colour, colour[i]):.2f} |")
    print(f"\n| rank | channel (by {args.colour} colour) | colour change | size change | size percentile |")
    print("|---|---|---|---|---|")
    for r, i in enumerate(top_colour, 1):
        print(f"| {r} | {res[i][0]}:{res[i][1]} | {colour[i]:.3f} | {size[i]:.4f} | {pct(size, size[i]):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
