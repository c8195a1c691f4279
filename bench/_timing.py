"""Shared timing helper for the bench scripts (run as ``python bench/<script>.py``)."""
from __future__ import annotations

import time

import torch


def timed(fn, repeats: int, device, reduce=min) -> float:
    """Best (or ``reduce``, e.g. ``statistics.median``) wall time of ``repeats`` calls after one
    warm-up call (CUDA synchronised)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return reduce(times)
