"""Read and write StyleGAN2 generator checkpoints.

Formats read (:func:`read_checkpoint`, :func:`load_generator`):

``sfeditor``
    This project's own file (:func:`save_generator`): a ``torch.save`` of
    ``{"format": "sfeditor-generator", "version": 1, "config": {...},
    "state_dict": {...}, "meta": {...}}``; tensors optionally fp16.
``rosinality``
    rosinality/stylegan2-pytorch ``.pt`` (what the official StyleFusion code
    loads): ``{"g_ema": state_dict, "latent_avg": w_avg, ...}``, training
    snapshots (``g``, ``d``, optimisers, ``args`` as ``argparse.Namespace``)
    and bare ``g_ema`` state dicts included.
``nvidia-ada``
    NVIDIA stylegan2-ada-pytorch / stylegan3-repo StyleGAN2 ``.pkl``
    (``{"G_ema": ...}``), converted by the table ``_ADA_RULES``.
``nvidia-tf``
    NVIDIA's TensorFlow StyleGAN2 ``.pkl`` (``(G, D, Gs)``; official
    config-f FFHQ / car / church), converted by the table ``_TF_RULES``.

No file runs code while it is read: ``.pt`` files go through
``torch.load(weights_only=True)`` (with ``argparse.Namespace`` allow-listed);
pickles through :class:`sfeditor.model.safe_pickle.SafeUnpickler`, which refuses
every global it does not know and never executes the Python source NVIDIA
pickles carry.  Every failure is a :class:`CheckpointError` whose message
starts with the file name (a missing file is a ``FileNotFoundError``).

The architecture (resolution, width per resolution, mapping depth, w_dim) is
inferred from tensor shapes (:func:`infer_config`); the mapping learning-rate
multiplier of foreign files is the StyleGAN2 default, 0.01.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..atomic import atomic_torch_save
from .generator import Generator, GeneratorConfig
from .latent_prior import MixturePrior, PriorError, split_prior_state
from .safe_pickle import PickledModule, SafeUnpickler, TFNetworkRecord, UnsafePickleError
from .safe_torch import TorchFileError, inspect_torch_file
from .upfirdn import make_kernel

__all__ = ["CheckpointError", "CheckpointData", "load_generator",
           "read_checkpoint", "save_generator",
           "infer_config", "expected_shapes", "resolve_source", "FORMAT_TAG", "FORMAT_VERSION"]

FORMAT_TAG = "sfeditor-generator"
FORMAT_VERSION = 1
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C      # first object of a pre-zip torch.save file
_MAX_BLOCKS = 12                                   # up to 16384 x 16384: anything larger is a broken file


class CheckpointError(ValueError):
    """A file that cannot be loaded as a StyleGAN2 generator; the message says why."""


@dataclass
class CheckpointData:
    """A checkpoint read into rosinality names.

    ``state_dict``: float32 CPU tensors named like :class:`Generator`'s
    parameters and noise buffers (no ``w_avg``, no blur-kernel buffers: those
    follow from ``config``).  ``w_avg``: the stored mean w ``[style_dim]`` or
    ``None``.  ``format``: ``"sfeditor"``, ``"rosinality"``, ``"nvidia-ada"`` or
    ``"nvidia-tf"``.  ``info``: details (meta, training args, ignored tensors...).
    """

    state_dict: dict[str, torch.Tensor]
    w_avg: torch.Tensor | None
    config: GeneratorConfig
    format: str
    info: dict = field(default_factory=dict)
    prior: "MixturePrior | None" = None   # sfeditor files only: a mixture z -> w (sfeditor.model.latent_prior)


# =================================================================== public API


def load_generator(source: str | os.PathLike, device: str | torch.device | None = None) -> Generator:
    """A :class:`Generator` in eval mode on ``device`` (default: CUDA if available, else CPU).

    ``source`` is a checkpoint path or a shipped domain name
    (:data:`sfeditor.domains.SHIPPED`).  A checkpoint without a stored mean w
    gets ``w_avg`` from 4096 mapped z (seed 0), like the official ``mean_latent(4096)``.
    """
    path = resolve_source(source)
    data = read_checkpoint(path)
    G = Generator(data.config)
    result = G.load_state_dict(data.state_dict, strict=False)
    optional = {"w_avg", *_derived_buffers(data.config)}
    leftover = [k for k in result.missing_keys if k not in optional] + list(result.unexpected_keys)
    if leftover:  # read_checkpoint validated the names: this means generator.py changed underneath
        raise CheckpointError(f"{path}: weights do not match sfeditor's Generator: {_few(leftover)}")
    if data.prior is not None:          # its size was checked against the config by read_checkpoint
        G.set_prior(data.prior)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    G = G.to(torch.device(device)).eval()
    with torch.no_grad():
        if data.w_avg is not None:
            G.w_avg.copy_(data.w_avg)
        else:
            G.update_w_avg(4096, seed=0)
    return G


def read_checkpoint(path: str | os.PathLike) -> CheckpointData:
    """Read any supported checkpoint without building a generator (see the module docstring)."""
    path = os.fspath(path)
    try:
        obj, container = _read_file(path)
        data = _dispatch(obj)
        data.info.setdefault("container", container)
        data.info.setdefault("path", path)
        return data
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def save_generator(G: Generator, path: str | os.PathLike, meta: dict | None = None, half: bool = False) -> None:
    """Write ``G`` in sfeditor's own format, atomically (loads with ``weights_only=True``).

    ``meta``: JSON-like data stored beside the weights (str keys; str, int,
    float, bool, None, lists, tuples, dicts).  ``half=True`` stores floating
    tensors as fp16 (about half the size, for shipping); loading casts back to
    float32.  ``w_avg`` is stored as it is on ``G``.
    """
    if not isinstance(G, Generator):
        raise TypeError(f"save_generator expects an sfeditor Generator, got {type(G).__name__}")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError("meta must be a dict")
    _check_meta(meta, "meta")
    derived = set(_derived_buffers(G.config))
    state = {}
    for name, t in G.state_dict().items():
        if name in derived:
            continue
        t = t.detach().to("cpu").clone()
        if half and t.is_floating_point():
            t = t.half()
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} has values outside the fp16 range; save with half=False")
        state[name] = t
    payload = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "config": G.config.to_dict(),
               "state_dict": state, "meta": meta}
    atomic_torch_save(payload, path)


def infer_config(state_dict: Mapping[str, Any]) -> GeneratorConfig:
    """Architecture of a rosinality-named state dict, from tensor shapes.

    size = 4 * 2 ** (number of upsampling blocks), width at 4 from
    ``input.input``, width at each higher resolution from that block's convs
    (or its ``to_rgbs``), ``n_mlp`` = consecutive ``style.{1..}`` layers,
    ``style_dim`` = input width of ``style.1``.  ``lr_mlp`` and ``blur_kernel``
    cannot be seen in the tensors and keep their StyleGAN2 defaults.
    """
    def shape(name: str) -> tuple[int, ...] | None:
        t = state_dict.get(name)
        return tuple(t.shape) if hasattr(t, "shape") else None

    const = shape("input.input")
    if const is None or len(const) != 4:
        raise CheckpointError("no constant input tensor 'input.input' [1, C, 4, 4]: not a StyleGAN2 generator")
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in state_dict:
        n_mlp += 1
    first = shape("style.1.weight")
    if n_mlp == 0 or first is None or len(first) != 2:
        raise CheckpointError("no mapping network ('style.1.weight' [w_dim, z_dim]): not a StyleGAN2 generator")
    n_blocks = 0
    for name in state_dict:
        m = re.match(r"(convs|to_rgbs)\.(\d+)\.", str(name))
        if m:
            i = int(m[2])
            n_blocks = max(n_blocks, i // 2 + 1 if m[1] == "convs" else i + 1)
    if n_blocks > _MAX_BLOCKS:
        raise CheckpointError(f"layer indices imply a {4 * 2 ** n_blocks}-pixel generator: not a plausible StyleGAN2")
    channels = {4: const[1]}
    for j in range(n_blocks):
        width = None
        for name, axis in ((f"convs.{2 * j}.conv.weight", 1), (f"convs.{2 * j + 1}.conv.weight", 1),
                           (f"to_rgbs.{j}.conv.weight", 2)):
            s = shape(name)
            if s is not None and len(s) > axis:
                width = s[axis]
                break
        if width is None:
            raise CheckpointError(f"cannot tell the width at resolution {2 ** (j + 3)}: "
                                  f"no convs.{2 * j}, convs.{2 * j + 1} or to_rgbs.{j} weights")
        channels[2 ** (j + 3)] = width
    if min(channels.values()) < 1 or first[1] < 1:
        raise CheckpointError("tensor shapes give a zero width")
    try:
        return GeneratorConfig(size=4 * 2 ** n_blocks, style_dim=int(first[1]), n_mlp=n_mlp, channels=channels)
    except ValueError as e:
        raise CheckpointError(f"inferred architecture is invalid: {e}") from None


def expected_shapes(config: GeneratorConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a checkpoint must provide for ``config``.

    Parameters and noise maps of :class:`Generator`, in rosinality names; not
    ``w_avg`` and not the blur-kernel buffers (see :func:`_derived_buffers`).
    """
    c, d = config.channels, config.style_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, config.n_mlp + 1):
        shapes[f"style.{i}.weight"] = (d, d)
        shapes[f"style.{i}.bias"] = (d,)
    shapes["input.input"] = (1, c[4], 4, 4)

    def styled(name: str, cin: int, cout: int) -> None:
        shapes.update({f"{name}.conv.weight": (1, cout, cin, 3, 3), f"{name}.conv.modulation.weight": (cin, d),
                       f"{name}.conv.modulation.bias": (cin,), f"{name}.noise.weight": (1,),
                       f"{name}.activate.bias": (cout,)})

    def to_rgb(name: str, cin: int) -> None:
        shapes.update({f"{name}.conv.weight": (1, 3, cin, 1, 1), f"{name}.conv.modulation.weight": (cin, d),
                       f"{name}.conv.modulation.bias": (cin,), f"{name}.bias": (1, 3, 1, 1)})

    styled("conv1", c[4], c[4])
    to_rgb("to_rgb1", c[4])
    shapes["noises.noise_0"] = (1, 1, 4, 4)
    for j, res in enumerate(sorted(c)[1:]):
        styled(f"convs.{2 * j}", c[res // 2], c[res])
        styled(f"convs.{2 * j + 1}", c[res], c[res])
        to_rgb(f"to_rgbs.{j}", c[res])
        shapes[f"noises.noise_{2 * j + 1}"] = (1, 1, res, res)
        shapes[f"noises.noise_{2 * j + 2}"] = (1, 1, res, res)
    return shapes


# ============================================================== reading files
def resolve_source(source: str | os.PathLike) -> str:
    """Path of a checkpoint given as a path or a shipped domain name (errors if absent)."""
    from ..domains import SHIPPED, get_domain

    if isinstance(source, str) and source in SHIPPED:
        path = get_domain(source).generator_path
        if not path.is_file():
            raise CheckpointError(f"the weights of domain {source!r} are not installed (expected {path}); "
                                  f"train them with `sfeditor-train generator --domain {source} --install`")
        return os.fspath(path)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a domain name, got {type(source).__name__}")
    path = os.fspath(source)
    if not os.path.exists(path):       # names installed with `sfeditor models`: sfeditor.model.registry.resolve_model
        raise FileNotFoundError(errno.ENOENT, f"checkpoint not found (shipped domains: {', '.join(SHIPPED)}; "
                                "installed models: `sfeditor models list`)", path)
    return path


def _read_file(path: str) -> tuple[Any, str]:
    """The object stored in ``path`` and the container kind, refusing anything unsafe."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "checkpoint not found", path)
    if os.path.isdir(path):
        raise CheckpointError("is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError("is not a regular file (a device, pipe or socket)")
    if os.path.getsize(path) == 0:
        raise CheckpointError("file is empty")
    from ..integrity import IntegrityError, verify_shipped

    try:
        verify_shipped(path)               # shipped resources: SHA-256 against resources/MANIFEST.json
    except IntegrityError as e:
        raise CheckpointError(str(e)) from None
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError("file is truncated or corrupt (zip archive without its central directory)")
        return _torch_load(path, mmap=True), "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:   # pickle protocol 2..5
        with open(path, "rb") as f:
            first = _safe_unpickle(f)
        if type(first) is int and first == _TORCH_LEGACY_MAGIC:
            return _torch_load(path, mmap=False), "torch-legacy"
        return first, "pickle"
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError("this is a Git LFS pointer, not the weights (fetch them with `git lfs pull`)")
    if head.lstrip()[:1] in (b"{", b"["):
        raise CheckpointError("not a StyleGAN2 checkpoint: this is a text/JSON file")
    raise CheckpointError(f"not a StyleGAN2 checkpoint: neither a PyTorch file nor a pickle "
                          f"(starts with {head[:8]!r})")


def _safe_unpickle(f) -> Any:
    try:
        return SafeUnpickler(f).load()
    except UnsafePickleError as e:
        raise CheckpointError(f"refusing to load: {e}") from None
    except EOFError:
        raise CheckpointError("file is truncated (the pickle ends early)") from None
    except pickle.UnpicklingError as e:
        msg = _first_line(e)
        if "Weights only load failed" in str(e):   # a tensor storage inside the pickle
            raise CheckpointError(_weights_only_message(e)) from None
        if "truncated" in msg:
            raise CheckpointError("file is truncated (the pickle ends early)") from None
        raise CheckpointError(f"not a readable pickle ({msg})") from None
    except RecursionError:
        raise CheckpointError("pickle is nested too deeply") from None
    except MemoryError:
        raise CheckpointError("the pickle needs more memory than its size allows: refusing") from None
    except CheckpointError:
        raise
    except Exception as e:  # a stand-in called with arguments no real checkpoint uses
        raise CheckpointError(f"malformed pickle ({type(e).__name__}: {_first_line(e)})") from None


def _torch_load(path: str, mmap: bool) -> Any:
    try:   # CRCs, declared storage sizes and views before anything is allocated
        inspect_torch_file(path)
    except TorchFileError as e:
        raise CheckpointError(str(e)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_weights_only_message(e)) from None
    except EOFError:
        raise CheckpointError("file is truncated (the data ends early)") from None
    except (RuntimeError, OSError, ValueError) as e:
        msg = _first_line(e)
        if any(s in msg for s in ("EOF", "corrupt", "PytorchStreamReader", "zip archive", "Invalid argument")):
            raise CheckpointError(f"file is truncated or corrupt ({msg})") from None
        raise CheckpointError(f"not a readable PyTorch file ({type(e).__name__}: {msg})") from None


def _weights_only_message(e: Exception) -> str:
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"refusing to load: the file references {m[1]}, which could execute code"
    m = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if m:
        return f"refusing to load: torch.load(weights_only=True) rejected the file ({m[1].strip()})"
    return f"not a readable PyTorch file ({_first_line(e)})"


# ============================================================ format dispatch
def _dispatch(obj: Any) -> CheckpointData:
    if isinstance(obj, TFNetworkRecord) or (isinstance(obj, (tuple, list)) and obj
                                            and all(isinstance(x, TFNetworkRecord) for x in obj)):
        return _from_tf(obj)
    if isinstance(obj, dict):
        fmt = obj.get("format")
        if fmt == FORMAT_TAG:
            return _from_sfeditor(obj)
        if isinstance(fmt, str) and fmt.startswith("sfeditor-"):
            raise CheckpointError(f"this is an sfeditor {fmt[len('sfeditor-'):]} file, not a generator")
        if "g_ema" in obj:
            return _from_rosinality(obj["g_ema"], obj)
        if any(isinstance(obj.get(k), PickledModule) for k in ("G_ema", "G")):
            return _from_ada(obj)
        if "input.input" in obj or "style.1.weight" in obj:
            return _from_rosinality(obj, None)
        sd = obj.get("state_dict")
        if isinstance(sd, dict) and any(str(k).startswith("decoder.") for k in sd):   # e4e / pSp
            dec = {k[len("decoder."):]: v for k, v in sd.items() if str(k).startswith("decoder.")}
            data = _from_rosinality(dec, obj)
            data.info["source"] = "decoder of an encoder checkpoint (e4e/pSp)"
            return data
        keys = [str(k) for k in obj]
        raise CheckpointError(f"not a StyleGAN2 checkpoint: a dict with keys {_few(keys, 8)}; expected 'g_ema' "
                              f"(rosinality), 'G_ema' (NVIDIA), a generator state dict or an sfeditor generator")
    raise CheckpointError(f"not a StyleGAN2 checkpoint: the file holds a {type(obj).__name__}")


def _from_sfeditor(obj: dict) -> CheckpointData:
    version = obj.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"sfeditor generator file has an invalid version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"written by a newer sfeditor (format version {version}; this one reads "
                              f"up to {FORMAT_VERSION})")
    cfg = obj.get("config")
    if not isinstance(cfg, dict):
        raise CheckpointError("sfeditor generator file has no config")
    try:
        config = GeneratorConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid generator config: {e}") from None
    sd = obj.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError("sfeditor generator file has no state_dict")
    half = any(isinstance(t, torch.Tensor) and t.dtype == torch.float16 for t in sd.values())
    sd = {str(k): _as_float(str(k), v) for k, v in sd.items()}
    w_avg = sd.pop("w_avg", None)
    try:
        sd, prior = split_prior_state(sd)
    except PriorError as e:
        raise CheckpointError(str(e)) from None
    info: dict = {"version": version, "meta": obj.get("meta") or {}, "stored_dtype": "float16" if half else "float32"}
    if w_avg is not None and not bool(w_avg.any()):
        w_avg = None   # never computed (a fresh generator): recompute on load
        info["w_avg"] = "stored as zeros (never computed)"
    inferred = infer_config(sd)
    mine = (config.size, config.style_dim, config.n_mlp, config.channels)
    theirs = (inferred.size, inferred.style_dim, inferred.n_mlp, inferred.channels)
    if mine != theirs:
        raise CheckpointError(f"config (size, w_dim, n_mlp, channels) = {mine} does not match the tensors {theirs}")
    data = _finish(sd, w_avg, "sfeditor", info, config)
    if prior is not None:
        if prior.dim != config.style_dim:
            raise CheckpointError(f"the mixture prior samples {prior.dim}-dim codes; the generator's w has "
                                  f"{config.style_dim}")
        data.prior = prior
        info["prior"] = {"components": prior.n_components, "rank": prior.rank}
    return data


def _from_rosinality(g_ema: Any, whole: dict | None) -> CheckpointData:
    if not isinstance(g_ema, dict):
        raise CheckpointError(f"'g_ema' is a {type(g_ema).__name__}, not a state dict")
    sd = {str(k): _as_float(str(k), v) for k, v in g_ema.items()}
    info: dict = {}
    w_avg = None
    if whole is not None:
        info["keys"] = sorted(str(k) for k in whole)
        if whole.get("latent_avg") is not None:
            w_avg = _as_float("latent_avg", whole["latent_avg"])
        args = whole.get("args")
        if isinstance(args, argparse.Namespace):
            info["args"] = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
        if isinstance(whole.get("ada_aug_p"), (int, float)):
            info["ada_aug_p"] = float(whole["ada_aug_p"])
    return _finish(sd, w_avg, "rosinality", info)


def _from_ada(obj: dict) -> CheckpointData:
    name = "G_ema" if isinstance(obj.get("G_ema"), PickledModule) else "G"
    net = obj[name]
    info: dict = {"network": name, "class": net.class_name, "keys": sorted(str(k) for k in obj)}
    kwargs = net.state.get("_init_kwargs", net.state.get("init_kwargs"))
    if isinstance(kwargs, dict):
        info["init_kwargs"] = _plain(kwargs)
        if int(kwargs.get("c_dim", 0) or 0) > 0:
            raise CheckpointError(f"conditional generators (c_dim={kwargs['c_dim']}) are not supported")
        if int(kwargs.get("img_channels", 3) or 3) != 3:
            raise CheckpointError(f"only RGB generators are supported (img_channels={kwargs['img_channels']})")
    flat: dict[str, Any] = {}
    _flatten_module(net, "", flat, 0)
    if any(k.startswith("synthesis.input.") or re.match(r"synthesis\.L\d+_", k) for k in flat):
        raise CheckpointError("this is a StyleGAN3 (alias-free) generator; only StyleGAN2 generators are supported")
    if any(k.startswith("mapping.embed.") for k in flat):
        raise CheckpointError("conditional generators (mapping.embed) are not supported")
    sd, ignored = _apply_rules(flat, _ADA_RULES, "NVIDIA stylegan2-ada-pytorch")
    info["ignored"] = ignored
    return _finish(sd, sd.pop("latent_avg", None), "nvidia-ada", info)


def _from_tf(obj: Any) -> CheckpointData:
    nets = [obj] if isinstance(obj, TFNetworkRecord) else list(obj)
    net = next((n for n in nets if n.name == "Gs"), None)
    if net is None:  # no 'Gs': the last generator-looking network
        cands = [n for n in nets if isinstance(n.state.get("components"), dict) and "synthesis" in n.state["components"]]
        if not cands:
            raise CheckpointError(f"TensorFlow pickle without a generator network (networks: "
                                  f"{', '.join(n.name for n in nets)})")
        net = cands[-1]
    info: dict = {"network": net.name, "networks": [n.name for n in nets]}
    if isinstance(net.state.get("static_kwargs"), dict):
        info["static_kwargs"] = _plain(net.state["static_kwargs"])
    flat: dict[str, Any] = {}
    _flatten_tf(net, "", flat, 0)
    sd, ignored = _apply_rules(flat, _TF_RULES, "NVIDIA TensorFlow StyleGAN2")
    info["ignored"] = ignored
    return _finish(sd, sd.pop("latent_avg", None), "nvidia-tf", info)


def _finish(sd: dict[str, torch.Tensor], w_avg: torch.Tensor | None, fmt: str, info: dict,
            config: GeneratorConfig | None = None) -> CheckpointData:
    config = config or infer_config(sd)
    sd = _check_tensors(sd, config)
    if w_avg is not None:
        w_avg = _w_avg_vector(w_avg, config.style_dim)
    return CheckpointData(sd, w_avg, config, fmt, info)


# ================================================================ validation
def _derived_buffers(config: GeneratorConfig) -> dict[str, torch.Tensor]:
    """Resampling-kernel buffers: fixed by ``config.blur_kernel``, optional in files."""
    k = make_kernel(config.blur_kernel) * 4
    out = {}
    for j in range(int(math.log2(config.size)) - 2):
        out[f"convs.{2 * j}.conv.blur.kernel"] = k
        out[f"to_rgbs.{j}.upsample.kernel"] = k
    return out


def _check_tensors(sd: dict[str, torch.Tensor], config: GeneratorConfig) -> dict[str, torch.Tensor]:
    shapes = expected_shapes(config)
    derived = _derived_buffers(config)
    bad = [f"tensor {k} has shape {list(sd[k].shape)}, expected {list(s)}"
           for k, s in shapes.items() if k in sd and tuple(sd[k].shape) != s]
    for k, ref in derived.items():
        if k in sd and (sd[k].shape != ref.shape or not torch.allclose(sd[k], ref, atol=1e-6)):
            bad.append(f"buffer {k} is not the {list(config.blur_kernel)} resampling filter this generator uses")
    missing = [k for k in shapes if k not in sd]
    unexpected = [k for k in sd if k not in shapes and k not in derived]
    problems = []
    if bad:
        problems.append("; ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""))
    if missing:
        problems.append(f"missing tensors: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_few(unexpected)}")
    if problems:
        raise CheckpointError(f"the weights do not fit a {config.size}x{config.size} StyleGAN2 generator "
                              f"(w_dim {config.style_dim}, {config.n_mlp} mapping layers): " + "; ".join(problems))
    return {k: sd[k] for k in shapes}


def _as_float(name: str, value: Any) -> torch.Tensor:
    """A float32, contiguous CPU copy of a tensor / numpy array / number, finite."""
    if isinstance(value, (np.ndarray, np.generic, float, int)) and not isinstance(value, bool):
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise CheckpointError(f"tensor {name} has numpy dtype {arr.dtype}, expected numbers")
        value = torch.from_numpy(np.array(arr, dtype=np.float32))
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{name} is a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise CheckpointError(f"tensor {name} has dtype {value.dtype}, expected floating point")
    try:
        t = value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    except (RuntimeError, NotImplementedError) as e:
        raise CheckpointError(f"tensor {name} cannot be read ({_first_line(e)})") from None
    if not torch.isfinite(t).all():
        raise CheckpointError(f"tensor {name} contains NaN or infinite values")
    return t


def _w_avg_vector(t: torch.Tensor, style_dim: int) -> torch.Tensor:
    """Mean w as [style_dim]; accepts [D], [1, D] and per-layer [n, D] (rows averaged)."""
    if t.ndim == 1 and t.shape[0] == style_dim:
        return t
    if t.ndim >= 2 and t.shape[-1] == style_dim:
        return t.reshape(-1, style_dim).mean(0)
    raise CheckpointError(f"mean w (w_avg / latent_avg) has shape {list(t.shape)}, expected [{style_dim}]")


def _check_meta(value: Any, where: str) -> None:
    if isinstance(value, (str, int, float, bool, type(None))):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_meta(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r}")
            _check_meta(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; meta may hold only JSON-like values")


def _plain(value: Any, depth: int = 0) -> Any:
    """EasyDicts and tuples -> plain dicts/lists of simple values (for ``info``)."""
    if depth > 8:
        return "..."
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return repr(value)[:80]


def _few(names: list[str], n: int = 5) -> str:
    head = ", ".join(names[:n])
    return head + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ===================================================== foreign-format tables
def _flatten_module(rec: PickledModule, prefix: str, out: dict, depth: int) -> None:
    """NVIDIA module tree -> ``{"mapping.fc0.weight": tensor, ...}`` (state_dict names)."""
    if depth > 32:
        raise CheckpointError("module tree is nested too deeply")
    st = rec.state
    skip = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        entries = st.get(group) or {}
        if not isinstance(entries, dict):
            raise CheckpointError(f"module {prefix or '<root>'} has a malformed {group}")
        for name, t in entries.items():
            if t is not None and not (group == "_buffers" and name in skip):
                out[prefix + str(name)] = t
    modules = st.get("_modules") or {}
    if not isinstance(modules, dict):
        raise CheckpointError(f"module {prefix or '<root>'} has malformed submodules")
    for name, sub in modules.items():
        if sub is None:
            continue
        if not isinstance(sub, PickledModule):
            raise CheckpointError(f"submodule {prefix}{name} is a {type(sub).__name__}, not a module")
        _flatten_module(sub, f"{prefix}{name}.", out, depth + 1)


def _flatten_tf(net: TFNetworkRecord, prefix: str, out: dict, depth: int) -> None:
    """TF network -> ``{"mapping/Dense0/weight": array, "synthesis/4x4/Conv/weight": ...}``.

    Sub-networks are prefixed with their key in ``components`` ("mapping",
    "synthesis"), not their TF scope name ("G_mapping", ...).
    """
    if depth > 8:
        raise CheckpointError("network tree is nested too deeply")
    variables = net.state.get("variables") or []
    if not isinstance(variables, (list, tuple)):
        raise CheckpointError(f"network {net.name} has malformed variables")
    for item in variables:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
            raise CheckpointError(f"network {net.name} has a malformed variable entry")
        out[prefix + item[0]] = item[1]
    components = net.state.get("components") or {}
    if not isinstance(components, dict):
        raise CheckpointError(f"network {net.name} has malformed components")
    for key, comp in components.items():
        if isinstance(comp, TFNetworkRecord):
            _flatten_tf(comp, f"{prefix}{key}/", out, depth + 1)


# A rule: (pattern matched against the whole source name,
#          target(match) -> rosinality name, None = known but not needed, "" = invalid index,
#          transform(tensor, match) -> tensor in rosinality layout).
Rule = tuple[re.Pattern, Callable[[re.Match], str | None], Callable[[torch.Tensor, re.Match], torch.Tensor]]


def _block_index(res: int) -> int | None:
    """Upsampling block k of resolution ``res`` (8 -> 0, 16 -> 1, ...)."""
    if res < 8 or res & (res - 1):
        return None
    return int(math.log2(res)) - 3


def _ada_conv(m: re.Match) -> str:
    res, layer = int(m["res"]), m["layer"]
    if res == 4:
        return "conv1" if layer == "conv1" else ""
    k = _block_index(res)
    return "" if k is None else f"convs.{2 * k + (layer == 'conv1')}"


def _ada_noise(m: re.Match) -> str:
    res, layer = int(m["res"]), m["layer"]
    if res == 4:
        return "noises.noise_0" if layer == "conv1" else ""
    k = _block_index(res)
    return "" if k is None else f"noises.noise_{2 * k + 1 + (layer == 'conv1')}"


def _rgb(m: re.Match) -> str:
    res = int(m["res"])
    if res == 4:
        return "to_rgb1"
    k = _block_index(res)
    return "" if k is None else f"to_rgbs.{k}"


def _sub(base: Callable[[re.Match], str], suffix: str) -> Callable[[re.Match], str]:
    """Target = ``base(m)`` + ``suffix`` (``{group}`` fields filled from the match); "" stays invalid."""
    def target(m: re.Match) -> str:
        b = base(m)
        return b and b + suffix.format_map(m.groupdict())
    return target


def _same(t: torch.Tensor, m: re.Match) -> torch.Tensor:
    return t


def _lead1(t: torch.Tensor, m: re.Match) -> torch.Tensor:          # [...] -> [1, ...]
    return t.unsqueeze(0)


def _vec(t: torch.Tensor, m: re.Match) -> torch.Tensor:            # [] -> [1]
    return t.reshape(-1)


def _rgb_bias(t: torch.Tensor, m: re.Match) -> torch.Tensor:       # [3] -> [1, 3, 1, 1]
    return t.reshape(1, -1, 1, 1)


def _noise_map(t: torch.Tensor, m: re.Match) -> torch.Tensor:      # [R, R] -> [1, 1, R, R]
    return t.reshape(1, 1, *t.shape[-2:]) if t.ndim >= 2 else t


def _transpose(t: torch.Tensor, m: re.Match) -> torch.Tensor:      # TF dense [in, out] -> [out, in]
    return t.t().contiguous() if t.ndim == 2 else t


def _plus_one(t: torch.Tensor, m: re.Match) -> torch.Tensor:       # TF stores the style bias without its +1
    return t + 1.0


def _tf_conv_weight(t: torch.Tensor, m: re.Match) -> torch.Tensor:
    """TF [kh, kw, I, O] -> [1, O, I, kh, kw].

    TF's ``upsample_conv_2d`` flips the kernel spatially before its transposed
    convolution; rosinality's (and ADA's) do not, so ``Conv0_up`` kernels are
    flipped here.
    """
    if t.ndim != 4:
        return t
    w = t.permute(3, 2, 0, 1).unsqueeze(0)
    if m.groupdict().get("layer") == "Conv0_up":
        w = w.flip([3, 4])
    return w.contiguous()


def _tf_conv(m: re.Match) -> str:
    res, layer = int(m["res"]), m["layer"]
    if res == 4:
        return "conv1" if layer == "Conv" else ""
    k = _block_index(res)
    if k is None or layer == "Conv":
        return ""
    return f"convs.{2 * k + (layer == 'Conv1')}"


def _rules(table: list[tuple[str, Any, Any]]) -> list[Rule]:
    return [(re.compile(p), (t if callable(t) else (lambda m, t=t: t)), f) for p, t, f in table]


_ADA_CONV = r"synthesis\.b(?P<res>\d+)\.(?P<layer>conv[01])"
_ADA_RGB = r"synthesis\.b(?P<res>\d+)\.torgb"

# stylegan2-ada-pytorch / stylegan3 ``networks_stylegan2`` -> rosinality (checked against NVlabs
# stylegan2-ada-pytorch training/networks.py and torch_utils/ops/conv2d_resample.py).  FullyConnectedLayer
# (weight_gain lr/sqrt(in), bias_gain lr) equals EqualLinear, affine layers are bias_init=1 like
# rosinality's modulation, conv weights are stored in the same orientation (ADA's up-conv does
# not flip), ToRGB's 1/sqrt(I) gain applied to the styles equals rosinality's weight scale, and
# the unconditional mapping normalises z with normalize_2nd_moment (= PixelNorm): every tensor
# copies as-is up to a reshape.  ADA's conv_clamp (256) is not reproduced; it only bites on
# activations far outside what a trained generator produces.
_ADA_RULES = _rules([
    (r"mapping\.fc(?P<i>\d+)\.(?P<p>weight|bias)", lambda m: f"style.{int(m['i']) + 1}.{m['p']}", _same),
    (r"mapping\.w_avg", "latent_avg", _same),
    (r"synthesis\.b4\.const", "input.input", _lead1),                          # [C,4,4] -> [1,C,4,4]
    (_ADA_CONV + r"\.weight", _sub(_ada_conv, ".conv.weight"), _lead1),        # [O,I,3,3] -> [1,O,I,3,3]
    (_ADA_CONV + r"\.affine\.(?P<p>weight|bias)", _sub(_ada_conv, ".conv.modulation.{p}"), _same),
    (_ADA_CONV + r"\.noise_strength", _sub(_ada_conv, ".noise.weight"), _vec),
    (_ADA_CONV + r"\.bias", _sub(_ada_conv, ".activate.bias"), _same),
    (_ADA_CONV + r"\.noise_const", _ada_noise, _noise_map),
    (_ADA_RGB + r"\.weight", _sub(_rgb, ".conv.weight"), _lead1),              # [3,I,1,1] -> [1,3,I,1,1]
    (_ADA_RGB + r"\.affine\.(?P<p>weight|bias)", _sub(_rgb, ".conv.modulation.{p}"), _same),
    (_ADA_RGB + r"\.bias", _sub(_rgb, ".bias"), _rgb_bias),
    (r"(?:.+\.)?resample_filter", None, _same),                                # the [1,3,3,1] FIR filter
])

_TF_LAYER = r"synthesis/(?P<res>\d+)x(?P=res)/(?P<layer>Conv|Conv0_up|Conv1)"
_TF_RGB = r"synthesis/(?P<res>\d+)x(?P=res)/ToRGB"

# NVIDIA TF StyleGAN2 -> rosinality (checked against NVlabs/stylegan2 training/networks_stylegan2.py,
# dnnlib/tflib/ops/upfirdn_2d.py and rosinality's convert_weight.py):
# * get_weight stores [kh, kw, I, O] / dense [in, out] with the runtime coefficient applied outside
#   the variable, like rosinality's scale: transpose only;
# * modulated_conv2d_layer computes s = dense(w, mod_weight) + mod_bias + 1 ("initially 1"), so the
#   stored mod_bias lacks the +1 that rosinality's modulation bias (bias_init=1) holds;
# * upsample_conv_2d flips the kernel (w[::-1, ::-1]) before conv2d_transpose: Conv0_up is flipped;
# * noise{i} is indexed by layer (4x4/Conv = 0, Conv0_up = 2*log2(R)-5, Conv1 = 2*log2(R)-4),
#   exactly rosinality's noises.noise_{i}; noise_strength is a scalar.
_TF_RULES = _rules([
    (r"dlatent_avg", "latent_avg", _same),
    (r"(?:.+/)?lod", None, _same),                                             # progressive-growing level
    (r"mapping/Dense(?P<i>\d+)/weight", lambda m: f"style.{int(m['i']) + 1}.weight", _transpose),
    (r"mapping/Dense(?P<i>\d+)/bias", lambda m: f"style.{int(m['i']) + 1}.bias", _same),
    (r"synthesis/4x4/Const/const", "input.input", _same),                      # [1,C,4,4]
    (_TF_LAYER + r"/weight", _sub(_tf_conv, ".conv.weight"), _tf_conv_weight),
    (_TF_LAYER + r"/mod_weight", _sub(_tf_conv, ".conv.modulation.weight"), _transpose),
    (_TF_LAYER + r"/mod_bias", _sub(_tf_conv, ".conv.modulation.bias"), _plus_one),
    (_TF_LAYER + r"/noise_strength", _sub(_tf_conv, ".noise.weight"), _vec),
    (_TF_LAYER + r"/bias", _sub(_tf_conv, ".activate.bias"), _same),
    (_TF_RGB + r"/weight", _sub(_rgb, ".conv.weight"), _tf_conv_weight),
    (_TF_RGB + r"/mod_weight", _sub(_rgb, ".conv.modulation.weight"), _transpose),
    (_TF_RGB + r"/mod_bias", _sub(_rgb, ".conv.modulation.bias"), _plus_one),
    (_TF_RGB + r"/bias", _sub(_rgb, ".bias"), _rgb_bias),
    (r"synthesis/noise(?P<i>\d+)", lambda m: f"noises.noise_{int(m['i'])}", _same),   # [1,1,R,R]
])


def _apply_rules(flat: dict[str, Any], rules: list[Rule], what: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename and reshape every source tensor by the first rule that matches it.

    A name no rule accepts is an error (a different architecture: resnet/orig
    synthesis, labels, StyleGAN1 ...).  Whether every *needed* tensor arrived is
    checked afterwards against :func:`expected_shapes`.
    """
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unknown, ignored = [], []
    for name, value in flat.items():
        for pattern, target_of, transform in rules:
            m = pattern.fullmatch(name)
            if m:
                break
        else:
            unknown.append(name)
            continue
        target = target_of(m)
        if target is None:
            ignored.append(name)
            continue
        if not target:
            unknown.append(name)
            continue
        if target in source:
            raise CheckpointError(f"{name} and {source[target]} both map to {target}")
        out[target] = transform(_as_float(name, value), m)
        source[target] = name
    if unknown:
        raise CheckpointError(f"tensors a StyleGAN2 'skip' generator does not have ({what}): {_few(unknown)}")
    return out, ignored
