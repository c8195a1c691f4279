"""The data a toy generator run trains on: deterministic renders, region swaps, a prefetcher.

Data are rendered on the fly from deterministic seeds (step * batch + i), so a resumed run sees
exactly the batches an uninterrupted one would (:mod:`trainer.generator_loop`).
"""
from __future__ import annotations

import numpy as np

from sfeditor.images.imageio import from_uint8
from sfeditor.toy import render

TRAIN_SEED_OFFSET = 0           # training images use seeds [0, 10_000_000)
HELDOUT_SEED_OFFSET = 10_000_000  # evaluation images use seeds >= 10_000_000


def step_seeds(step: int, batch: int, offset: int = TRAIN_SEED_OFFSET) -> np.ndarray:
    """The deterministic render seeds of a step's batch (a resumed run sees the same data)."""
    return offset + (np.arange(batch) + step * batch) % 10_000_000


def rendered_batch(domain: str, step: int, batch: int, size: int, offset: int = TRAIN_SEED_OFFSET,
                   labels: bool = False):
    """Images (in [-1, 1]) of the step's deterministic seeds; with ``labels`` also the label maps."""
    seeds = step_seeds(step, batch, offset)
    images, lab = render(domain, seeds, size=size)
    return (from_uint8(images), lab) if labels else from_uint8(images)


def swap_donor_seeds(step: int, batch: int, n_groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic donor (B) seeds and group index of a step's region swaps (a resumed run sees the
    same swaps)."""
    rng = np.random.default_rng([seed, 77, step])
    b = step_seeds(step, batch, 40_000_000)
    return b, rng.integers(0, n_groups, batch)


def swap_batch(domain: str, step: int, seeds_a: np.ndarray, size: int, seed: int = 0, params: bool = False) -> dict:
    """The renders one step's region swaps need (numpy, so it can be prepared in a background
    thread): donor seeds ``b``, group index ``gi`` per pair, the donors' images ``xb``, and the
    renderer's A-with-B's-group images ``y`` with their labels ``lab``; with ``params`` also the
    donors' renderer parameters ``pb`` (a parameter code's donor codes)."""
    from sfeditor.toy import render_swap, swap_groups

    names = swap_groups(domain)
    b, gi = swap_donor_seeds(step, len(seeds_a), len(names), seed)
    if params:
        xb, _, pb = render(domain, b, size=size, return_params=True)
    else:
        (xb, _), pb = render(domain, b, size=size), None
    y, lab = render_swap(domain, seeds_a, b, [names[i] for i in gi], size=size)
    return {"b": b, "gi": gi, "xb": xb, "y": y, "lab": lab, "pb": pb}


def ae_step_data(domain: str, batch: int, size: int, swap: bool, seed: int, step: int, params: bool = False):
    """The numpy data of one autoencoder step: its seeds, renders, labels, (``swap``) the region
    swaps' renders and (``params``) the renderer's parameters of the renders (name -> [batch]).
    Module-level, so a process pool can run it (:class:`Prefetcher`)."""
    seeds = step_seeds(step, batch)
    if params:
        images, labels, prm = render(domain, seeds, size=size, return_params=True)
    else:
        (images, labels), prm = render(domain, seeds, size=size), None
    return seeds, images, labels, (swap_batch(domain, step, seeds, size, seed, params) if swap else None), prm


class Prefetcher:
    """Prepares the numpy data of the next steps in the background while the current step trains
    (rendering takes ~70 ms of a batch-32 step on one core; more than a GPU step).  ``workers`` = 1:
    one thread; > 1: that many worker processes (``make`` must then pickle: a module-level function
    or a ``functools.partial`` of one), each preparing whole steps.  Data depend on the step only,
    so results and resume are unchanged by the choice."""

    def __init__(self, make, depth: int = 2, workers: int = 1):
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        self.make, self.depth = make, max(depth, 2 * workers)
        if workers > 1:
            import multiprocessing

            # spawn, not fork: the parent may hold CUDA state, which a forked child must not inherit
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        else:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.pending: dict = {}

    def get(self, step: int):
        for s in range(step, step + self.depth + 1):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(self.make, s)
        for s in [s for s in self.pending if s < step]:
            self.pending.pop(s).cancel()
        return self.pending.pop(step).result()

    def close(self) -> None:
        for f in self.pending.values():
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


