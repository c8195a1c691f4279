"""Qt bridges to the core's background work: the live preview and cancellable jobs.

The math runs in the core (:mod:`sfeditor.editor.render_service`, :mod:`sfeditor.editor.locality`,
:mod:`sfeditor.images.inversion`) on plain Python threads.  Those threads never touch a
Qt object: they put ``(callable, args)`` on a :class:`Dispatcher`'s queue, and
the dispatcher's timer runs them on the GUI thread, where the signals are then
emitted.  (Emitting PySide6 signals from foreign threads into Python callables
crashed under garbage collection here; the queue makes the hand-over explicit.)
"""
from __future__ import annotations

import inspect
import queue
import threading
import time
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QTimer, Signal

from ..jobs import Cancelled, CancelToken
from ..editor.render_service import RenderService

__all__ = ["Dispatcher", "PreviewBridge", "Job", "gui_thread_gc"]

_GC = None


def gui_thread_gc(interval_s: float = 1.0):
    """Run Python's cyclic garbage collector only on the GUI thread (once per process).

    Automatic collection may start in any thread; when it frees a cycle that holds Qt
    objects (a closed dialog, a lambda connected to a widget), their C++ destructors
    then run off the GUI thread and crash.  pyqtgraph's GarbageCollector disables the
    automatic collector and collects from a GUI-thread timer instead."""
    global _GC
    if _GC is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        _GC = GarbageCollector(interval=interval_s)
    return _GC


class Dispatcher(QObject):
    """Runs callables posted from any thread on the GUI thread (polled every ``interval_ms``)."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = 8):
        super().__init__(parent)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.drain)
        self._timer.start()

    def post(self, fn: Callable, *args) -> None:
        """Thread-safe: queue ``fn(*args)`` for the GUI thread."""
        self._q.put((fn, args))

    def drain(self) -> int:
        """Run everything queued so far (GUI thread); returns how many calls ran."""
        n = 0
        while True:
            try:
                fn, args = self._q.get_nowait()
            except queue.Empty:
                return n
            n += 1
            try:
                fn(*args)
            except Exception:  # a view's bug must not stop the queue
                traceback.print_exc()


class PreviewBridge(QObject):
    """A :class:`RenderService` (newest request wins) whose results arrive as signals."""

    frameReady = Signal(object)            # RenderResult
    thumbnailReady = Signal(str, object)   # node name, uint8 [H, W, 3]

    def __init__(self, G, hierarchy, dispatcher: Dispatcher, parent: QObject | None = None,
                 thumbnails: bool = True):
        super().__init__(parent)
        post = dispatcher.post
        self.service = RenderService(G, hierarchy, on_result=lambda r: post(self._deliver_frame, r),
                                     on_thumbnail=(lambda n, img: post(self._deliver_thumb, n, img))
                                     if thumbnails else None)

    def _deliver_frame(self, result) -> None:
        if not self.service.closed:
            self.frameReady.emit(result)

    def _deliver_thumb(self, name: str, img) -> None:
        if not self.service.closed:
            self.thumbnailReady.emit(name, img)

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

    def __init__(self, fn: Callable[..., Any], dispatcher: Dispatcher, name: str = "job",
                 parent: QObject | None = None):
        super().__init__(parent)
        self.fn, self.name = fn, name
        self._post = dispatcher.post
        self.token = CancelToken()
        self._thread: threading.Thread | None = None
        self.result: Any = None
        self.error: str | None = None
        self._first: tuple[int, float] | None = None     # (step, time) of the first progress report

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

    def _report(self, step: int, total: int, info=None) -> None:
        """Progress in the core's forms: ``(step, total, {metrics})`` or ``(done, total, "stage")``.

        Adds ``eta_s`` (seconds left at the rate seen since the first report) once a few steps
        have passed; the rate is measured, so the estimate is honest on a busy machine."""
        info = dict(info) if isinstance(info, dict) else ({"stage": str(info)} if info else {})
        now = time.monotonic()
        if self._first is None or step < self._first[0]:
            self._first = (step, now)
        s0, t0 = self._first
        if total > 0 and step > s0 and now - t0 > 0.5:
            info.setdefault("eta_s", (now - t0) / (step - s0) * max(0, total - step))
        self._post(self._emit, "progress", int(step), int(total), info)

    def _emit(self, which: str, *args) -> None:   # GUI thread
        getattr(self, which).emit(*args)

    def _run(self) -> None:
        try:
            out = self.fn(self._report, self.token)
            if inspect.isgenerator(out):
                last = None
                for item in out:
                    if self.token.requested:
                        raise Cancelled(f"{self.name} cancelled")
                    last = item
                    self._post(self._emit, "partial", item)
                out = last
            if self.token.requested:
                raise Cancelled(f"{self.name} cancelled")
            self.result = out
            self._post(self._emit, "done", out)
        except Cancelled:
            self._post(self._emit, "cancelled")
        except Exception as e:  # reported to the user, never raised into Qt
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
            traceback.print_exc()
            self._post(self._emit, "failed", self.error)
        finally:
            self._post(self._emit, "finished")
