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

Large models on the CPU (a 1024 px FFHQ frame takes seconds) render progressively:
the service first delivers a *draft* (``RenderResult.draft``), the same fused code
synthesised only up to ``draft_resolution`` (256 px by default, about a quarter of the
cost: ``Generator.synthesis(max_resolution=...)``), then the full frame unless a newer
request is already waiting.  A draft is the skip branch's image before the finer toRGB
layers add theirs, which is close to the frame only where those layers add detail and
not colour; so the first frame is rendered both ways, and drafts stay off for a model
whose draft scores below ``draft_min_psnr`` against its frame, area-downsampled (20 dB;
the toy generators' 32 px drafts score 15-20 dB and would be refused).  Node
thumbnails are synthesised at ``thumbnail_resolution`` (128 px: they are drawn smaller
than that; checked the same way), so re-rolling every node of a 1024 px model costs 11
small syntheses, not 11 full ones.  On a CPU with native bf16 (AVX512-BF16 / AMX) the
drafts and small thumbnails are synthesised under bf16 autocast (about twice as fast
again); full frames stay float32.
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

from ..model.device import bf16_is_fast
from .composition import Composition
from ..images.imageio import to_uint8
from ..model.style_code import StyleCode

__all__ = ["RenderOptions", "RenderRequest", "RenderResult", "RenderService", "render_request", "fuse_composition",
           "CodeCache", "default_draft_resolution", "draft_psnr", "THUMBNAIL_RESOLUTION", "DRAFT_MIN_PSNR"]

#: Node thumbnails are synthesised at most this large (the app draws them at <= 96 px).
THUMBNAIL_RESOLUTION = 128
#: Largest model that the CPU preview renders without a draft first.
_DRAFT_ABOVE = 256
#: A draft must match the area-downsampled full frame this well (PSNR, dB) to be shown.
DRAFT_MIN_PSNR = 20.0

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
    render_ms: float               # from the start of this request's render to this image
    error_text: str | None = None
    recomputed_nodes: tuple[str, ...] = ()
    hierarchy_used: bool = False
    note: str = ""
    draft: bool = False            # a low-resolution image of the same code; the full frame follows
    full_size: int | None = None   # the model's output size (a draft is smaller: show it this large)

    @property
    def ok(self) -> bool:
        return self.error_text is None

    @property
    def order(self) -> tuple[int, int]:
        """Delivery order: by stamp, and a stamp's full frame after its draft."""
        return (self.stamp, 0 if self.draft else 1)


def default_draft_resolution(G) -> int | None:
    """The preview's draft size for ``G``: 256 px for models larger than that on the CPU, else None
    (on a GPU the full frame is fast enough; ``bench/draft_synthesis.py``)."""
    if G.size > _DRAFT_ABOVE and G.device.type == "cpu":
        return _DRAFT_ABOVE
    return None


@torch.no_grad()
def draft_psnr(full: torch.Tensor, draft: torch.Tensor) -> float:
    """PSNR (dB, images in [-1, 1]) of a draft against the full image area-downsampled to its size."""
    ref = torch.nn.functional.interpolate(full.float(), size=draft.shape[-2:], mode="area")
    mse = ((ref - draft.float()) / 2).pow(2).mean().item()
    return float("inf") if mse == 0 else -10.0 * float(np.log10(mse))


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
def fuse_composition(G, hierarchy, comp: Composition, cache: CodeCache | None = None):
    """Every node's code fused by the hierarchy (Sec. 4.5; collapsed nodes bypass).

    Returns ``(fused StyleCode, recomputed nets, hierarchy_used, note)``."""
    get = (lambda n: cache.get(comp, n, G)) if cache is not None else (lambda n: comp.code_for(n, G))
    if hierarchy is None:
        return get(comp.tree.name), (), False, NO_HIERARCHY_NOTE
    collapsed = comp.collapsed_nodes()
    need = hierarchy.required_codes(collapsed)
    missing = [n for n in need if n not in comp.nodes]
    if missing:
        raise ValueError(f"the hierarchy needs codes for {missing}, which the composition's tree lacks")
    fused = hierarchy({n: get(n) for n in need}, collapsed)
    return fused, tuple(hierarchy.last_recomputed), True, ""


@torch.no_grad()
def render_request(G, hierarchy, request: RenderRequest, cache: CodeCache | None = None,
                   max_resolution: int | None = None) -> RenderResult:
    """Render one request synchronously (at most ``max_resolution`` px: a draft).  Raises on errors
    (the service captures them)."""
    t0 = time.perf_counter()
    fused, recomputed, used, note = fuse_composition(G, hierarchy, request.composition, cache)
    img = to_uint8(G.synthesis(fused, noise_mode=request.options.noise_mode, max_resolution=max_resolution))[0]
    draft = max_resolution is not None and max_resolution < G.size
    return RenderResult(request.stamp, img, (time.perf_counter() - t0) * 1000.0, None, recomputed, used, note,
                        draft=draft, full_size=G.size)


def private_hierarchy(hierarchy):
    """A copy of ``hierarchy`` for a job on another thread (the hierarchy caches per-net outputs, so the
    render worker's copy must not be shared)."""
    import copy

    return copy.deepcopy(hierarchy) if hierarchy is not None else None


@torch.no_grad()
def render_once(G, hierarchy, comp: Composition) -> np.ndarray:
    """One full-size frame of ``comp`` on a private copy of the hierarchy (safe from any thread):
    uint8 ``[H, W, 3]``."""
    return render_request(G, private_hierarchy(hierarchy), RenderRequest(comp, 0)).image


@torch.no_grad()
def composition_labels(G, hierarchy, region_model, comp: Composition) -> np.ndarray:
    """The region label of every pixel of ``comp``'s image (Sec. 4.2's masks on the fused S code),
    computed on a private copy of the hierarchy: int ``[H, W]``."""
    fused = fuse_composition(G, private_hierarchy(hierarchy), comp, CodeCache())[0]
    return region_model.hard_labels(fused)[0].cpu().numpy()


class RenderService:
    """One worker thread rendering the newest submitted composition."""

    def __init__(self, G, hierarchy=None, on_result: Callable[[RenderResult], None] | None = None,
                 render_fn: Callable[[RenderRequest], RenderResult] | None = None, threads: int | None = None,
                 on_thumbnail: Callable[[str, np.ndarray], None] | None = None,
                 draft_resolution: int | None | str = "auto",
                 thumbnail_resolution: int | None = THUMBNAIL_RESOLUTION,
                 draft_min_psnr: float | None = DRAFT_MIN_PSNR,
                 draft_bf16: bool | None = None):
        """``draft_resolution``: "auto" (:func:`default_draft_resolution`), None (never) or a size in
        px; drafts are only made by the built-in renderer, not by a custom ``render_fn``.
        ``draft_min_psnr``: how close (dB) the first frame's draft must come to the frame for drafts
        to be shown (None: no check).
        ``thumbnail_resolution``: the largest thumbnail synthesised (None: full size).
        ``draft_bf16``: synthesise drafts and small thumbnails under bf16 autocast (default: on a CPU
        where bf16 is native, :func:`sfeditor.model.device.bf16_is_fast`)."""
        self.G, self.hierarchy = G, hierarchy
        if draft_resolution == "auto":
            draft_resolution = default_draft_resolution(G)
        for what, r in (("draft_resolution", draft_resolution), ("thumbnail_resolution", thumbnail_resolution)):
            if r is not None and (not isinstance(r, int) or r < 4 or r & (r - 1)):
                raise ValueError(f"{what} must be None or a power of two >= 4, got {r!r}")
        self.draft_resolution = draft_resolution if draft_resolution and draft_resolution < G.size else None
        self.draft_min_psnr = draft_min_psnr
        self.thumbnail_resolution = thumbnail_resolution
        self.draft_bf16 = (G.device.type == "cpu" and bf16_is_fast(G.device)) if draft_bf16 is None \
            else bool(draft_bf16)
        #: resolution -> PSNR (dB) of the first frame's low-resolution image against the frame
        self.fidelity: dict[int, float] = {}
        self._to_check = sorted({r for r in (self.draft_resolution, thumbnail_resolution, _DRAFT_ABOVE)
                                 if r is not None and r < G.size}) if draft_min_psnr is not None else []
        self.on_result = on_result
        self.on_thumbnail = on_thumbnail
        self._thumbs: OrderedDict = OrderedDict()     # code key -> (tensor kept alive, uint8 image)
        self._shown: dict[str, np.ndarray] = {}       # node -> the thumbnail last handed to on_thumbnail
        self._cache = CodeCache()
        self._render_fn = render_fn
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
        self.drafts = 0            # drafts delivered
        self.finals_skipped = 0    # full frames not rendered because a newer request came after the draft
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
            try:
                result = self._render(req)
                if result is not None and self.on_thumbnail is not None and result.ok:
                    self._thumbnails(req)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _render(self, req: RenderRequest) -> RenderResult | None:
        """Render and deliver ``req`` (its draft first, when drafts are on); returns the last result
        delivered, None when the full frame was skipped for a newer request."""
        t0 = time.perf_counter()

        def failed() -> RenderResult:
            return RenderResult(req.stamp, None, (time.perf_counter() - t0) * 1000.0, traceback.format_exc())

        if self._render_fn is not None:
            try:
                result = self._render_fn(req)
            except Exception:
                result = failed()
            self._deliver(result)
            return result
        try:
            with torch.no_grad():
                fused, recomputed, used, note = fuse_composition(self.G, self.hierarchy, req.composition,
                                                                 self._cache)

                def synth(max_resolution: int | None = None) -> torch.Tensor:
                    return self._synthesis(fused, req.options.noise_mode, max_resolution)

                def result_of(x: torch.Tensor, draft: bool = False) -> RenderResult:
                    return RenderResult(req.stamp, to_uint8(x)[0], (time.perf_counter() - t0) * 1000.0, None,
                                        recomputed, used, note, draft=draft, full_size=self.G.size)

                if self.drafts_ok:
                    self._deliver(result_of(synth(self.draft_resolution), draft=True))
                    if self._newer_pending():
                        with self._cv:
                            self.finals_skipped += 1
                        return None
                full = synth()
                result = result_of(full)
        except Exception:
            result = failed()
        self._deliver(result)
        if result.ok and self._to_check:
            # are this model's low-resolution images close to its frame? (once, after its first frame)
            try:
                with torch.no_grad():
                    self.fidelity = {r: draft_psnr(full, synth(r)) for r in self._to_check}
            except Exception:
                traceback.print_exc()
            self._to_check = []
        return result

    def _synthesis(self, code: StyleCode, noise_mode: str, max_resolution: int | None) -> torch.Tensor:
        """The full image in float32; a smaller one under bf16 autocast when ``draft_bf16``."""
        small = max_resolution is not None and max_resolution < self.G.size
        with torch.autocast(self.G.device.type, dtype=torch.bfloat16, enabled=small and self.draft_bf16):
            return self.G.synthesis(code, noise_mode=noise_mode, max_resolution=max_resolution)

    def low_resolution_ok(self, r: int | None) -> bool | None:
        """May an image of at most ``r`` px stand in for this model's frame?  True for the full size,
        or when no check was asked for; None until the first frame has been checked."""
        if r is None or r >= self.G.size or self.draft_min_psnr is None:
            return True
        if r not in self.fidelity:
            return None
        return self.fidelity[r] >= self.draft_min_psnr

    @property
    def drafts_ok(self) -> bool | None:
        """Whether frames get a draft first: None while unchecked, False without drafts."""
        return False if self.draft_resolution is None else self.low_resolution_ok(self.draft_resolution)

    @property
    def draft_note(self) -> str:
        """One line on the drafts for a status bar ("" when there is nothing to say)."""
        if self.draft_resolution is None or self.draft_resolution not in self.fidelity:
            return ""
        verdict = "shown before each frame" if self.drafts_ok else "off: too far from the frame"
        return (f"{self.draft_resolution} px drafts {verdict} (first frame's draft "
                f"{self.fidelity[self.draft_resolution]:.1f} dB against it; needs {self.draft_min_psnr:.0f})")

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
                        r = self.thumbnail_resolution if self.low_resolution_ok(self.thumbnail_resolution) else None
                        img = to_uint8(self._synthesis(code, "const", r))[0]
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
            if result.draft:
                self.drafts += 1
            else:
                self.renders += 1
            fresh = self.latest is None or result.order > self.latest.order
            if fresh:
                self.latest = result
            else:
                self.stale += 1
        try:
            if fresh and self.on_result is not None and not self._closed:
                self.on_result(result)
        except Exception:
            traceback.print_exc()      # an observer's bug must not kill the worker
