"""Write sample grids of the toy renderers (images and colour-coded labels).

    python docs/toy_grids.py [--out docs/images] [--size 64] [--scale 2]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from sfeditor.toy import DOMAINS, render  # noqa: E402

PALETTE = np.array([(40, 40, 40), (230, 160, 40), (60, 120, 220), (240, 200, 170),
                    (40, 200, 80), (220, 40, 60), (150, 80, 200), (90, 200, 200)], np.uint8)


def tile(a: np.ndarray, rows: int, scale: int) -> np.ndarray:
    cols = len(a) // rows
    a = a[: rows * cols].reshape(rows, cols, *a.shape[1:])
    g = np.concatenate([np.concatenate(list(r), axis=1) for r in a], axis=0)
    return np.repeat(np.repeat(g, scale, 0), scale, 1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for dom in DOMAINS:
        imgs, labs = render(dom, np.arange(args.first_seed, args.first_seed + 64), args.size)
        base = os.path.join(args.out, f"{dom}-renderer")
        cv2.imwrite(base + ".png", tile(imgs, 8, args.scale)[..., ::-1])
        cv2.imwrite(base + "-labels.png", tile(PALETTE[labs], 8, args.scale)[..., ::-1])
        print("wrote", base + ".png", base + "-labels.png")


if __name__ == "__main__":
    main()
