"""Shared training plumbing: run folders, JSON-lines logs, atomic checkpoints, progress, cancel."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sfeditor.atomic import atomic_torch_save, atomic_write_text
from sfeditor.jobs import CancelToken, Cancelled  # noqa: F401  (re-exported for the trainers)


class Diverged(RuntimeError):
    """A training run's loss blew up; it stopped without checkpointing the broken state."""


def run_cancellable(job):
    """Run ``job(cancel)`` from a CLI: Ctrl-C / SIGTERM ask it to checkpoint and stop.

    Returns ``(result, 0)``, or ``(None, 130)`` after printing why it stopped.
    """
    cancel = CancelToken()
    cancel.install_signal_handlers()
    try:
        return job(cancel), 0
    except Cancelled as e:
        print(f"\n{e}", file=sys.stderr)
        return None, 130
    except Diverged as e:
        print(f"\n{e}", file=sys.stderr)
        return None, 3

_STDERR = object()   # Progress's default stream: sys.stderr as it is when the bar is made


class Progress:
    """A one-line text progress bar with rate and ETA; ``callback`` receives (step, total, info)."""

    def __init__(self, total: int, desc: str = "", start: int = 0, stream=_STDERR,
                 callback: Callable[[int, int, dict], None] | None = None, min_interval: float = 1.0):
        stream = sys.stderr if stream is _STDERR else stream     # looked up now: stderr may have been replaced
        self.total, self.desc, self.stream, self.callback = total, desc, stream, callback
        self.start_step, self.t0, self.last = start, time.time(), 0.0
        self.min_interval = min_interval

    def update(self, step: int, **info: Any) -> None:
        if self.callback is not None:
            self.callback(step, self.total, info)
        now = time.time()
        if now - self.last < self.min_interval and step < self.total:
            return
        self.last = now
        done = step - self.start_step
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        frac = step / max(self.total, 1)
        bar = "#" * int(frac * 24)
        extras = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        eta_s = f"{eta / 60:.1f}m" if eta != float("inf") else "?"
        if self.stream is not None:
            self.stream.write(f"\r{self.desc} [{bar:<24}] {step}/{self.total} {rate:.2f}it/s eta {eta_s} {extras}")
            if step >= self.total:
                self.stream.write("\n")
            self.stream.flush()


class RunDir:
    """A training run folder: ``options.json``, ``stats.jsonl``, ``checkpoint.pt``, ``samples/``.

    Creating one locks the folder (:mod:`sfeditor.locks`, ``<run>/.lock``) for
    as long as the object lives: a second trainer on the same ``--out`` stops
    with :class:`sfeditor.locks.LockedError` naming the first (pid, host,
    start time); the lock of a run that was killed is taken over.  Checkpoints
    carry a SHA-256 of their content (key ``sha256``), checked by :meth:`load`.
    """

    def __init__(self, path: str | os.PathLike, lock: bool = True):
        from sfeditor.locks import acquire

        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path}: run folder path is a file")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = acquire(self.path, f"run folder {self.path}") if lock else None
        (self.path / "samples").mkdir(exist_ok=True)

    def close(self) -> None:
        """Release the folder's lock (also done when the object is garbage-collected or the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_options(self, options: dict) -> None:
        atomic_write_text(self.path / "options.json", json.dumps(options, indent=2, sort_keys=True) + "\n")

    def read_options(self) -> dict | None:
        from sfeditor.validate import load_json_file

        p = self.path / "options.json"
        return load_json_file(p, "run options file") if p.exists() else None

    def log(self, record: dict) -> None:
        record = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
        with open(self.path / "stats.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, phase: str, step: int) -> None:
        """On resume, drop this phase's log lines written after the checkpoint (no duplicates)."""
        self.filter_log(lambda r: not (r.get("phase") == phase and r.get("step", 0) > step))

    def filter_log(self, keep) -> None:
        """Rewrite ``stats.jsonl`` atomically with only the records ``keep(record)`` accepts."""
        p = self.path / "stats.jsonl"
        if not p.exists():
            return
        lines = []
        for line in p.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if keep(r):
                lines.append(line)
        atomic_write_text(p, "".join(k + "\n" for k in lines))

    def save(self, state: dict) -> None:
        from sfeditor.integrity import DIGEST_KEY, state_digest

        atomic_torch_save({**state, DIGEST_KEY: state_digest(state)}, self.checkpoint)

    def load(self) -> dict | None:
        """The last checkpoint (its CRCs, sizes and SHA-256 checked), or None when there is none."""
        if not self.checkpoint.exists():
            return None
        return load_checked_state(self.checkpoint)


def load_checked_state(path: str | os.PathLike) -> dict:
    """A checkpoint written by :meth:`RunDir.save` (or any ``torch.save`` dict), verified before use.

    ``sfeditor.model.safe_torch`` checks the zip CRCs and declared sizes; a stored
    ``sha256`` must match the content.  Raises ValueError naming the file.
    """
    from sfeditor.integrity import DIGEST_KEY, state_digest
    from sfeditor.model.safe_torch import safe_torch_load

    state = safe_torch_load(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a training checkpoint (holds a {type(state).__name__})")
    stored = state.pop(DIGEST_KEY, None)
    if stored is not None and stored != state_digest(state):
        raise ValueError(f"{path}: the checkpoint's content hash does not match (the file is corrupt); "
                         f"delete it to restart the run, or restore it")
    return state


def rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
