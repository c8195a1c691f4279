"""Shared helpers for the procedural toy renderers.

Everything here is vectorised over a batch of images: per-image parameters are
arrays of shape ``[N, 1, 1]`` and pixel quantities broadcast to ``[N, H, W]``.
Shapes are described by (approximate) signed distances in normalised image
coordinates (x, y in [-1, 1], y pointing down) and composited back to front
with analytic anti-aliasing: the coverage of a pixel is derived from the signed
distance at its centre, and the label of a pixel is the label of the topmost
labelled layer whose coverage exceeds one half (i.e. whose distance is < 0).
"""
from __future__ import annotations

import zlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = (np.uint64(k) for k in (30, 27, 31, 11))

F32 = np.float32


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def as_seeds(seeds) -> np.ndarray:
    """Validate seeds and return them as a 1-D uint64 array."""
    arr = np.asarray(seeds)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"seeds must be a 1-D sequence of integers, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"seeds must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64).astype(np.uint64)


def uniform01(seeds_u64: np.ndarray, key: int) -> np.ndarray:
    """Counter-based uniforms in [0, 1): a hash of (seed, key), float64 [N]."""
    k = _mix64(np.full(1, key, dtype=np.uint64) * _GOLDEN + _GOLDEN)
    z = _mix64(_mix64(seeds_u64 ^ k) + k)
    return (z >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


class Sampler:
    """Draws named per-image parameters, deterministic in (domain, seed, name).

    Each parameter depends only on its own name and the image's seed, so the
    images never depend on batch composition or on the order of draws.
    """

    def __init__(self, seeds_u64: np.ndarray, salt: str, donor=None):
        self.seeds = seeds_u64
        self.salt = salt
        self.params: dict[str, np.ndarray] = {}
        # donor = (seeds [N], take(name) -> bool): the named parameters for which ``take`` is true are
        # drawn from the donor's seeds instead (a region swap: image A with region R of image B)
        self.donor = donor

    def _raw(self, name: str) -> np.ndarray:
        key = zlib.crc32(f"{self.salt}/{name}".encode())
        seeds = self.seeds
        if self.donor is not None and self.donor[1](name):
            seeds = self.donor[0]
        return uniform01(seeds, key)

    def u(self, name: str, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        """Uniform in [lo, hi); returned as float32 [N, 1, 1]."""
        v = (lo + (hi - lo) * self._raw(name)).astype(F32)
        self.params[name] = v
        return v[:, None, None]

    def choice(self, name: str, weights) -> np.ndarray:
        """Categorical index (int [N]) with the given relative weights."""
        w = np.asarray(weights, dtype=np.float64)
        edges = np.cumsum(w) / w.sum()
        idx = np.searchsorted(edges, self._raw(name), side="right")
        idx = np.minimum(idx, len(w) - 1)
        self.params[name] = idx.astype(F32)
        return idx

    def flag(self, name: str, p: float) -> np.ndarray:
        """Bernoulli(p) as float32 [N, 1, 1] of 0/1."""
        v = (self._raw(name) < p).astype(F32)
        self.params[name] = v
        return v[:, None, None]

    def color(self, name: str, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        """Random RGB colour, float32 [N, 1, 1, 3]."""
        ch = [self.u(f"{name}_{c}", lo, hi) for c in "rgb"]
        return np.stack(ch, axis=-1)


def pick(palette, idx: np.ndarray) -> np.ndarray:
    """Palette rows (RGB in [0, 1]) for integer indices -> float32 [N, 1, 1, 3]."""
    return np.asarray(palette, dtype=F32)[idx][:, None, None, :]


def col(c: np.ndarray) -> np.ndarray:
    """Append a channel axis to a [N, 1, 1] factor so it scales colours."""
    return c[..., None]


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x [1, 1, S] and y [1, S, 1] in [-1, 1]."""
    if size not in _GRIDS:
        t = ((np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0).astype(F32)
        _GRIDS[size] = (t[None, None, :], t[None, :, None])
    return _GRIDS[size]


def validate_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer power of two >= 16, got {size!r}")
    size = int(size)
    if size < 16 or size > 4096 or size & (size - 1):
        raise ValueError(f"size must be a power of two between 16 and 4096, got {size}")
    return size


# ---------------------------------------------------------------- distances

def circle(u, v, r):
    return np.sqrt(u * u + v * v) - r


def ellipse(u, v, a, b, with_radius: bool = False):
    """Approximate signed distance to an axis-aligned ellipse (semi-axes a, b).

    With ``with_radius`` also returns the normalised radius (0 at the centre,
    1 on the boundary), handy for shading.
    """
    ua = u / a
    vb = v / b
    k0 = np.sqrt(ua * ua + vb * vb)
    ua /= a
    vb /= b
    k1 = np.sqrt(ua * ua + vb * vb)
    k1 += 1e-6
    d = k0 - 1.0
    d *= k0
    d /= k1
    if with_radius:
        return d, k0
    return d


def box(u, v, hw, hh, r=0.0):
    """Signed distance to a rounded box centred at the origin."""
    qx = np.abs(u) - (hw - r)
    qy = np.abs(v) - (hh - r)
    ox = np.maximum(qx, 0.0)
    oy = np.maximum(qy, 0.0)
    out = np.sqrt(ox * ox + oy * oy)
    out += np.minimum(np.maximum(qx, qy), 0.0)
    out -= r
    return out


def smin(a, b, k):
    """Polynomial smooth minimum (smooth union) with blend radius k."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def union(*ds):
    out = ds[0]
    for d in ds[1:]:
        out = np.minimum(out, d)
    return out


def inter(*ds):
    out = ds[0]
    for d in ds[1:]:
        out = np.maximum(out, d)
    return out


def sat(x):
    return np.clip(x, 0.0, 1.0)


def fill_masked(n: int, shape, groups, default: float = 1.0) -> np.ndarray:
    """Evaluate different distance functions on subsets of the batch.

    ``groups`` is a list of (bool mask [N], fn) where fn(mask) returns the
    distances for those images; images not covered get ``default`` (far away).
    """
    out = np.full((n,) + tuple(shape), default, dtype=F32)
    for m, fn in groups:
        if m.any():
            out[m] = fn(m)
    return out


class Canvas:
    """RGB float canvas plus label map, composited back to front."""

    def __init__(self, n: int, size: int, base=None, label: int = 0):
        self.n = n
        self.size = size
        self.inv_pw = size / 2.0  # 1 / pixel width in normalised units
        if base is None:
            self.img = np.zeros((n, size, size, 3), dtype=F32)
        else:
            self.img = np.empty((n, size, size, 3), dtype=F32)
            self.img[...] = base
        self.lab = np.full((n, size, size), label, dtype=np.uint8)
        self.offset = None
        self.base_img, self.base_lab = self.img, self.lab

    def window(self, r0: int, r1: int, c0: int, c1: int) -> "Canvas":
        """A canvas sharing memory with rows r0:r1 and columns c0:c1 of this one."""
        w = Canvas.__new__(Canvas)
        w.n, w.size, w.inv_pw = self.n, self.size, self.inv_pw
        w.img = self.img[:, r0:r1, c0:c1]
        w.lab = self.lab[:, r0:r1, c0:c1]
        w.offset = (r0, c0)
        w.base_img, w.base_lab = self.img, self.lab
        return w

    def coverage(self, d, soft: float = 1.0):
        a = np.asarray(d, dtype=F32) * F32(-self.inv_pw / soft)
        a += 0.5
        np.clip(a, 0.0, 1.0, out=a)
        return a

    def paint(self, d, color, label: int | None = None, opacity=None, soft: float = 1.0,
              shade=None):
        """Composite a shape of signed distance ``d`` with ``color`` (times ``shade``).

        ``color`` broadcasts to [N,H,W,3]; ``shade`` (optional) to [N,H,W].
        ``opacity`` (scalar or broadcastable to [N,H,W]) scales coverage; a
        labelled layer must keep opacity >= 0.5 so the label stays faithful.
        """
        full = self.img.shape[:3]
        d = np.broadcast_to(d, full)
        a = self.coverage(d, soft)
        if opacity is not None:
            a *= opacity
        idx = np.flatnonzero(a)
        if idx.size == 0:
            return
        if idx.size > 0.35 * a.size:  # large layer: dense blend
            if shade is not None:
                color = color * np.asarray(shade, dtype=F32)[..., None]
            diff = np.subtract(color, self.img, dtype=F32)
            diff *= a[..., None]
            self.img += diff
            if label is not None:
                self.lab[d < 0] = label
            return
        # small layer: blend only the covered pixels
        _, h, w = full
        nn, rem = np.divmod(idx, h * w)
        rr, cc = np.divmod(rem, w)
        c = np.broadcast_to(np.asarray(color, dtype=F32), full + (3,))[nn, rr, cc]
        if shade is not None:
            c = c * np.broadcast_to(np.asarray(shade, dtype=F32), full)[nn, rr, cc][:, None]
        aw = a.reshape(-1)[idx]
        if self.offset is not None:  # map window indices to the parent canvas
            r0, c0 = self.offset
            gidx = (nn * self.size + rr + r0) * self.size + cc + c0
        else:
            gidx = idx
        img = self.base_img.reshape(-1, 3)
        px = img[gidx]
        px += (c - px) * aw[:, None]
        img[gidx] = px
        if label is not None:
            inside = d[nn, rr, cc] < 0
            self.base_lab.reshape(-1)[gidx[inside]] = label

    def to_uint8(self) -> np.ndarray:
        out = np.clip(self.img, 0.0, 1.0)
        out *= 255.0
        out += 0.5
        return out.astype(np.uint8)
