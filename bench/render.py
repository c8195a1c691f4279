"""Benchmark the procedural toy renderers (single core recommended).

Prints images per wall-clock second and per CPU second of this process; on a
busy machine the second column is the fairer measure of the renderer itself.

    OMP_NUM_THREADS=1 python bench/render.py [--sizes 64 128] [--batches 64 256]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from sfeditor.toy import DOMAINS, render  # noqa: E402


def bench(domain: str, size: int, batch: int, min_time: float) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second of this process."""
    render(domain, np.arange(batch), size)  # warm-up (grids, caches)
    n, t0, c0, start = 0, time.perf_counter(), time.process_time(), 1_000_000
    while True:
        render(domain, np.arange(start + n, start + n + batch), size)
        n += batch
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n / dt, n / max(time.process_time() - c0, 1e-9)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domains", nargs="+", default=list(DOMAINS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    args = ap.parse_args(argv)
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'domain':<10} {'size':>5} {'batch':>6} {'images/s':>10} {'images/cpu-s':>13}")
    for d in args.domains:
        for s in args.sizes:
            for b in args.batches:
                wall, cpu = bench(d, s, b, args.min_time)
                print(f"{d:<10} {s:>5} {b:>6} {wall:>10.0f} {cpu:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
