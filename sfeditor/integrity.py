"""Content hashes: shipped resources against ``resources/MANIFEST.json``; digests inside files sfeditor writes.

* :func:`verify_shipped` checks a file under ``resources/`` against the SHA-256
  and size recorded in ``resources/MANIFEST.json`` (files not listed there are
  not checked).  Regenerate the manifest after retraining a shipped file::

      python -m sfeditor.integrity --write

  (``python -m sfeditor.integrity`` alone checks every listed file).
* :func:`state_digest` is a SHA-256 over a nested dict of tensors and plain
  values, stored inside hierarchy files and run checkpoints (key ``sha256``)
  and checked when they are read, so flipped bytes are refused, not used.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

__all__ = ["IntegrityError", "sha256_file", "manifest_path", "build_manifest", "write_manifest", "check_manifest",
           "verify_shipped", "state_digest", "DIGEST_KEY"]

DIGEST_KEY = "sha256"
_SKIP_SUFFIXES = {".md", ".py", ".pyc"}
_verified: dict[tuple[str, int, int], bool] = {}


class IntegrityError(ValueError):
    """A file's content does not match its recorded hash."""


def resources_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "resources"


def manifest_path() -> Path:
    return resources_dir() / "MANIFEST.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _shipped_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in _SKIP_SUFFIXES
                  and p.name != "MANIFEST.json" and "__pycache__" not in p.parts and not p.name.startswith("."))


def build_manifest(root: str | os.PathLike | None = None) -> dict:
    root = Path(root) if root is not None else resources_dir()
    files = {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in _shipped_files(root)}
    return {"format": "sfeditor-manifest", "version": 1, "files": files}


def write_manifest(root: str | os.PathLike | None = None) -> Path:
    from .atomic import atomic_write_text

    root = Path(root) if root is not None else resources_dir()
    path = root / "MANIFEST.json"
    atomic_write_text(path, json.dumps(build_manifest(root), indent=1, sort_keys=True) + "\n")
    return path


def _load_manifest(root: Path) -> dict:
    path = root / "MANIFEST.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        files = d["files"]
        if not isinstance(files, dict):
            raise TypeError
        return files
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, RecursionError):
        raise IntegrityError(f"{path}: unreadable manifest; regenerate it with "
                             f"`python -m sfeditor.integrity --write`") from None


def check_manifest(root: str | os.PathLike | None = None) -> list[str]:
    """Problems (one line each) between the shipped files and the manifest; [] when all match."""
    root = Path(root) if root is not None else resources_dir()
    listed = _load_manifest(root)
    if not listed:
        return [f"{root / 'MANIFEST.json'} is missing; run `python -m sfeditor.integrity --write`"]
    actual = build_manifest(root)["files"]
    problems = []
    for name in sorted(set(listed) | set(actual)):
        if name not in actual:
            problems.append(f"{name}: listed in the manifest but missing")
        elif name not in listed:
            problems.append(f"{name}: not in the manifest")
        elif listed[name].get("sha256") != actual[name]["sha256"]:
            problems.append(f"{name}: SHA-256 differs from the manifest")
    return problems


def verify_shipped(path: str | os.PathLike) -> None:
    """Raise :class:`IntegrityError` if ``path`` is a shipped resource whose bytes differ from the manifest."""
    p = Path(path).resolve()
    root = resources_dir()
    try:
        rel = p.relative_to(root).as_posix()
    except ValueError:
        return
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if _verified.get(key):
        return
    entry = _load_manifest(root).get(rel)
    if entry is None:
        return
    if entry.get("bytes") != st.st_size or entry.get("sha256") != sha256_file(p):
        raise IntegrityError(f"{p}: content differs from resources/MANIFEST.json (the file is corrupt or was "
                             f"replaced); restore it, or after retraining it on purpose run "
                             f"`python -m sfeditor.integrity --write`")
    _verified[key] = True


# ------------------------------------------------------------ state digests
def _feed(h, value: Any, depth: int = 0) -> None:
    import numpy as np
    import torch

    if depth > 64:
        raise ValueError("state is nested too deeply to hash")
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(b"T" + str(t.dtype).encode() + repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(b"A" + str(a.dtype).encode() + repr(a.shape).encode() + a.tobytes())
    elif isinstance(value, dict):
        h.update(b"D" + struct.pack("<q", len(value)))
        for k in sorted(value, key=repr):
            h.update(b"K" + repr(k).encode())
            _feed(h, value[k], depth + 1)
    elif isinstance(value, (list, tuple)):
        h.update((b"L" if isinstance(value, list) else b"U") + struct.pack("<q", len(value)))
        for v in value:
            _feed(h, v, depth + 1)
    else:
        h.update(b"S" + type(value).__name__.encode() + b":" + repr(value).encode())


def state_digest(state: dict) -> str:
    """SHA-256 of ``state`` without its ``sha256`` key (tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sfeditor.integrity",
                                description="check (default) or rewrite resources/MANIFEST.json")
    p.add_argument("--write", action="store_true", help="rewrite the manifest from the files as they are now")
    args = p.parse_args(argv)
    if args.write:
        path = write_manifest()
        print(f"wrote {path} ({len(build_manifest()['files'])} files)")
        return 0
    problems = check_manifest()
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print("all shipped resources match resources/MANIFEST.json")
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
