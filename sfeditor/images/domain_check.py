"""Does an inverted photo look like the model's domain?  (issue 39; Qt-free)

A generator can only paint images of its own domain, so a photo of something else is
"inverted" into the nearest face (or car) without complaint.  Two judges decide
whether the user should be told before building on the result:

* **Reconstruction quality**, for every model: the PSNR between the aligned photo and
  the inversion's reconstruction.  The projector reproduces photos of its own domain
  closely (toy domains, shipped preset: 25-30 dB over 8 held-out renders each,
  BENCHMARKS "Inversion presets"); below :data:`MIN_PSNR` the generator could not
  reproduce the photo, so the photo is not of the domain (or badly framed).
* **Region oracle**, for the toy domains (:mod:`sfeditor.toy.oracle`, a segmenter trained
  only on the renderer): the photo is segmented; every region the domain's renders
  always contain must be present with an area inside the range those renders show
  (:func:`reference_areas`, measured from the renderer's exact labels), and the photo's
  segmentation must agree with the reconstruction's (a face photo and its inversion
  have their hair in the same place; a landscape and "its" face do not).

:func:`judge_inversion` returns a :class:`DomainVerdict` whose :meth:`~DomainVerdict.message`
says in plain words what looks wrong.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DomainVerdict", "judge_inversion", "reference_areas", "MIN_PSNR", "MIN_AGREEMENT",
           "AREA_TOLERANCE", "ORACLE_SIZE"]

#: Reconstruction PSNR below which a photo is judged not to be of the domain.  The shipped toy
#: domains' worst held-out render inverts at 25.4 dB (toy-cars) / 25.6 dB (toy-faces) with the
#: preset (BENCHMARKS "Inversion presets"); 21 dB leaves room for real photos of the domain.
MIN_PSNR = 21.0
#: Fraction of pixels on which the oracle must label the photo and its reconstruction alike (held-out
#: renders, encoder-only inversions: 0.96-0.98 on toy-faces; a landscape, noise, a grey card, a toy car:
#: 0.42-0.75; `docs/notes/editor.md`).
MIN_AGREEMENT = 0.85
#: A region's area may be this factor outside the renders' 1st-99th percentile range.
AREA_TOLERANCE = 1.5
#: The oracles were trained on 64 px renders; photos are segmented at this size.
ORACLE_SIZE = 64
#: Renders used to measure a domain's region areas.
REFERENCE_RENDERS = 256


@dataclass
class DomainVerdict:
    """What the judges found.  ``ok`` is False when the photo does not look like the domain."""

    domain: str
    psnr: float
    ok: bool = True
    reasons: list[str] = field(default_factory=list)
    areas: dict[str, float] = field(default_factory=dict)       # oracle's area fraction per region (photo)
    agreement: float | None = None                              # photo vs reconstruction labels
    oracle_used: bool = False

    def message(self) -> str:
        """One paragraph for the user ("" when the photo looks fine)."""
        if self.ok:
            return ""
        return (f"This photo does not look like a {self.domain} image: " + "; ".join(self.reasons)
                + ". The inversion is the generator's nearest image, not the photo.")

    def summary(self) -> str:
        """A short line for a status bar."""
        bits = [f"{self.psnr:.1f} dB"]
        if self.agreement is not None:
            bits.append(f"regions agree on {self.agreement:.0%}")
        return ("looks like " if self.ok else "NOT like ") + f"{self.domain} ({', '.join(bits)})"


@functools.lru_cache(maxsize=4)
def reference_areas(domain: str, n: int = REFERENCE_RENDERS, size: int = ORACLE_SIZE) -> dict[str, tuple]:
    """Per region of a toy domain: the 1st and 99th percentile of its area fraction over ``n``
    renders (exact renderer labels).  A region with a 1st percentile > 0 is always present."""
    from ..toy import region_names, render

    _, labels = render(domain, np.arange(n), size)
    names = region_names(domain)
    frac = np.stack([(labels == k).mean(axis=(1, 2)) for k in range(len(names))], axis=1)
    lo, hi = np.percentile(frac, 1, axis=0), np.percentile(frac, 99, axis=0)
    return {nm: (float(lo[k]), float(hi[k])) for k, nm in enumerate(names)}


@functools.lru_cache(maxsize=4)
def _oracle(domain: str):
    from ..toy.oracle import load_oracle

    return load_oracle(domain, device="cpu")


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    import cv2

    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _check_image(name: str, img) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square uint8 RGB image [S, S, 3], got {a.dtype} {a.shape}")
    return a


def judge_inversion(domain: str | None, photo: np.ndarray, reconstruction: np.ndarray, psnr: float, *,
                    min_psnr: float = MIN_PSNR, min_agreement: float = MIN_AGREEMENT,
                    area_tolerance: float = AREA_TOLERANCE, use_oracle: bool = True) -> DomainVerdict:
    """Judge an inversion: ``photo`` (the aligned picture that was inverted) and ``reconstruction``
    (the generator's image of the found code), both uint8 RGB ``[S, S, 3]``; ``psnr`` between them.

    The region oracle is used where the domain has one (the shipped toy domains) and
    ``use_oracle``; every model gets the PSNR test."""
    photo = _check_image("photo", photo)
    reconstruction = _check_image("reconstruction", reconstruction)
    dom = domain or "this model's"
    v = DomainVerdict(dom, float(psnr))
    if not np.isfinite(v.psnr) or v.psnr < min_psnr:
        v.reasons.append(f"the generator reproduces it only at {v.psnr:.1f} dB PSNR "
                         f"(photos of the domain: ≥ {min_psnr:.0f} dB)")
    from ..toy import DOMAINS

    if use_oracle and domain in DOMAINS:
        try:
            oracle = _oracle(domain)
        except (FileNotFoundError, ValueError):
            oracle = None                      # no oracle file: the PSNR test alone
        if oracle is not None:
            v.oracle_used = True
            labels, _ = oracle.predict(np.stack([_resize(photo, ORACLE_SIZE), _resize(reconstruction, ORACLE_SIZE)]))
            names = oracle.region_names
            ref = reference_areas(domain)
            small, large = [], []
            for k, nm in enumerate(names):
                a = float((labels[0] == k).mean())
                v.areas[nm] = a
                lo, hi = ref[nm]
                if lo > 0 and a < lo / area_tolerance:
                    small.append(f"{nm} {a:.1%} (renders {lo:.1%}–{hi:.1%})")
                elif a > min(1.0, hi * area_tolerance + 0.02):
                    large.append(f"{nm} {a:.1%} (renders {lo:.1%}–{hi:.1%})")
            if small:
                v.reasons.append("the region oracle finds too little of what every render has: " + ", ".join(small))
            if large:
                v.reasons.append("implausibly large regions: " + ", ".join(large))
            v.agreement = float((labels[0] == labels[1]).mean())
            if v.agreement < min_agreement:
                v.reasons.append(f"its regions and the inversion's agree on only {v.agreement:.0%} of the "
                                 f"pixels (photos of the domain: ≥ {min_agreement:.0%})")
    v.ok = not v.reasons
    return v
