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
    """A training run folder: ``options.json``, ``stats.jsonl``, ``checkpoint.pt``, ``samples/``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "samples").mkdir(exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_options(self, options: dict) -> None:
        atomic_write_text(self.path / "options.json", json.dumps(options, indent=2, sort_keys=True) + "\n")

    def read_options(self) -> dict | None:
        p = self.path / "options.json"
        return json.loads(p.read_text()) if p.exists() else None

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
        atomic_torch_save(state, self.checkpoint)

    def load(self) -> dict | None:
        if not self.checkpoint.exists():
            return None
        return torch.load(self.checkpoint, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
