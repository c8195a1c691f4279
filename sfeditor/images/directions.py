"""Latent directions in W for editing (paper Sec. 6.1, Fig. 14).

* GANSpace-style: principal components of sampled w (:func:`pca_directions`),
  cached per generator fingerprint as an ``.npz`` (written atomically, read
  with ``allow_pickle=False``; a bad cache file is recomputed).
* InterFaceGAN-style direction files: ``.npy`` arrays of shape ``[w_dim]``,
  ``[1, w_dim]`` (how InterFaceGAN stores its boundaries) or
  ``[n_latent, w_dim]`` (one direction per w+ entry), read with
  ``np.load(allow_pickle=False)`` and validated (:func:`load_direction`).
* :func:`apply_direction` moves a w / w+ along a direction, optionally only
  in some w+ entries (GANSpace's layer ranges).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_bytes

__all__ = ["DirectionError", "PCADirections", "pca_directions", "load_direction", "validate_direction",
           "apply_direction", "save_direction", "default_directions_cache", "parse_layers"]

PCA_FORMAT = "sfeditor-pca-directions/1"


class DirectionError(ValueError):
    """A direction file or array that cannot be used; the message says why."""


def default_directions_cache() -> Path:
    base = os.environ.get("SFEDITOR_CACHE")
    if base:
        return Path(base) / "directions"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sfeditor" / "directions"


# ------------------------------------------------------------------ PCA
@dataclass
class PCADirections:
    """Principal directions of w: ``components`` ``[k, w_dim]`` (orthonormal rows, by decreasing
    variance), ``mean`` ``[w_dim]``, ``stdev`` ``[k]`` (spread of w along each component)."""

    components: np.ndarray
    mean: np.ndarray
    stdev: np.ndarray
    explained_variance_ratio: np.ndarray
    fingerprint: str
    n_samples: int
    seed: int
    truncation: float
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.components.shape[0])

    def direction(self, index: int, scaled: bool = True) -> np.ndarray:
        """Component ``index`` as a ``[w_dim]`` direction; ``scaled`` multiplies it by its standard
        deviation, so that strength 1 is one standard deviation of w along it."""
        if not 0 <= index < len(self):
            raise IndexError(f"component {index} out of range (0..{len(self) - 1})")
        d = self.components[index]
        return (d * self.stdev[index]).astype(np.float32) if scaled else d.astype(np.float32)


def _pca_key(fingerprint: str, n_components: int, n_samples: int, seed: int, truncation: float) -> str:
    spec = json.dumps({"fp": fingerprint, "k": n_components, "n": n_samples, "seed": seed,
                       "psi": float(truncation), "format": PCA_FORMAT}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:32]


def pca_directions(G, n_components: int = 32, n_samples: int = 20_000, seed: int = 0, truncation: float = 1.0,
                   cache_dir: str | os.PathLike | None | bool = None, batch: int = 4096, *,
                   progress=None, cancel=None) -> PCADirections:
    """PCA of ``n_samples`` mapped w (scikit-learn), cached per generator fingerprint.

    ``cache_dir=False`` disables the cache; ``None`` uses ``~/.cache/sfeditor/directions``.
    ``progress(step, total, stage)`` is called after each sampled chunk and after the fit;
    ``cancel`` (a token with ``requested``) stops it between chunks (:class:`sfeditor.jobs.Cancelled`).
    """
    from ..jobs import check_cancel
    from ..model.identity import generator_fingerprint

    if n_components < 1 or n_components > G.style_dim:
        raise ValueError(f"n_components must be in 1..{G.style_dim}")
    if n_samples < n_components:
        raise ValueError("n_samples must be at least n_components")
    fp = generator_fingerprint(G)
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir not in (None, True) else default_directions_cache()
        path = folder / f"pca-{_pca_key(fp, n_components, n_samples, seed, truncation)}.npz"
        hit = _read_pca(path, fp, G.style_dim, n_components)
        if hit is not None:
            return hit
    from sklearn.decomposition import PCA

    gen = torch.Generator().manual_seed(int(seed))
    chunks = []
    n_chunks = -(-n_samples // batch)
    total = n_chunks + 1                       # the chunks, then the fit
    if progress is not None:
        progress(0, total, "sampling w")
    with torch.no_grad():
        for k, i in enumerate(range(0, n_samples, batch)):
            check_cancel(cancel, "GANSpace cancelled")
            chunks.append(G.sample_w(min(batch, n_samples - i), generator=gen, truncation=truncation)
                          .float().cpu().numpy())
            if progress is not None:
                progress(k + 1, total, "sampling w")
    check_cancel(cancel, "GANSpace cancelled")
    ws = np.concatenate(chunks).astype(np.float64)
    pca = PCA(n_components=n_components, svd_solver="full", random_state=seed).fit(ws)
    if progress is not None:
        progress(total, total, "PCA fitted")
    comp = pca.components_.astype(np.float32)
    # re-orthonormalise in float32 (QR keeps the order and the signs of the rows)
    q, r = np.linalg.qr(comp.T.astype(np.float64))
    comp = (q * np.sign(np.diag(r))[None, :]).T.astype(np.float32)
    out = PCADirections(comp, pca.mean_.astype(np.float32), np.sqrt(pca.explained_variance_).astype(np.float32),
                        pca.explained_variance_ratio_.astype(np.float32), fp, n_samples, seed, float(truncation))
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, format=np.array(PCA_FORMAT), fingerprint=np.array(fp), components=out.components,
                 mean=out.mean, stdev=out.stdev, explained_variance_ratio=out.explained_variance_ratio,
                 n_samples=np.array(n_samples), seed=np.array(seed), truncation=np.array(truncation))
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError:
            pass     # an unwritable cache only costs the recomputation next time
    return out


def _read_pca(path: Path, fp: str, w_dim: int, k: int) -> PCADirections | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != PCA_FORMAT or str(z["fingerprint"]) != fp:
                return None
            comp, mean, sd, evr = (np.asarray(z[n], dtype=np.float32) for n in
                                   ("components", "mean", "stdev", "explained_variance_ratio"))
            n, seed, psi = int(z["n_samples"]), int(z["seed"]), float(z["truncation"])
        if comp.shape != (k, w_dim) or mean.shape != (w_dim,) or sd.shape != (k,) or evr.shape != (k,):
            return None
        if not all(np.isfinite(a).all() for a in (comp, mean, sd, evr)):
            return None
        return PCADirections(comp, mean, sd, evr, fp, n, seed, psi, from_cache=True)
    except Exception:   # truncated / foreign / damaged cache file: recompute
        return None


# ------------------------------------------------------- direction files
def validate_direction(arr, w_dim: int, n_latent: int | None = None, name: str = "direction") -> np.ndarray:
    """Check a direction array; returns float32 ``[w_dim]`` or ``[n_latent, w_dim]``."""
    a = np.asarray(arr) if not isinstance(arr, torch.Tensor) else arr.detach().cpu().numpy()
    if a.dtype.kind not in "fiu":
        raise DirectionError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if a.dtype.kind != "f":
        raise DirectionError(f"{name}: expected floating-point values, got dtype {a.dtype}")
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]                                  # InterFaceGAN boundary [1, w_dim]
    if a.ndim == 1:
        if a.shape[0] != w_dim:
            raise DirectionError(f"{name}: has {a.shape[0]} values, the generator's w has {w_dim}")
    elif a.ndim == 2:
        if a.shape[1] != w_dim:
            raise DirectionError(f"{name}: shape {a.shape}: the last axis must be the w size {w_dim}")
        if n_latent is not None and a.shape[0] != n_latent:
            raise DirectionError(f"{name}: shape {a.shape}: a per-layer direction needs {n_latent} rows "
                                 f"(the generator's w+ entries)")
    else:
        raise DirectionError(f"{name}: shape {a.shape}: expected [{w_dim}], [1, {w_dim}] or "
                             f"[{n_latent if n_latent is not None else 'n_latent'}, {w_dim}]")
    if a.size == 0:
        raise DirectionError(f"{name}: empty array")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise DirectionError(f"{name}: holds NaN or infinite values")
    if not np.any(a):
        raise DirectionError(f"{name}: all values are zero (no direction)")
    return a


def _check_npy_header(p: Path) -> None:
    """The shape an ``.npy`` header declares must fit in the file, before NumPy allocates it."""
    from numpy.lib import format as npf

    try:
        with open(p, "rb") as f:
            version = npf.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npf.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = npf.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError, RecursionError) as e:
        raise DirectionError(f"{p}: not a readable .npy array ({str(e).splitlines()[0][:200] if str(e) else e})") \
            from None
    if dtype.hasobject:
        raise DirectionError(f"{p}: the file holds pickled Python objects, which are not loaded for safety; "
                             "save the direction as a plain numeric array (np.save)")
    need = int(np.prod([int(s) for s in shape], dtype=object)) * dtype.itemsize
    have = p.stat().st_size - offset
    if need != have:
        raise DirectionError(f"{p}: the header declares shape {tuple(shape)} ({need} bytes) but the file holds "
                             f"{have} bytes of data")


def load_direction(path: str | os.PathLike, G=None, *, w_dim: int | None = None, n_latent: int | None = None,
                   normalize: bool = False) -> np.ndarray:
    """Read a direction ``.npy`` (``allow_pickle=False``) and validate it against ``G`` (or the
    given sizes).  ``normalize`` scales it to unit length (per row for per-layer directions)."""
    p = Path(os.fspath(path))
    if G is not None:
        w_dim, n_latent = G.style_dim, G.n_latent
    if w_dim is None:
        raise ValueError("load_direction needs G or w_dim")
    if not p.is_file():
        raise FileNotFoundError(f"no direction file at {p}")
    if p.stat().st_size > 64 * 2 ** 20:
        raise DirectionError(f"{p}: {p.stat().st_size / 2**20:.0f} MiB is far too large for a direction")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK\x03\x04"):
        raise DirectionError(f"{p}: an .npz archive; save one direction as .npy (np.save)")
    if magic != b"\x93NUMPY":
        raise DirectionError(f"{p}: not a readable .npy array (no NumPy header)")
    _check_npy_header(p)
    try:
        a = np.load(p, allow_pickle=False)
    except ValueError as e:
        msg = str(e)
        if "pickle" in msg.lower():
            raise DirectionError(f"{p}: the file holds pickled Python objects, which are not loaded for safety; "
                                 "save the direction as a plain numeric array (np.save)") from None
        raise DirectionError(f"{p}: not a readable .npy array ({msg.splitlines()[0][:200]})") from None
    except (OSError, EOFError) as e:
        raise DirectionError(f"{p}: not a readable .npy array ({e})") from None
    a = validate_direction(a, w_dim, n_latent, name=str(p))
    if normalize:
        norm = np.linalg.norm(a, axis=-1, keepdims=True)
        if np.any(norm == 0):
            raise DirectionError(f"{p}: a row of the per-layer direction is zero; cannot normalise")
        a = a / norm
    return a.astype(np.float32)


def save_direction(path: str | os.PathLike, direction) -> None:
    """Write a direction as a plain ``.npy`` (atomically)."""
    a = np.asarray(direction if not isinstance(direction, torch.Tensor) else direction.detach().cpu().numpy(),
                   dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


# -------------------------------------------------------------- applying
def parse_layers(text: str | None, n_latent: int) -> list[int] | None:
    """'0-5,8' -> [0, 1, 2, 3, 4, 5, 8] (w+ entries); None / '' / 'all' -> None (every entry)."""
    if text is None or text.strip() in ("", "all"):
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"bad layer list {text!r}: use e.g. '0-5,8'") from None
    bad = [i for i in out if not 0 <= i < n_latent]
    if bad:
        raise ValueError(f"layers {bad} out of range: the generator has w+ entries 0..{n_latent - 1}")
    return sorted(set(out))


def apply_direction(G, w_plus: torch.Tensor, direction, strength: float,
                    layers: Sequence[int] | Iterable[int] | None = None) -> torch.Tensor:
    """``w_plus + strength * direction`` (a new tensor).

    ``w_plus``: ``[B, n_latent, w_dim]`` (or ``[B, w_dim]``, turned into w+ when the direction is
    per-layer or ``layers`` is given).  ``direction``: ``[w_dim]`` (same step for every entry) or
    ``[n_latent, w_dim]``.  ``layers``: the w+ entries to move (default: all).
    """
    if not isinstance(w_plus, torch.Tensor):
        raise TypeError("w_plus must be a tensor")
    d = validate_direction(direction, G.style_dim, G.n_latent)
    d_t = torch.as_tensor(d, dtype=w_plus.dtype, device=w_plus.device)
    layer_list = None if layers is None else sorted(set(int(i) for i in layers))
    if layer_list is not None:
        bad = [i for i in layer_list if not 0 <= i < G.n_latent]
        if bad:
            raise ValueError(f"layers {bad} out of range 0..{G.n_latent - 1}")
    w = w_plus
    if w.ndim == 2:
        if w.shape[1] != G.style_dim:
            raise ValueError(f"w must be [B, {G.style_dim}], got {tuple(w.shape)}")
        if d_t.ndim == 1 and layer_list is None:
            return w + float(strength) * d_t
        w = w[:, None, :].expand(-1, G.n_latent, -1)
    if w.ndim != 3 or w.shape[1:] != (G.n_latent, G.style_dim):
        raise ValueError(f"w+ must be [B, {G.n_latent}, {G.style_dim}], got {tuple(w_plus.shape)}")
    step = d_t if d_t.ndim == 2 else d_t[None].expand(G.n_latent, -1)
    if layer_list is not None:
        mask = torch.zeros(G.n_latent, 1, dtype=w.dtype, device=w.device)
        mask[layer_list] = 1
        step = step * mask
    return w + float(strength) * step[None]
