"""Cooperative cancellation and progress reporting for long core jobs.

The core (inversion, direction fitting, ...) must not import ``trainer``; the
trainer and the app can share these instead.  Any object with a boolean
``requested`` attribute works as a cancel token (:class:`Cancellable`), so the
trainer's own token is accepted as it is.

A progress callback is called as ``callback(step, total, info)`` with
``info`` a dict of floats (loss, PSNR, ...), the signature of
``trainer.common.Progress``'s callback.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable, Protocol, runtime_checkable

__all__ = ["Cancellable", "CancelToken", "Cancelled", "ProgressCallback", "check_cancel", "report"]

ProgressCallback = Callable[[int, int, dict], Any]


@runtime_checkable
class Cancellable(Protocol):
    """Anything with a ``requested`` flag (set once the user asked to stop)."""

    requested: bool


class Cancelled(Exception):
    """Raised inside a job when its cancel token was set.  ``partial`` may hold a partial result."""

    def __init__(self, message: str = "cancelled", partial: Any = None):
        super().__init__(message)
        self.partial = partial


class CancelToken:
    """Cooperative cancel flag, thread-safe to set; optional Ctrl-C / SIGTERM hook."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @requested.setter
    def requested(self, value: bool) -> None:   # lets code written for a plain attribute set it
        if value:
            self._event.set()
        else:
            self._event.clear()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    def install_signal_handlers(self) -> None:
        """First Ctrl-C / SIGTERM sets the flag (the job stops cleanly); a second one aborts."""

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.cancel()
            print("\nstopping after this step; press Ctrl-C again to abort", file=sys.stderr)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, handler)
            except ValueError:   # not the main thread
                pass


def check_cancel(token: Any, message: str = "cancelled", partial: Any = None) -> None:
    """Raise :class:`Cancelled` if ``token`` (may be None) has been set."""
    if token is not None and getattr(token, "requested", False):
        raise Cancelled(message, partial)


def report(callback: ProgressCallback | None, step: int, total: int, **info: Any) -> None:
    """Call a progress callback if there is one."""
    if callback is not None:
        callback(step, total, info)
