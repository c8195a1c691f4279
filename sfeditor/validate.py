"""Input checks shared by the command lines and loaders: numbers, devices, files, JSON, image formats.

Every check raises with a one-line message: ``argparse.ArgumentTypeError`` for
the ``type=`` validators (argparse prints ``error: argument --x: ...`` and
exits 2), ``ValueError`` (:class:`InputError`) for files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import stat
from typing import Any, Callable

__all__ = ["InputError", "int_in", "float_in", "positive_int", "nonneg_int", "finite_float", "device_arg",
           "check_device", "check_regular_file", "read_limited", "parse_json", "load_json_file",
           "IMAGE_EXTENSIONS", "image_extension", "MAX_JSON_BYTES"]

MAX_JSON_BYTES = 256 << 20
IMAGE_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".bmp": "BMP",
                    ".tif": "TIFF", ".tiff": "TIFF"}


class InputError(ValueError):
    """A file or value the program cannot use; the message says why."""


# ------------------------------------------------------------- numbers
MAX_SCALE = 16            # --scale: nearest-neighbour upscale of a grid or comparison picture


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """argparse ``type=``: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range ({_range(lo, hi)})")
        return v
    parse.__name__ = "integer"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False) -> Callable[[str], float]:
    """argparse ``type=``: a finite number in [lo, hi] (``(lo, hi]`` with ``open_lo``)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if (lo is not None and (v < lo or (open_lo and v == lo))) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v:g} is out of range ({_range(lo, hi, open_lo)})")
        return v
    parse.__name__ = "number"
    return parse


def _range(lo, hi, open_lo: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{'>' if open_lo else 'from'} {lo:g} {'and at most' if open_lo else 'to'} {hi:g}"
    if lo is not None:
        return f"must be {'>' if open_lo else '>='} {lo:g}"
    return f"must be <= {hi:g}"


positive_int = int_in(1)
nonneg_int = int_in(0)
finite_float = float_in()


# -------------------------------------------------------------- devices
def check_device(text: str | None) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, present on this machine; ValueError otherwise."""
    if text in (None, "auto"):
        return "auto"
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {text!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {text!r}: CUDA is not available on this machine (use --device cpu or auto)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InputError(f"device {text!r}: this machine has {n} CUDA device(s)")
        return text
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"device {text!r}: Apple MPS is not available on this machine")
        return text
    raise InputError(f"device {text!r} is not supported (use auto, cpu, cuda, cuda:N or mps)")


def device_arg(text: str) -> str:
    """argparse ``type=`` for ``--device``."""
    try:
        return check_device(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------- files
def check_regular_file(path: str | os.PathLike, max_bytes: int | None = None, what: str = "file") -> int:
    """Size of ``path`` after checking it is a regular, non-empty file of at most ``max_bytes``.

    Devices (``/dev/zero``), FIFOs and sockets are refused before they are opened
    (reading them would never end or hang).  ``FileNotFoundError`` if missing.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such {what}") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: not a regular file (a device, pipe or socket); refusing to read it")
    if st.st_size == 0:
        raise InputError(f"{p}: the {what} is empty")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError(f"{p}: {st.st_size / 2 ** 20:.1f} MiB is too large for a {what} "
                         f"(at most {max_bytes / 2 ** 20:.0f} MiB)")
    return st.st_size


def read_limited(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before and while reading)."""
    check_regular_file(path, max_bytes, what)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{os.fspath(path)}: grew past {max_bytes / 2 ** 20:.0f} MiB while being read")
    return data


# ----------------------------------------------------------------- JSON
def parse_json(text: str | bytes, what: str = "JSON") -> Any:
    """``json.loads`` whose failures (syntax, encoding, nesting too deep) are one-line ValueErrors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise InputError(f"not a text (UTF-8) {what}") from None
    except RecursionError:
        raise InputError(f"the {what} is nested too deeply to be a real one") from None


def load_json_file(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read and parse a JSON file with :func:`check_regular_file` and :func:`parse_json`; errors name ``path``."""
    data = read_limited(path, max_bytes, what)
    try:
        return parse_json(data, what)
    except InputError as e:
        raise InputError(f"{os.fspath(path)}: {e}") from None


# --------------------------------------------------------------- images
def image_extension(path: str | os.PathLike) -> str:
    """The lower-case extension of an output image path; InputError if no image format has it."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        known = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise InputError(f"{os.fspath(path)}: cannot tell the image format from {ext or 'no extension'!r} "
                         f"(use one of {known})")
    return ext
