"""Read NVIDIA StyleGAN pickles without running any code from them.

NVIDIA's checkpoints are plain pickles.  Unpickled the normal way they import
whatever globals the file names and, for stylegan2-ada-pytorch / stylegan3,
``exec`` the Python source stored inside the file (``module_src``); the
TensorFlow ones ``exec`` their ``build_module_src``.  A model file is then a
program.  :class:`SafeUnpickler` builds only an allow-listed set of objects:

* containers and scalars (``collections.OrderedDict``, ``builtins.set``, ...);
* tensors: the torch rebuild functions, with storages read back by
  ``torch.load(weights_only=True)`` (:func:`_load_storage_bytes`);
* numpy arrays, dtypes and scalars;
* inert stand-ins for the framework classes the files reference:
  ``dnnlib.util.EasyDict`` -> :class:`EasyDict` (a dict),
  ``torch_utils.persistence._reconstruct_persistent_obj`` -> a function that
  returns a :class:`PersistentRecord` (class name + module ``__dict__``; the
  ``module_src`` string is dropped unread), plain ``torch.nn.modules.*`` classes
  and ``dnnlib.tflib.network.Network`` -> records that keep their pickled state.

Any other global raises :class:`UnsafePickleError` before it is imported.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import importlib
import io
import math
import os
import pickle
import re
import warnings
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = ["SafeUnpickler", "UnsafePickleError", "EasyDict", "PickledModule", "PersistentRecord",
           "TorchModuleRecord", "TFNetworkRecord", "safe_load", "InertRecord", "torch_load_inert"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        super().__init__(f"pickle references {module}.{name}, which could execute code")


# ------------------------------------------------------------------ stand-ins
class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict with attribute reads."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Inert:
    """Base of the record classes: creating one never runs code from the file."""

    def __new__(cls, *args, **kwargs):  # NEWOBJ passes the pickled args; ignore them
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass


class PickledModule(_Inert):
    """A pickled ``torch.nn.Module``: ``class_name`` and its ``__dict__`` (``state``)."""

    class_name: str = "?"
    state: dict

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state: Any) -> None:
        # nn.Module pickles its __dict__; some protocols give (dict, slots)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        self.state = state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.class_name}>"


class PersistentRecord(PickledModule):
    """What ``torch_utils.persistence._reconstruct_persistent_obj`` would have built."""

    def __init__(self, class_name: str, state: dict, version: Any = None):
        self.class_name, self.state, self.version = class_name, state, version


class TorchModuleRecord(PickledModule):
    """A plain ``torch.nn`` module pickled by reference (subclassed per class name)."""


class TFNetworkRecord(_Inert):
    """Stand-in for ``dnnlib.tflib.network.Network``: keeps the pickled state dict.

    The real class ``exec``s ``state["build_module_src"]`` and builds a
    TensorFlow graph; this one only stores ``state``.
    """

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    @property
    def name(self) -> str:
        return str(self.state.get("name", "?"))

    def __repr__(self) -> str:
        return f"<TFNetworkRecord {self.name}>"


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Stand-in for NVIDIA's persistence hook; ``meta["module_src"]`` is never read."""
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError("malformed persistent object (meta is not a dict)")
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise pickle.UnpicklingError("malformed persistent object (state is not a dict)")
    return PersistentRecord(str(meta.get("class_name", "?")), state, meta.get("version"))


_torch_module_records: dict[str, type] = {}


def _torch_module_record(module: str, name: str) -> type:
    key = f"{module}.{name}"
    cls = _torch_module_records.get(key)
    if cls is None:
        cls = type(name, (TorchModuleRecord,), {"class_name": key, "__module__": __name__})
        _torch_module_records[key] = cls
    return cls


# ------------------------------------------------------- tensor/numpy helpers
def _load_storage_bytes(data: Any):
    """``torch.storage._load_from_bytes`` with ``weights_only=True`` (no code runs).

    The blob is a legacy ``torch.save``; its declared sizes are checked against
    its length first (:func:`sfeditor.model.safe_torch.inspect_legacy_bytes`).
    """
    from .safe_torch import TorchFileError, inspect_legacy_bytes

    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("tensor storage is not a byte string")
    try:
        inspect_legacy_bytes(bytes(data))
    except TorchFileError as e:
        raise pickle.UnpicklingError(f"bad tensor storage: {e}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation chatter
        return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)


def _is_storage(x: Any) -> bool:
    return isinstance(x, torch.storage.TypedStorage)   # what _load_storage_bytes returns


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Tensor view of a storage; hooks and metadata from the file are ignored."""
    if not _is_storage(storage):
        raise pickle.UnpicklingError("tensor data is not a torch storage")
    offset, size, stride = int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        raise pickle.UnpicklingError("malformed tensor geometry")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # set_() would silently grow the storage; a view past its end means a corrupt file
        need = 0 if 0 in size else offset + 1 + sum((n - 1) * st for n, st in zip(size, stride))
        if need > storage.size():
            raise pickle.UnpicklingError("tensor extends past the end of its storage (corrupt file)")
        numel = math.prod(size)
        if numel > storage.size() and numel * storage.element_size() > _EXPANDED_VIEW_LIMIT:
            raise pickle.UnpicklingError(f"a tensor of shape {list(size)} is an expanded view of {storage.size()} "
                                         f"stored elements: refusing (it would need "
                                         f"{numel * storage.element_size() / 2 ** 20:.0f} MiB)")
        return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    """Parameters come back as plain tensors (hooks and Python state dropped)."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data


_TENSOR_BUILDERS = (_rebuild_tensor_v2, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    """Tensor subclasses: only rebuild the plain tensor with an allow-listed builder."""
    if func not in _TENSOR_BUILDERS or not isinstance(args, tuple):
        raise pickle.UnpicklingError("unsupported tensor reconstruction")
    return func(*args)


def _codecs_encode(obj: Any, encoding: str = "utf-8") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(text, 'latin1')``."""
    if not isinstance(obj, str) or str(encoding).lower().replace("-", "") not in ("latin1", "utf8"):
        raise pickle.UnpicklingError("unsupported _codecs.encode call")
    return codecs.encode(obj, encoding)


def _safe_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` restricted to the stand-in classes built here."""
    if isinstance(cls, type) and issubclass(cls, _Inert) and base is object:
        return cls.__new__(cls)
    if cls is EasyDict and base is dict:
        return EasyDict(state or {})
    raise pickle.UnpicklingError(f"unsupported object reconstruction ({getattr(cls, '__name__', cls)!r})")


def _numpy_attr(module_names: tuple[str, ...], name: str):
    for mod in module_names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy.core is a deprecated alias in numpy 2
                return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {name} here")


_NP_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NP_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")

# (module, name) -> object.  Everything the supported checkpoint formats use.
_EXPANDED_VIEW_LIMIT = 1 << 20      # bytes an overlapping (stride-0) view may declare


class _Refused:
    """A class the file may name as a type marker but never call (calling could allocate any size)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(f"the pickle calls {self.name} directly, which no checkpoint does")


_TENSOR_MARKER = _Refused("torch.Tensor")
_PARAMETER_MARKER = _Refused("torch.nn.Parameter")
_NDARRAY_MARKER = _Refused("numpy.ndarray")

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,
    ("builtins", "str"): str,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "complex"): complex,
    ("builtins", "bool"): bool,
    ("builtins", "slice"): slice,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "Tensor"): _TENSOR_MARKER,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_MARKER,
    ("numpy", "ndarray"): _NDARRAY_MARKER,
    ("numpy", "dtype"): np.dtype,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.tflib.network", "Network"): TFNetworkRecord,
}
_NUMPY_FUNCS = {("multiarray", "_reconstruct"): _NP_MULTIARRAY, ("multiarray", "scalar"): _NP_MULTIARRAY,
                ("numeric", "_frombuffer"): _NP_NUMERIC}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _file_size(f: Any) -> int | None:
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        pass
    if isinstance(f, io.BytesIO):
        return len(f.getbuffer())
    return None


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only returns allow-listed objects.

    Calls that could allocate more than the file holds are bounded by its size
    (``budget``; from the open file when not given): ``bytes(n)`` /
    ``bytearray(n)``, numpy's ``_reconstruct`` / ``scalar`` / ``_frombuffer``.
    ``torch.Tensor``, ``Parameter`` and ``numpy.ndarray`` are type markers only.
    """

    def __init__(self, file: BinaryIO, *args, budget: int | None = None, **kwargs):
        super().__init__(file, *args, **kwargs)
        size = budget if budget is not None else _file_size(file)
        self.budget = size if size is not None else 1 << 30

    def _check_bytes(self, n: int, what: str) -> None:
        if n > self.budget:
            raise pickle.UnpicklingError(f"{what} of {n} bytes in a {self.budget}-byte file: refusing")

    def _bytes_like(self, cls):
        def build(*args):
            if args and isinstance(args[0], int) and not isinstance(args[0], bool):
                self._check_bytes(args[0], f"a {cls.__name__}")
            return cls(*args)
        return build

    def _np_reconstruct(self, real):
        def build(subtype, shape, dtype, *rest):
            if subtype is not _NDARRAY_MARKER:
                raise pickle.UnpicklingError("numpy array of an unsupported subtype")
            self._check_array(shape, np.dtype("b"))
            return real(np.ndarray, shape, dtype, *rest)
        return build

    def _check_array(self, shape, dtype) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError("malformed numpy shape")
        self._check_bytes(math.prod(shape) * np.dtype(dtype).itemsize, "a numpy array")

    def _np_scalar(self, real):
        def build(dtype, *rest):
            if not isinstance(dtype, np.dtype):
                raise pickle.UnpicklingError("malformed numpy scalar")
            self._check_bytes(dtype.itemsize, "a numpy scalar")
            return real(dtype, *rest)
        return build

    def _np_frombuffer(self, real):
        def build(buf, dtype, shape, order, *rest):
            if not isinstance(dtype, np.dtype):
                raise pickle.UnpicklingError("malformed numpy buffer")
            self._check_array(shape, dtype)
            return real(buf, dtype, shape, order, *rest)
        return build

    def find_class(self, module: str, name: str) -> Any:
        obj = self._find_class(module, name)
        if obj is bytes or obj is bytearray:
            return self._bytes_like(obj)
        if name == "_reconstruct" and "multiarray" in module:
            return self._np_reconstruct(obj)
        if name == "scalar" and "multiarray" in module:
            return self._np_scalar(obj)
        if name == "_frombuffer":
            return self._np_frombuffer(obj)
        return obj

    def _find_class(self, module: str, name: str) -> Any:
        # protocol 0-2 pickles written by Python 3 use Python 2 names (__builtin__, copy_reg)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        obj = _ALLOWED.get((module, name))
        if obj is not None:
            return obj
        for prefix in ("numpy._core.", "numpy.core."):
            if module.startswith(prefix):
                mods = _NUMPY_FUNCS.get((module[len(prefix):], name))
                if mods is not None:
                    return _numpy_attr(mods, name)
        if module == "torch" and _IDENT.match(name) and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.nn.modules.") and _IDENT.match(name) and name[:1].isupper():
            return _torch_module_record(module, name)   # a record, never the real class
        raise UnsafePickleError(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not supported in a plain pickle")


def safe_load(f: BinaryIO) -> Any:
    """Read one pickled object from ``f`` with :class:`SafeUnpickler`."""
    return SafeUnpickler(f).load()


class InertRecord(_Inert):
    """Stand-in for a class a weights file names in its metadata; keeps its pickled state as data."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["pickled_state"] = state


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def torch_load_inert(path, max_globals: int = 64) -> Any:
    """``torch.load(weights_only=True)`` of a file whose metadata names classes or functions torch does
    not allow (training options, ``argparse.Namespace``, ...): each such global becomes an
    :class:`InertRecord` subclass of that name (the module is never imported, nothing is called with
    the file's arguments), so the tensors come out and the metadata stays inert data."""
    stubs: list[type] = []
    for _ in range(max_globals + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.serialization.safe_globals(stubs):
                    return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            m = _UNSUPPORTED_GLOBAL.search(str(e))
            if not m or len(stubs) >= max_globals:
                raise
            module, _, name = m[1].rpartition(".")
            stubs.append(type(name, (InertRecord,), {"__module__": module or "builtins", "__qualname__": name}))
    raise pickle.UnpicklingError("too many foreign globals")  # pragma: no cover - the loop returns or raises
