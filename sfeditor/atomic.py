"""Atomic file writes: write to a temporary file in the same folder, fsync, rename, fsync the folder.

A crash at any point leaves either the old file or the new one, never a mix.
The temporary file (``.<name>.<random>.tmp``) is removed when the write fails;
one left by a killed process is removed by the next save into the same folder
once it is :data:`STALE_SECONDS` old (a younger one may belong to a save
in progress in another process).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from typing import Iterator

STALE_SECONDS = 3600.0
_TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_stale_temps(folder: str | os.PathLike, older_than: float = STALE_SECONDS) -> list[str]:
    """Remove ``.*.tmp`` files of interrupted atomic writes in ``folder`` older than ``older_than`` seconds."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if not _TMP_RE.match(e.name):
            continue
        try:
            if e.is_file(follow_symlinks=False) and now - e.stat(follow_symlinks=False).st_mtime > older_than:
                os.unlink(e.path)
                removed.append(e.path)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is fsynced and replaces ``path``.

    A crash or exception leaves any previous file at ``path`` untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions of a new file
    try:
        yield tmp
        with open(tmp, "rb+") as f:   # whatever wrote tmp (torch.save, cv2...) may not have synced it
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)            # gone after a successful replace; the litter of a failed write


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        # through a file object: torch then names the archive "archive" instead of after the (random)
        # temporary file, so the same object always gives the same bytes; fsync like the other writers
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
