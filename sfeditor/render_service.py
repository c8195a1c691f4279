"""Qt-free background rendering of compositions: newest request wins.

:func:`render_request` is a pure function of an immutable :class:`RenderRequest`
(a composition snapshot, a stamp and options): it builds every node's code,
fuses them with the hierarchy (paper Sec. 4.5; collapsed nodes bypass) and
synthesises the image.  Without a hierarchy it shows the ROOT's own code and
says so (``RenderResult.hierarchy_used`` False, ``note`` set).

:class:`RenderService` runs it on one worker thread.  :meth:`RenderService.submit`
replaces any pending request (superseded requests are dropped, never rendered);
results carry the stamp, and a result older than the newest delivered one is
dropped.  Errors are captured into ``error_text``; the worker never raises.
``on_result`` is called on the worker thread (a Qt view should forward it
with a queued signal).  While the service runs, its worker owns the generator and
the hierarchy (their caches are not thread-safe): render elsewhere only while it
is idle (:meth:`RenderService.wait_until_idle`).
"""
from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .composition import Composition
from .imageio import to_uint8
from .style_code import StyleCode

__all__ = ["RenderOptions", "RenderRequest", "RenderResult", "RenderService", "render_request", "CodeCache"]

NO_HIERARCHY_NOTE = "no hierarchy loaded: showing the root node's own code, not a fusion"


@dataclass(frozen=True)
class RenderOptions:
    noise_mode: str = "const"


@dataclass(frozen=True)
class RenderRequest:
    composition: Composition      # a private snapshot: never modified after submission
    stamp: int
    options: RenderOptions = field(default_factory=RenderOptions)


@dataclass(frozen=True)
class RenderResult:
    stamp: int
    image: np.ndarray | None       # uint8 [H, W, 3]; None on error
    render_ms: float
    error_text: str | None = None
    recomputed_nodes: tuple[str, ...] = ()
    hierarchy_used: bool = False
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error_text is None


class CodeCache:
    """Node codes by (seed, truncation) or explicit-code tensor, so unchanged nodes keep the same
    StyleCode objects and the hierarchy's identity cache recomputes only the changed paths."""

    def __init__(self, size: int = 256):
        self.size = size
        self._d: OrderedDict = OrderedDict()

    @staticmethod
    def key(comp: Composition, name: str) -> tuple:
        """What a node's code depends on: its explicit code tensor, or (seed, truncation)."""
        st = comp.state(name)
        return ("code", id(st.code)) if st.code is not None else ("seed", st.seed, comp.truncation)

    def get(self, comp: Composition, name: str, G) -> StyleCode:
        st = comp.state(name)
        key = self.key(comp, name)
        hit = self._d.get(key)
        if hit is not None and (st.code is None or hit[0] is st.code):
            self._d.move_to_end(key)
            return hit[1]
        code = comp.code_for(name, G)
        self._d[key] = (st.code, code)       # the tensor is kept alive so its id cannot be reused
        while len(self._d) > self.size:
            self._d.popitem(last=False)
        return code


@torch.no_grad()
def render_request(G, hierarchy, request: RenderRequest, cache: CodeCache | None = None) -> RenderResult:
    """Render one request synchronously.  Raises on errors (the service captures them)."""
    t0 = time.perf_counter()
    comp = request.composition
    get = (lambda n: cache.get(comp, n, G)) if cache is not None else (lambda n: comp.code_for(n, G))
    root = comp.tree.name
    if hierarchy is None:
        fused, recomputed, used, note = get(root), (), False, NO_HIERARCHY_NOTE
    else:
        collapsed = comp.collapsed_nodes()
        need = hierarchy.required_codes(collapsed)
        missing = [n for n in need if n not in comp.nodes]
        if missing:
            raise ValueError(f"the hierarchy needs codes for {missing}, which the composition's tree lacks")
        fused = hierarchy({n: get(n) for n in need}, collapsed)
        recomputed, used, note = tuple(hierarchy.last_recomputed), True, ""
    img = to_uint8(G.synthesis(fused, noise_mode=request.options.noise_mode))[0]
    return RenderResult(request.stamp, img, (time.perf_counter() - t0) * 1000.0, None, recomputed, used, note)


class RenderService:
    """One worker thread rendering the newest submitted composition."""

    def __init__(self, G, hierarchy=None, on_result: Callable[[RenderResult], None] | None = None,
                 render_fn: Callable[[RenderRequest], RenderResult] | None = None, threads: int | None = None,
                 on_thumbnail: Callable[[str, np.ndarray], None] | None = None):
        self.G, self.hierarchy = G, hierarchy
        self.on_result = on_result
        self.on_thumbnail = on_thumbnail
        self._thumbs: OrderedDict = OrderedDict()     # code key -> (tensor kept alive, uint8 image)
        self._shown: dict[str, np.ndarray] = {}       # node -> the thumbnail last handed to on_thumbnail
        self._cache = CodeCache()
        self._render_fn = render_fn or (lambda req: render_request(self.G, self.hierarchy, req, self._cache))
        self._threads = threads
        self._stamps = itertools.count(1)
        self._cv = threading.Condition()
        self._pending: RenderRequest | None = None
        self._busy = False
        self._closed = False
        self.latest: RenderResult | None = None
        self.renders = 0           # requests actually rendered
        self.superseded = 0        # requests dropped before rendering
        self.stale = 0             # results dropped because a newer one was delivered
        self._thread = threading.Thread(target=self._run, name="sfeditor-render", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ main thread
    def submit(self, composition: Composition, options: RenderOptions | None = None) -> int:
        """Queue a render of a snapshot of ``composition``; returns its stamp."""
        req = RenderRequest(composition.snapshot(), next(self._stamps), options or RenderOptions())
        with self._cv:
            if self._closed:
                raise RuntimeError("render service is closed")
            if self._pending is not None:
                self.superseded += 1
            self._pending = req
            self._cv.notify_all()
        return req.stamp

    def wait_until_idle(self, timeout: float | None = 30.0) -> bool:
        """Block until nothing is pending or rendering; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Drop pending work, let a running render finish, stop the thread.  Idempotent."""
        with self._cv:
            self._closed = True
            if self._pending is not None:
                self.superseded += 1
            self._pending = None
            self._cv.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "RenderService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- worker
    def _run(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    self._cv.notify_all()
                    return
                req, self._pending, self._busy = self._pending, None, True
            t0 = time.perf_counter()
            try:
                result = self._render_fn(req)
            except Exception:
                result = RenderResult(req.stamp, None, (time.perf_counter() - t0) * 1000.0,
                                      traceback.format_exc())
            try:
                self._deliver(result)
                if self.on_thumbnail is not None and result.ok:
                    self._thumbnails(req)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _newer_pending(self) -> bool:
        with self._cv:
            return self._pending is not None or self._closed

    def _thumbnails(self, req: RenderRequest) -> None:
        """After the frame: each node's own image (its code alone), cached by code, cheapest first to
        be pre-empted: a newer request stops the loop (the next frame resumes it)."""
        comp = req.composition
        for name in comp.node_names:
            if self._newer_pending():
                return
            key = CodeCache.key(comp, name)
            hit = self._thumbs.get(key)
            if hit is None or (key[0] == "code" and hit[0] is not comp.state(name).code):
                try:
                    with torch.no_grad():
                        code = self._cache.get(comp, name, self.G)
                        img = to_uint8(self.G.synthesis(code, noise_mode="const"))[0]
                except Exception:
                    traceback.print_exc()
                    return
                hit = self._thumbs[key] = (comp.state(name).code, img)
                while len(self._thumbs) > 256:
                    self._thumbs.popitem(last=False)
            self._thumbs.move_to_end(key)
            if self._shown.get(name) is hit[1]:
                continue                      # the viewer already has this node's current thumbnail
            self._shown[name] = hit[1]
            try:
                self.on_thumbnail(name, hit[1])
            except Exception:
                traceback.print_exc()

    def _deliver(self, result: RenderResult) -> None:
        with self._cv:
            self.renders += 1
            fresh = self.latest is None or result.stamp > self.latest.stamp
            if fresh:
                self.latest = result
            else:
                self.stale += 1
        try:
            if fresh and self.on_result is not None and not self._closed:
                self.on_result(result)
        except Exception:
            traceback.print_exc()      # an observer's bug must not kill the worker
