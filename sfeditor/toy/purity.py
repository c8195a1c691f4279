"""Region purity of the renderer's ideal edit (``render_swap``) under the union reading.

For leaf k, base A = render(seeds) and edited E = render_swap(seeds, donors, [k]*n);
U = (labels_A == k) | (labels_E == k); the 1-px ring ``dilate(U) & ~erode(U)`` (3x3) is left out;
d = mean over RGB of |E - A| on images in [-1, 1];
locality = sum(d[U & ~ring]) / sum(d[~ring]) (summed over all pairs), and the mean in-region
change = mean of d over U & ~ring.  This is the reading issue 38 item 2 defines.

``python -m sfeditor.toy.purity [--n 300] [--size 64] [--sheets docs/images]`` prints the table for
both domains (and writes the renderer's contact sheets).
"""
from __future__ import annotations

import argparse

import numpy as np

from . import DOMAINS, region_names, render, render_swap


def _shift_or(m: np.ndarray, op) -> np.ndarray:
    """3x3 dilation (op=np.logical_or) or erosion (op=np.logical_and) of [N,H,W] masks, edge-replicated."""
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = m.shape[1:]
    out = p[:, 1:1 + h, 1:1 + w].copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            op(out, p[:, dy:dy + h, dx:dx + w], out=out)
    return out


def ring(u: np.ndarray) -> np.ndarray:
    """Pixels within one pixel (3x3 neighbourhood) of the border of mask ``u``."""
    return _shift_or(u, np.logical_or) & ~_shift_or(u, np.logical_and)


def union_reading(a: np.ndarray, e: np.ndarray, la: np.ndarray, le: np.ndarray, k: int) -> dict:
    """Locality and mean in-region change of edit ``a -> e`` for region id ``k`` (uint8 images)."""
    d = np.abs(e.astype(np.float32) - a.astype(np.float32)).mean(-1) / 127.5
    u = (la == k) | (le == k)
    keep = ~ring(u)
    inside = u & keep
    tot = float(d[keep].sum())
    return {"locality": float(d[inside].sum()) / tot if tot > 0 else 1.0,
            "in_region": float(d[inside].mean()) if inside.any() else 0.0,
            "inside_sum": float(d[inside].sum()), "total_sum": tot}


def measure(domain: str, n: int = 300, size: int = 64, seed0: int = 20_000_000) -> dict[str, dict]:
    """The union reading of every leaf's ``render_swap`` over ``n`` pairs (deterministic seeds)."""
    names = region_names(domain)
    seeds = seed0 + np.arange(n, dtype=np.int64)
    donors = seed0 + 7_919 + 3 * np.arange(n, dtype=np.int64)
    a, la = render(domain, seeds, size)
    out = {}
    for k, name in enumerate(names):
        e, le = render_swap(domain, seeds, donors, [name] * n, size)
        r = union_reading(a, e, la, le, k)
        r["n"] = n
        # per-pair locality for a standard error
        per = [union_reading(a[i:i + 1], e[i:i + 1], la[i:i + 1], le[i:i + 1], k)["locality"] for i in range(n)]
        r["se"] = float(np.std(per) / np.sqrt(n))
        out[name] = r
    return out


# ---------------------------------------------------------------- contact sheets (to look at)

_PALETTE = {
    "toy-faces": [(38, 38, 38), (232, 160, 40), (60, 120, 220), (240, 200, 160), (40, 200, 80), (220, 30, 50)],
    "toy-cars": [(120, 170, 230), (110, 90, 60), (220, 40, 40), (40, 40, 40)],
}


def label_colors(domain: str, labels: np.ndarray) -> np.ndarray:
    """Labels ``[..., H, W]`` as an RGB picture with one flat colour per region."""
    return np.asarray(_PALETTE[domain], dtype=np.uint8)[labels]


def tile(images: np.ndarray, cols: int, pad: int = 0) -> np.ndarray:
    """``[N, H, W, 3]`` -> one ``[rows*H, cols*W, 3]`` picture (row-major)."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + pad), cols * (w + pad), c), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = im
    return out


def swap_sheet(domain: str, pairs: int = 6, size: int = 128, seed0: int = 20_000_000) -> np.ndarray:
    """Rows of A | B | render_swap(A, B, leaf) for every leaf, one row per pair."""
    names = region_names(domain)
    seeds = seed0 + 11 * np.arange(pairs, dtype=np.int64)
    donors = seed0 + 7_919 + 13 * np.arange(pairs, dtype=np.int64)
    a, _ = render(domain, seeds, size)
    b, _ = render(domain, donors, size)
    cols = [a, b] + [render_swap(domain, seeds, donors, [k] * pairs, size)[0] for k in names]
    return tile(np.stack(cols, axis=1).reshape(-1, size, size, 3), len(cols), pad=2)


def write_sheets(out_dir, size: int = 128, n: int = 64) -> list[str]:
    """docs/images/toy-{domain}-renderer.png, -renderer-labels.png and -renderer-swap.png."""
    import os

    from ..images.imageio import save_png

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for dom in DOMAINS:
        imgs, labs = render(dom, np.arange(n), size)
        cols = int(np.sqrt(n))
        for suffix, pic in (("renderer", tile(imgs, cols)), ("renderer-labels", tile(label_colors(dom, labs), cols)),
                            ("renderer-swap", swap_sheet(dom, size=size))):
            p = os.path.join(out_dir, f"{dom}-{suffix}.png")
            save_png(p, pic)
            paths.append(p)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--domain", choices=DOMAINS, action="append")
    ap.add_argument("--sheets", metavar="DIR", help="also write the contact sheets (samples, labels, swaps) to DIR")
    args = ap.parse_args(argv)
    if args.sheets:
        for p in write_sheets(args.sheets):
            print("wrote", p)
    print("| domain | leaf | locality | mean in-region change | n | size |")
    print("|---|---|---|---|---|---|")
    for dom in args.domain or DOMAINS:
        for leaf, r in measure(dom, args.n, args.size).items():
            print(f"| {dom} | {leaf} | {r['locality']:.3f} | {r['in_region']:.3f} | {r['n']} | {args.size} |")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
