"""Exclusive locks on run folders and shared files, saying who holds them.

:func:`acquire` takes an advisory ``flock`` on a lock file (``<folder>/.lock``
or ``<file>.lock``) and writes the holder into it (pid, host, start time,
command).  The kernel drops a ``flock`` when its process dies, so the lock of a
killed run is taken over without any clean-up; the lock file is removed on
release.  A second process gets :class:`LockedError` naming the holder
(``timeout`` > 0 waits that long first).  Within one process the same path can
be taken again (a count), so a run that resumes in-process is not refused.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not guarded
    fcntl = None

__all__ = ["LockedError", "FileLock", "acquire", "lock_path_for", "holder_of"]

_held: dict[str, list] = {}          # real lock path -> [fd, count]
_mutex = threading.Lock()


class LockedError(OSError):
    """Another process holds the lock; the message names it."""

    def __init__(self, what: str, holder: dict | None):
        self.holder = holder or {}
        who = describe(self.holder)
        self.message = (f"{what} is in use by {who}; wait for it to finish or stop it "
                        f"(a lock of a process that died is taken over automatically)")
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def describe(h: dict) -> str:
    if not h:
        return "another process"
    when = h.get("started")
    when_s = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when)) if isinstance(when, (int, float)) else "?"
    cmd = h.get("command")
    return (f"pid {h.get('pid', '?')} on host {h.get('host', '?')} (started {when_s}"
            + (f": {cmd}" if cmd else "") + ")")


def lock_path_for(target: str | os.PathLike) -> str:
    target = os.path.abspath(os.fspath(target))
    if os.path.isdir(target):
        return os.path.join(target, ".lock")
    return os.path.join(os.path.dirname(target), "." + os.path.basename(target) + ".lock")


def holder_of(lock_path: str) -> dict | None:
    try:
        with open(lock_path, encoding="utf-8") as f:
            d = json.loads(f.read(4096) or "null")
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


class FileLock:
    """A held lock; :meth:`release` (or garbage collection, or process exit) lets it go."""

    def __init__(self, path: str):
        self.path = path
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        with _mutex:
            entry = _held.get(self.path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[self.path]
            fd = entry[0]
            try:
                os.unlink(self.path)
            except OSError:
                pass
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


def acquire(target: str | os.PathLike, what: str | None = None, timeout: float = 0.0,
            lock_path: str | None = None) -> FileLock:
    """Lock ``target`` (a folder or a file); raises :class:`LockedError` naming the holder."""
    path = os.path.abspath(lock_path or lock_path_for(target))
    what = what or os.fspath(target)
    if fcntl is None:  # pragma: no cover
        return FileLock(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _mutex:
        entry = _held.get(path)
        if entry is not None:
            entry[1] += 1
            return FileLock(path)
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise LockedError(what, holder_of(path)) from None
            time.sleep(0.05)
            continue
        try:   # the file may have been unlinked by its previous holder between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            continue
        break
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    with _mutex:
        _held[path] = [fd, 1]
    return FileLock(path)
