"""Qt bridges to the core's background work: the live preview and cancellable jobs.

The math runs in the core (:mod:`sfeditor.render_service`, :mod:`sfeditor.locality`,
:mod:`sfeditor.inversion`); these classes only move results onto the GUI thread
with signals (emitted from worker threads, so Qt queues them to the receivers).
"""
from __future__ import annotations

import inspect
import threading
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from ..jobs import Cancelled, CancelToken
from ..render_service import RenderService

__all__ = ["PreviewBridge", "Job"]


class PreviewBridge(QObject):
    """A :class:`RenderService` (newest request wins) whose results arrive as signals."""

    frameReady = Signal(object)            # RenderResult
    thumbnailReady = Signal(str, object)   # node name, uint8 [H, W, 3]

    def __init__(self, G, hierarchy=None, parent: QObject | None = None, thumbnails: bool = True):
        super().__init__(parent)
        self.service = RenderService(G, hierarchy, on_result=self.frameReady.emit,
                                     on_thumbnail=(lambda n, img: self.thumbnailReady.emit(n, img))
                                     if thumbnails else None)

    def submit(self, composition) -> int:
        return self.service.submit(composition)

    def wait_until_idle(self, timeout: float = 30.0) -> bool:
        return self.service.wait_until_idle(timeout)

    def close(self) -> None:
        self.service.close()


class Job(QObject):
    """Run ``fn(report, cancel)`` on a worker thread.

    ``report(step, total, info)`` -> :attr:`progress`; if ``fn`` returns an
    iterator, every item is sent as :attr:`partial` (progressive results) and
    the last one as :attr:`done`.  :meth:`cancel` sets the token the core
    functions check; a cancelled job emits :attr:`cancelled` only.
    """

    progress = Signal(int, int, object)
    partial = Signal(object)
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    finished = Signal()          # after any of done / failed / cancelled

    def __init__(self, fn: Callable[..., Any], name: str = "job", parent: QObject | None = None):
        super().__init__(parent)
        self.fn, self.name = fn, name
        self.token = CancelToken()
        self._thread: threading.Thread | None = None
        self.result: Any = None
        self.error: str | None = None

    def start(self) -> "Job":
        self._thread = threading.Thread(target=self._run, name=f"sfeditor-{self.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.token.cancel()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.is_running()

    def _report(self, step: int, total: int, info: dict | None = None) -> None:
        self.progress.emit(int(step), int(total), dict(info or {}))

    def _run(self) -> None:
        try:
            out = self.fn(self._report, self.token)
            if inspect.isgenerator(out):
                last = None
                for item in out:
                    if self.token.requested:
                        raise Cancelled(f"{self.name} cancelled")
                    last = item
                    self.partial.emit(item)
                out = last
            if self.token.requested:
                raise Cancelled(f"{self.name} cancelled")
            self.result = out
            self.done.emit(out)
        except Cancelled:
            self.cancelled.emit()
        except Exception as e:  # reported to the user, never raised into Qt
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
            traceback.print_exc()
            self.failed.emit(self.error)
        finally:
            self.finished.emit()
