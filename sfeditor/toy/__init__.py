"""Procedural toy domains with exact region labels.

``render(domain, seeds, size)`` draws images whose every pixel carries a region
label; each image depends only on its own integer seed.
"""
from __future__ import annotations

import numpy as np

from . import cars, faces
from ._common import as_seeds, validate_size

DOMAINS = ("toy-faces", "toy-cars")

_MODULES = {"toy-faces": faces, "toy-cars": cars}

#: Internal chunk size: keeps the working set cache-friendly.
_CHUNK = 64


def _module(domain: str):
    if domain not in _MODULES:
        raise ValueError(f"unknown toy domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return _MODULES[domain]


def region_names(domain: str) -> list[str]:
    """Region names of a domain; a label id is the index into this list."""
    return list(_module(domain).REGIONS)


def render(domain: str, seeds, size: int = 64, return_params: bool = False):
    """Render images and label maps for integer ``seeds``.

    Returns ``(images, labels)`` — uint8 ``[N, size, size, 3]`` RGB and uint8
    ``[N, size, size]`` region ids — plus a dict of per-image parameter arrays
    (float32 ``[N]``) when ``return_params`` is true. ``size`` must be a power
    of two >= 16.
    """
    mod = _module(domain)
    size = validate_size(size)
    s = as_seeds(seeds)
    n = len(s)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty((n, size, size), dtype=np.uint8)
    params: dict[str, list[np.ndarray]] = {}
    chunk = max(1, _CHUNK * 4096 // (size * size)) if size > 64 else _CHUNK
    for i in range(0, n, chunk):
        img, lab, prm = mod.render(s[i:i + chunk], size)
        images[i:i + chunk] = img
        labels[i:i + chunk] = lab
        if return_params:
            for k, val in prm.items():
                params.setdefault(k, []).append(val)
    if not return_params:
        return images, labels
    if n == 0:
        _, _, prm = mod.render(as_seeds([0]), 16)
        out = {k: np.zeros(0, dtype=np.float32) for k in prm}
    else:
        out = {k: np.concatenate(v) for k, v in params.items()}
    return images, labels, out


def param_group(domain: str, name: str) -> str:
    """The group ("global" or a region name) a sampled parameter belongs to; colours sample
    ``<name>_r/_g/_b``."""
    groups = _module(domain).PARAM_GROUPS
    for base in (name, name.rsplit("_", 1)[0] if name[-2:] in ("_r", "_g", "_b") else None):
        for group, names in groups.items():
            if base in names:
                return group
    raise KeyError(f"{domain}: parameter {name!r} belongs to no group")


def swap_groups(domain: str) -> list[str]:
    """The groups a swap can take from a donor: "global" and every region."""
    return ["global"] + region_names(domain)


def render_swap(domain: str, seeds, donor_seeds, groups, size: int = 64):
    """Image A (``seeds``) with the parameters of one group per image taken from image B
    (``donor_seeds``): ``groups[i]`` is "global" (pose and lighting) or a region name.

    The renderer's ground truth for a region-limited edit: what a generator whose style
    channels are region-local should produce when only one region's channels come from B.
    Returns ``(images, labels)`` like :func:`render`.
    """
    mod = _module(domain)
    size = validate_size(size)
    a, b = as_seeds(seeds), as_seeds(donor_seeds)
    groups = list(groups)
    if not (len(a) == len(b) == len(groups)):
        raise ValueError("seeds, donor_seeds and groups must have the same length")
    known = swap_groups(domain)
    bad = [g for g in groups if g not in known]
    if bad:
        raise ValueError(f"unknown swap group {bad[0]!r}; expected one of {', '.join(known)}")
    images = np.empty((len(a), size, size, 3), dtype=np.uint8)
    labels = np.empty((len(a), size, size), dtype=np.uint8)
    for g in dict.fromkeys(groups):   # one renderer call per group present
        idx = np.array([i for i, x in enumerate(groups) if x == g])
        img, lab, _ = mod.render(a[idx], size, donor=(b[idx], lambda n, g=g: param_group(domain, n) == g))
        images[idx], labels[idx] = img, lab
    return images, labels


__all__ = ["DOMAINS", "param_group", "render", "render_swap", "region_names", "swap_groups"]
