"""Check a PyTorch file before ``torch.load`` allocates anything for it.

``torch.load(weights_only=True)`` runs no code, but it trusts the sizes a file
declares: a few-KB file can hold tensors that are stride-0 views of one
element with shapes of billions (they become real memory the first time they
are copied), storages that declare more bytes than the file holds, or a
``bytearray(10**10)`` call.  :func:`inspect_torch_file` reads the file first
without building anything:

* zip files (``torch.save``'s format): every member is stored (not
  compressed) and passes its CRC-32 (flipped bytes are refused, not loaded);
  ``data.pkl`` is walked by :class:`_Scanner`, an unpickler that builds only
  inert stand-ins and records each storage (dtype, element count) and each
  tensor view (offset, shape, stride);
* legacy (pre-zip) files: the same walk over the object pickle, then the raw
  storages that follow it;

and refuses a storage whose declared size differs from the bytes the file
holds for it, a view that reaches past its storage, an expanded view larger
than 1 MiB, more declared tensor bytes than ``4 x file size + 64 MiB``, and a
``bytes``/``bytearray`` call larger than the file.  :func:`safe_torch_load`
then calls ``torch.load(weights_only=True)``.  Errors are :class:`TorchFileError`
(a ``ValueError``) with a one-line reason.
"""
from __future__ import annotations

import contextvars
import io
import math
import os
import pickle
import stat
import warnings
import zipfile
from typing import Any, BinaryIO, Iterable

import torch

__all__ = ["TorchFileError", "inspect_torch_file", "inspect_legacy_bytes", "inspect_torch_bytes", "safe_torch_load", "ZIP_MAGIC"]

ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
EXPANDED_VIEW_LIMIT = 1 << 20      # bytes an overlapping (expanded) view may declare
# a caller that knows its architecture may allow more declared (aliased) tensor bytes than 4 x file + 64 MiB
_declared_floor: contextvars.ContextVar[int] = contextvars.ContextVar("declared_floor", default=0)
MAX_DIM = 1 << 40                  # no real tensor has a dimension this long


class TorchFileError(ValueError):
    """A PyTorch file that is corrupt or declares more memory than it holds."""


# ---------------------------------------------------------------- scanning
class _Stub:
    """Inert stand-in for every object the scanned pickle builds."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _StorageType:
    def __init__(self, name: str, itemsize: int):
        self.name, self.itemsize = name, itemsize


class _StorageRec:
    def __init__(self, key: str, numel: int, itemsize: int):
        self.key, self.numel, self.itemsize = key, numel, itemsize


def _as_int(x: Any, what: str) -> int:
    if type(x) is not int:
        raise TorchFileError(f"malformed {what} (not an integer)")
    return x


class _Scanner(pickle.Unpickler):
    """Walks a torch pickle building only stand-ins; records storages and tensor views."""

    def __init__(self, f: BinaryIO, budget: int):
        super().__init__(f)
        self.budget = budget
        self.storages: dict[str, _StorageRec] = {}
        self.tensor_bytes = 0

    # tensors -------------------------------------------------------------
    def _tensor(self, storage, offset, size, stride, *rest):
        if not isinstance(storage, _StorageRec):
            raise TorchFileError("tensor data is not a storage")
        offset = _as_int(offset, "tensor offset")
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
            raise TorchFileError("malformed tensor geometry")
        size = [_as_int(s, "tensor shape") for s in size]
        stride = [_as_int(s, "tensor stride") for s in stride]
        if offset < 0 or any(s < 0 or s > MAX_DIM for s in size) or any(s < 0 for s in stride):
            raise TorchFileError("malformed tensor geometry (negative or absurd sizes)")
        numel = math.prod(size)
        if numel:
            need = offset + 1 + sum((n - 1) * st for n, st in zip(size, stride))
            if need > storage.numel:
                raise TorchFileError(f"a tensor of shape {size} reaches past the end of its storage "
                                     f"({need} > {storage.numel} elements): corrupt file")
            nbytes = numel * storage.itemsize
            if numel > storage.numel and nbytes > EXPANDED_VIEW_LIMIT:
                raise TorchFileError(f"a tensor of shape {size} is an expanded view of {storage.numel} stored "
                                     f"elements ({nbytes / 2 ** 20:.0f} MiB once copied): refusing")
            self.tensor_bytes += nbytes
            if self.tensor_bytes > max(self.budget * 4 + (64 << 20), _declared_floor.get()):
                raise TorchFileError(f"the tensors declare {self.tensor_bytes / 2 ** 20:.0f} MiB, far more than "
                                     f"the file's {self.budget / 2 ** 20:.1f} MiB: refusing")
        return _Stub()

    def _from_type(self, func, new_type, args, state=None):
        if func == self._tensor and isinstance(args, tuple):
            return self._tensor(*args)
        if callable(func) and isinstance(args, tuple):
            return func(*args)
        raise TorchFileError("unsupported tensor reconstruction")

    def _parameter(self, data, *rest):
        return _Stub()

    def _bytes(self, *args):
        if args and type(args[0]) is int and args[0] > self.budget:
            raise TorchFileError(f"the pickle asks for a {args[0]}-byte buffer in a {self.budget}-byte file: refusing")
        return _Stub()

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._tensor
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return self._from_type
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return self._parameter
        if module == "torch._utils":
            raise TorchFileError(f"unsupported tensor kind ({name})")
        if module in ("builtins", "__builtin__") and name in ("bytes", "bytearray"):
            return self._bytes
        if module == "torch" and name.endswith("Storage"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")        # TypedStorage deprecation
                cls = getattr(torch, name, None)
                dtype = getattr(cls, "dtype", None) if cls is not None else None
            if not isinstance(dtype, torch.dtype):
                raise TorchFileError(f"unknown storage type torch.{name}")
            return _StorageType(name, torch._utils._element_size(dtype))
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchFileError("malformed storage record")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise TorchFileError("malformed storage record")
        numel = _as_int(numel, "storage size")
        if numel < 0 or numel * stype.itemsize > self.budget:
            raise TorchFileError(f"storage {key} declares {numel * stype.itemsize} bytes in a {self.budget}-byte "
                                 f"file: corrupt or hostile")
        old = self.storages.get(key)
        if old is not None and (old.numel, old.itemsize) != (numel, stype.itemsize):
            raise TorchFileError(f"storage {key} is declared twice with different sizes")
        rec = self.storages[key] = old or _StorageRec(key, numel, stype.itemsize)
        return rec


def _scan(f: BinaryIO, budget: int) -> _Scanner:
    sc = _Scanner(f, budget)
    try:
        sc.load()
    except TorchFileError:
        raise
    except RecursionError:
        raise TorchFileError("the pickle is nested too deeply") from None
    except EOFError:
        raise TorchFileError("file is truncated (the pickle ends early)") from None
    except MemoryError:
        raise TorchFileError("the pickle needs too much memory") from None
    except Exception as e:
        raise TorchFileError(f"not a readable PyTorch pickle ({type(e).__name__}: {_line(e)})") from None
    return sc


def _line(e: BaseException) -> str:
    t = str(e).strip()
    return t.splitlines()[0][:200] if t else type(e).__name__


# ------------------------------------------------------------------- files
def _regular_size(path: str) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    if stat.S_ISDIR(st.st_mode):
        raise TorchFileError("is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise TorchFileError("is not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise TorchFileError("file is empty")
    return st.st_size


def inspect_torch_file(path: str | os.PathLike) -> str:
    """Check ``path`` as described in the module docstring; returns ``"torch-zip"`` or ``"torch-legacy"``."""
    path = os.fspath(path)
    size = _regular_size(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        _inspect_zip(path, size)
        return "torch-zip"
    with open(path, "rb") as f:
        _inspect_legacy(f, size)
    return "torch-legacy"


def _inspect_zip(path, size: int) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise TorchFileError(f"file is truncated or corrupt ({_line(e)})") from None
    with zf:
        infos = zf.infolist()
        pkl = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
        if len(pkl) != 1:
            raise TorchFileError("not a PyTorch file (a zip archive without one data.pkl)")
        prefix = pkl[0].filename[: -len("data.pkl")]
        members = {}
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise TorchFileError(f"member {info.filename} is compressed; PyTorch files store their data as-is")
            if info.file_size > size:
                raise TorchFileError(f"member {info.filename} declares more bytes than the file has: corrupt")
            members[info.filename] = info
        for info in infos:                      # CRC-32 of every member, read in 1 MiB chunks
            try:
                with zf.open(info) as m:
                    while m.read(1 << 20):
                        pass
            except zipfile.BadZipFile as e:
                raise TorchFileError(f"file is corrupt: {info.filename} fails its check ({_line(e)})") from None
            except (OSError, EOFError, ValueError) as e:
                raise TorchFileError(f"file is truncated or corrupt ({info.filename}: {_line(e)})") from None
        data = zf.read(pkl[0])
    sc = _scan(io.BytesIO(data), size)
    for key, rec in sc.storages.items():
        info = members.get(f"{prefix}data/{key}")
        if info is None:
            raise TorchFileError(f"storage {key} is missing from the file: corrupt")
        if info.file_size != rec.numel * rec.itemsize:
            raise TorchFileError(f"storage {key} declares {rec.numel * rec.itemsize} bytes but the file holds "
                                 f"{info.file_size}: corrupt or hostile")


def _inspect_legacy(f: BinaryIO, size: int) -> None:
    try:
        magic = _scan_plain(f, size)
    except TorchFileError:
        raise TorchFileError("not a PyTorch file") from None
    if magic != _LEGACY_MAGIC:
        raise TorchFileError("not a PyTorch file (neither a zip archive nor a legacy torch.save)")
    _scan_plain(f, size)                    # protocol version
    _scan_plain(f, size)                    # sys info
    sc = _scan(f, size)                     # the object
    keys = _scan_plain(f, size)             # storage keys, in the order their bytes follow
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TorchFileError("malformed storage key list")
    for key in keys:
        rec = sc.storages.get(key)
        if rec is None:
            raise TorchFileError(f"storage {key} is listed but never used: corrupt")
        head = f.read(8)
        if len(head) != 8:
            raise TorchFileError("file is truncated (a storage ends early)")
        numel = int.from_bytes(head, "little", signed=True)
        if numel != rec.numel:
            raise TorchFileError(f"storage {key} declares {rec.numel} elements but its data says {numel}: corrupt")
        nbytes = numel * rec.itemsize
        here = f.tell()
        if here + nbytes > size:
            raise TorchFileError(f"storage {key} needs {nbytes} bytes; the file ends first (truncated)")
        f.seek(here + nbytes)


class _Plain(pickle.Unpickler):
    """Small header pickles: ints, strings, lists and dicts only."""

    def find_class(self, module, name):
        raise TorchFileError(f"unexpected {module}.{name} in a header")


def _scan_plain(f: BinaryIO, size: int) -> Any:
    try:
        return _Plain(f).load()
    except TorchFileError:
        raise
    except Exception as e:
        raise TorchFileError(f"not a readable PyTorch file ({type(e).__name__}: {_line(e)})") from None


def inspect_torch_bytes(data: bytes) -> None:
    """Check a ``torch.save`` held in memory (NVIDIA pickles store storages as legacy ones)."""
    if data[:4] == ZIP_MAGIC:
        _inspect_zip(io.BytesIO(data), len(data))
    else:
        _inspect_legacy(io.BytesIO(data), len(data))


inspect_legacy_bytes = inspect_torch_bytes


def safe_torch_load(path: str | os.PathLike, *, safe_globals: Iterable = (), mmap: bool = False,
                    map_location="cpu", declared_limit: int = 0) -> Any:
    """``torch.load(weights_only=True)`` after :func:`inspect_torch_file`; errors name ``path``.

    Raises ``FileNotFoundError`` for a missing file and :class:`TorchFileError`
    (``"<path>: <reason>"``) for anything else.  ``declared_limit``: tensor bytes the
    file may declare in all (views of shared storages counted each time) when that is
    more than ``4 x file size + 64 MiB``; a caller sets it from its architecture's size.
    """
    p = os.fspath(path)
    token = _declared_floor.set(int(declared_limit))
    try:
        kind = inspect_torch_file(p)
    except TorchFileError as e:
        raise TorchFileError(f"{p}: {e}") from None
    finally:
        _declared_floor.reset(token)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(safe_globals)):
                return torch.load(p, map_location=map_location, weights_only=True,
                                  mmap=mmap and kind == "torch-zip")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise TorchFileError(f"{p}: not a readable PyTorch file ({type(e).__name__}: {_line(e)})") from None
