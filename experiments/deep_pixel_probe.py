"""What the toy generators' DeepPixels know about regions: a diagnostic for the regions issue.

    python experiments/deep_pixel_probe.py --domain toy-faces [--images 64] [--threads 2]

DeepPixels (Sec. 4.2, Fig. 18) of N generated images are scored against the
region oracle's labels of the same images, on held-out images, three ways:

* **positional share**: the part of each layer's DeepPixel variance explained
  by the pixel position alone (the mean DeepPixel at each location).  Near 1
  means the features mostly say *where* a pixel is, not *what* it shows.
* **linear probe**: a logistic regression (scikit-learn) from DeepPixels to the
  oracle's labels, trained on 3/4 of the images: how much region information
  is there to find at all (an upper bound for any centroid rule; supervised,
  so it is a diagnostic, not a regions file).
* **Ward + nearest centroid** (what ``sfeditor-train regions`` does), clusters
  named by majority vote: the unsupervised result.

Each for the raw features (the paper's), *location-centred* features
(DeepPixel minus the mean DeepPixel at its location, over the training images)
and "boosted" ones (x + B (x - location mean): the image's own deviation from
the average layout weighs more).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def miou(pred: np.ndarray, target: np.ndarray, n: int) -> tuple[float, list[float]]:
    ious = []
    for r in range(n):
        inter = np.sum((pred == r) & (target == r))
        union = np.sum((pred == r) | (target == r))
        if union:
            ious.append(inter / union)
        else:
            ious.append(float("nan"))
    return float(np.nanmean(ious)), ious


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", default="toy-faces")
    ap.add_argument("--generator")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--min-resolution", type=int, default=32)
    ap.add_argument("--clusters", type=int, nargs="+", default=[30, 64])
    ap.add_argument("--pixels", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["raw", "centred", "boost2", "boost4"],
                    help="raw | centred (minus the location mean) | boostB (x + B (x - location mean))")
    ap.add_argument("--normalization", default="layer", help="none | channel | layer (sfeditor.regions.clustering)")
    ap.add_argument("--pca", type=int, default=64, help="PCA dimensions Ward runs in (0 = all channels)")
    ap.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    from sfeditor.model.checkpoints import load_generator
    from sfeditor.regions.clustering import channel_scale, used_channels
    from sfeditor.domains import get_domain
    from sfeditor.toy.oracle import load_oracle

    dom = get_domain(args.domain)
    G = load_generator(args.generator or args.domain, device="cpu").eval()
    oracle = load_oracle(args.domain)
    names = list(oracle.region_names)
    n = args.images
    t0 = time.perf_counter()
    feats, labels = [], []
    with torch.no_grad():
        codes = G.random_styles(n, seed=123, truncation=dom.truncation)
        for i in range(0, n, 8):
            s = codes[i:i + 8]
            img, f = G.synthesis(s, "const", return_features=True)
            from sfeditor.model.generator import resize_features
            feats.append(torch.cat([resize_features(x, 64) for x in f["conv"]], 1).float())
            lab, _ = oracle.predict(img.float())
            labels.append(lab)
    X = torch.cat(feats).numpy()                         # [n, C, 64, 64]
    Y = torch.cat(labels).numpy().astype(np.int64)       # [n, 64, 64]
    used = used_channels(G.layout, args.min_resolution)
    X = X[:, used]
    print(f"{args.domain}: {n} images, {X.shape[1]} DeepPixel channels (layers >= {args.min_resolution}px), "
          f"{time.perf_counter() - t0:.1f} s")
    n_tr = n * 3 // 4
    loc_mean = X[:n_tr].mean(0, keepdims=True)
    pos = loc_mean[0].reshape(X.shape[1], -1).var(1).sum()
    tot = X[:n_tr].transpose(1, 0, 2, 3).reshape(X.shape[1], -1).var(1).sum()
    print(f"positional share of the variance: {pos / tot:.2f}")
    rng = np.random.default_rng(0)
    rows = []

    def flat(A, lo, hi):
        return A[lo:hi].transpose(0, 2, 3, 1).reshape(-1, A.shape[1])

    for variant in args.variants:
        beta = {"raw": 0.0, "centred": None}.get(variant)
        if variant.startswith("boost"):
            beta = float(variant[5:])
        A = X - loc_mean if beta is None else (X + beta * (X - loc_mean) if beta else X)
        Xtr, Ytr = flat(A, 0, n_tr), Y[:n_tr].reshape(-1)
        Xte, Yte = flat(A, n_tr, n), Y[n_tr:].reshape(-1)
        scale = channel_scale(Xtr[rng.permutation(len(Xtr))[:20000]], args.normalization,
                              tuple(d for d, r in zip(G.layout.conv_dims, G.layout.conv_res) if r >= args.min_resolution),
                              tuple(r for r in G.layout.conv_res if r >= args.min_resolution), args.min_resolution)
        Xtr, Xte = Xtr / scale, Xte / scale
        pick = rng.permutation(len(Xtr))[:20000]
        t = time.perf_counter()
        if not args.no_probe:
            probe = LogisticRegression(max_iter=300, C=1.0).fit(Xtr[pick], Ytr[pick])
            m, ious = miou(probe.predict(Xte), Yte, len(names))
            rows.append((variant, "linear probe", m, ious, time.perf_counter() - t))
        wp = rng.permutation(len(Xtr))[:args.pixels]
        Z = PCA(args.pca, random_state=0).fit(Xtr[pick]).transform(Xtr[wp]) if args.pca else Xtr[wp]
        for k in args.clusters:
            t = time.perf_counter()
            lab = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(Z)
            cent = np.stack([Xtr[wp][lab == j].mean(0) for j in range(k)])
            def nearest(B):
                d = (B ** 2).sum(1, keepdims=True) - 2 * B @ cent.T + (cent ** 2).sum(1)[None]
                return d.argmin(1)
            ctr = nearest(Xtr[pick])
            maj = np.array([np.bincount(Ytr[pick][ctr == j], minlength=len(names)).argmax() if np.any(ctr == j) else 0
                            for j in range(k)])
            m, ious = miou(maj[nearest(Xte)], Yte, len(names))
            rows.append((variant, f"Ward K={k}", m, ious, time.perf_counter() - t))
    print("| features | method | mIoU | " + " | ".join(names) + " | s |")
    print("|---|---|---|" + "---|" * len(names) + "---|")
    for v, meth, m, ious, sec in rows:
        print(f"| {v} | {meth} | {m:.3f} | " + " | ".join(f"{x:.2f}" for x in ious) + f" | {sec:.1f} |")


if __name__ == "__main__":
    main()
