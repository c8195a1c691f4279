"""The editor's document: a *composition* of per-node codes over a region tree.

A :class:`Composition` records what the desktop editor shows (GitHub issue 7):
the domain and the model it was made with (generator fingerprint, hierarchy
file path / identity), the region tree (paper Sec. 4.5), and for EVERY node
(leaves and internal nodes, which carry the global / alignment code) a seed,
an optional explicit code (w ``[1, D]`` or w+ ``[1, L, D]``, e.g. from an
inversion), a locked flag, and for internal nodes a collapsed flag (the
paper's bypass: the subtree takes that node's own code).  The truncation psi
applies to seed codes only; explicit codes are used as they are.

Node states are frozen (:class:`NodeState`) and code tensors are never
changed in place, so :meth:`Composition.snapshot` is a cheap, safe copy for a
background render.

File format (versioned JSON)::

    {"format": "sfeditor-composition", "version": 1,
     "domain": "toy-faces",
     "model": {"generator_fingerprint": "sha256:..." | null,
               "hierarchy": {"path": "..." | null, "identity": "..." | null}},
     "tree": {"name": "all", "children": ["a", "b"]},
     "truncation": 0.7,
     "nodes": {"all": {"seed": 3, "locked": false, "collapsed": false, "code": null},
               "a": {"seed": 4, "locked": true, "collapsed": false,
                     "code": {"dtype": "float32", "shape": [1, 16], "base64": "..."}}, ...}}

Codes may also be nested lists.  :func:`embed_in_png` / :func:`extract_from_png`
carry the same JSON in a compressed ``iTXt`` chunk (keyword ``sfeditor-composition``).
"""
from __future__ import annotations

import json
import math
import os
import struct
import weakref
import zlib
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..regions.regions_file import decode_array, encode_array
from ..regions.tree import RegionNode, validate_tree
from ..model.style_code import StyleCode

FORMAT = "sfeditor-composition"
VERSION = 1
PNG_KEYWORD = "sfeditor-composition"
SEED_LIMIT = 2 ** 32            # seeds are 0 .. 2**32 - 1
TRUNCATION_RANGE = (0.0, 2.0)
_MAX_PNG_TEXT = 64 * 1024 * 1024  # refuse to inflate more than this from a PNG chunk
MAX_COMPOSITION_BYTES = 64 << 20     # a composition is a few KB; its PNG a few MB

__all__ = ["FORMAT", "VERSION", "NodeState", "Composition", "canonical_code", "embed_in_png",
           "extract_from_png", "PNG_KEYWORD"]


# --------------------------------------------------------------------- nodes
_CANONICAL: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()  # id -> our tensors


def canonical_code(code, what: str = "code") -> torch.Tensor:
    """A float32 CPU copy of a w / w+ code shaped ``[1, D]`` (w) or ``[1, L, D]`` (w+).

    Accepts ``[D]``, ``[1, D]``, ``[L, D]`` (L > 1, read as w+) and ``[1, L, D]``.
    """
    t = torch.as_tensor(np.asarray(code) if not isinstance(code, torch.Tensor) else code)
    t = t.detach().to("cpu", torch.float32).clone()
    if t.ndim == 1:
        t = t[None]
    elif t.ndim == 2 and t.shape[0] > 1:
        t = t[None]
    if not (t.ndim in (2, 3) and t.shape[0] == 1 and t.numel() > 0):
        raise ValueError(f"{what}: expected a w [1, D] or w+ [1, L, D] code, got shape {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: code holds non-finite values")
    _CANONICAL[id(t)] = t
    return t


@dataclass(frozen=True)
class NodeState:
    """One node's settings.  ``code`` (when set) overrides ``seed``."""

    seed: int = 0
    code: torch.Tensor | None = None
    locked: bool = False
    collapsed: bool = False

    def same_as(self, other: "NodeState") -> bool:
        """Value equality (tensors compared by content)."""
        if (self.seed, self.locked, self.collapsed) != (other.seed, other.locked, other.collapsed):
            return False
        if (self.code is None) != (other.code is None):
            return False
        return self.code is None or (self.code.shape == other.code.shape and torch.equal(self.code, other.code))


def _check_seed(seed, what: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{what}: seed must be an integer in 0..{SEED_LIMIT - 1}, got {seed!r}")
    return int(seed)


def _check_truncation(psi, what: str = "truncation") -> float:
    lo, hi = TRUNCATION_RANGE
    if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not math.isfinite(psi) or not lo <= psi <= hi:
        raise ValueError(f"{what}: must be a number in [{lo}, {hi}], got {psi!r}")
    return float(psi)


def _as_tree(tree) -> RegionNode:
    return RegionNode.parse(tree)


# --------------------------------------------------------------- composition
class Composition:
    """Per-node seeds / codes / flags over a region tree, plus truncation and model identity."""

    def __init__(self, tree, nodes: Mapping[str, NodeState] | None = None, *, truncation: float = 0.7,
                 domain: str = "", generator_fingerprint: str | None = None,
                 hierarchy_path: str | None = None, hierarchy_identity: str | None = None):
        self.tree = _as_tree(tree)
        names = [n.name for n in self.tree]
        self._internal = {n.name for n in self.tree if not n.is_leaf}
        given = dict(nodes or {})
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"nodes: {unknown} are not in the tree")
        self.nodes: dict[str, NodeState] = {}
        for i, name in enumerate(names):   # default seeds: the node's index in tree order
            st = given.get(name, NodeState(seed=i))
            self.nodes[name] = self._checked(name, st)
        self.truncation = _check_truncation(truncation)
        self.domain = domain
        self.generator_fingerprint = generator_fingerprint
        self.hierarchy_path = hierarchy_path
        self.hierarchy_identity = hierarchy_identity

    # ---------------------------------------------------------------- access
    @property
    def node_names(self) -> list[str]:
        """All nodes, parents first (breadth-first)."""
        return list(self.nodes)

    @property
    def leaves(self) -> list[str]:
        return [n.name for n in self.tree if n.is_leaf]

    @property
    def internal_nodes(self) -> list[str]:
        return [n.name for n in self.tree if not n.is_leaf]

    def is_internal(self, name: str) -> bool:
        self.state(name)
        return name in self._internal

    def state(self, name: str) -> NodeState:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r} in the composition (nodes: {', '.join(self.nodes)})") from None

    def _checked(self, name: str, st: NodeState) -> NodeState:
        if not isinstance(st, NodeState):
            raise TypeError(f"node {name!r}: expected a NodeState")
        _check_seed(st.seed, f"nodes.{name}")
        if st.collapsed and name not in self._internal:
            raise ValueError(f"nodes.{name}: only internal nodes can be collapsed ({name!r} is a leaf)")
        # our own tensors (never changed in place) are kept as they are, so identity-keyed caches stay
        # valid; anything else is copied, so the caller cannot change the composition behind its back
        code = st.code
        if code is not None and _CANONICAL.get(id(code)) is not code:
            code = canonical_code(code, f"nodes.{name}")
        return replace(st, seed=int(st.seed), code=code, locked=bool(st.locked), collapsed=bool(st.collapsed))

    def set_state(self, name: str, st: NodeState) -> bool:
        """Replace a node's state (validated); True if anything changed.  Commands go through this."""
        self.state(name)
        st = self._checked(name, st)
        if st.same_as(self.nodes[name]):
            return False
        self.nodes[name] = st
        return True

    def set_truncation(self, psi: float) -> bool:
        psi = _check_truncation(psi)
        if psi == self.truncation:
            return False
        self.truncation = psi
        return True

    def collapsed_nodes(self) -> set[str]:
        return {n for n, st in self.nodes.items() if st.collapsed}

    def snapshot(self) -> "Composition":
        """An independent copy (node states are frozen and codes never change in place)."""
        c = Composition.__new__(Composition)
        c.__dict__.update(self.__dict__)
        c.nodes = dict(self.nodes)
        return c

    def same_as(self, other: "Composition") -> bool:
        return (isinstance(other, Composition) and self.to_dict(lists=True) == other.to_dict(lists=True))

    # ----------------------------------------------------------------- codes
    def w_for(self, name: str, G) -> torch.Tensor:
        """The node's w ``[1, D]`` or w+ ``[1, L, D]`` on G's device."""
        st = self.state(name)
        if st.code is not None:
            return st.code.to(G.device)
        return G.sample_w(1, seed=st.seed, truncation=self.truncation)

    def code_for(self, name: str, G) -> StyleCode:
        """The node's S code: from its seed (with this truncation) or its explicit code."""
        return G.styles(self.w_for(name, G))

    def codes(self, G) -> dict[str, StyleCode]:
        """Every node's S code (the input of ``FusionHierarchy``)."""
        return {name: self.code_for(name, G) for name in self.nodes}

    def check_model(self, G=None, fingerprint: str | None = None) -> list[str]:
        """Human-readable problems using this composition with generator G (empty = fine)."""
        problems = []
        if fingerprint and self.generator_fingerprint and fingerprint != self.generator_fingerprint:
            problems.append("made with a different generator (fingerprint differs)")
        if G is not None:
            for name, st in self.nodes.items():
                if st.code is None:
                    continue
                if st.code.shape[-1] != G.style_dim or (st.code.ndim == 3 and st.code.shape[1] != G.n_latent):
                    problems.append(f"node {name!r}: code shape {list(st.code.shape)} does not fit this generator "
                                    f"(w [1, {G.style_dim}] or w+ [1, {G.n_latent}, {G.style_dim}])")
        return problems

    # ------------------------------------------------------------- save/load
    def to_dict(self, lists: bool = False) -> dict:
        def enc(code):
            if code is None:
                return None
            return code.tolist() if lists else encode_array(code.numpy(), "float32")
        return {
            "format": FORMAT, "version": VERSION, "domain": self.domain,
            "model": {"generator_fingerprint": self.generator_fingerprint,
                      "hierarchy": {"path": self.hierarchy_path, "identity": self.hierarchy_identity}},
            "tree": self.tree.to_dict(),
            "truncation": self.truncation,
            "nodes": {name: {"seed": st.seed, "locked": st.locked, "collapsed": st.collapsed, "code": enc(st.code)}
                      for name, st in self.nodes.items()},
        }

    def to_json(self, lists: bool = False) -> str:
        return json.dumps(self.to_dict(lists), indent=1)

    @classmethod
    def from_dict(cls, d) -> "Composition":
        """Parse and validate; every malformed field raises ValueError naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"composition: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise ValueError(f"format: not an sfeditor composition (format {d.get('format')!r})")
        v = d.get("version")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"version: must be a positive integer, got {v!r}")
        if v > VERSION:
            raise ValueError(f"version: composition version {v} is newer than this sfeditor supports ({VERSION})")
        extra = sorted(set(d) - {"format", "version", "domain", "model", "tree", "truncation", "nodes"})
        if extra:
            raise ValueError(f"composition: unknown keys {extra}")
        domain = d.get("domain", "")
        if not isinstance(domain, str):
            raise ValueError(f"domain: must be a string, got {domain!r}")
        model = d.get("model", {})
        if not isinstance(model, dict):
            raise ValueError("model: must be an object")
        fp = model.get("generator_fingerprint")
        if fp is not None and not isinstance(fp, str):
            raise ValueError(f"model.generator_fingerprint: must be a string or null, got {fp!r}")
        hier = model.get("hierarchy", {})
        if hier is None:
            hier = {}
        if not isinstance(hier, dict):
            raise ValueError("model.hierarchy: must be an object")
        for key in ("path", "identity"):
            if hier.get(key) is not None and not isinstance(hier[key], str):
                raise ValueError(f"model.hierarchy.{key}: must be a string or null, got {hier[key]!r}")
        if "tree" not in d:
            raise ValueError("tree: missing")
        tree = RegionNode.from_dict(d["tree"])   # raises ValueError "tree...: ..."
        validate_tree(tree)
        if "truncation" not in d:
            raise ValueError("truncation: missing")
        psi = _check_truncation(d["truncation"])
        raw = d.get("nodes")
        if not isinstance(raw, dict):
            raise ValueError("nodes: must be an object mapping node names to settings")
        names = [n.name for n in tree]
        missing = [n for n in names if n not in raw]
        unknown = sorted(set(raw) - set(names))
        if missing:
            raise ValueError(f"nodes: missing settings for {missing}")
        if unknown:
            raise ValueError(f"nodes: {unknown} are not in the tree")
        internal = {n.name for n in tree if not n.is_leaf}
        states = {}
        for name in names:
            e, where = raw[name], f"nodes.{name}"
            if not isinstance(e, dict):
                raise ValueError(f"{where}: must be an object")
            bad = sorted(set(e) - {"seed", "locked", "collapsed", "code"})
            if bad:
                raise ValueError(f"{where}: unknown keys {bad}")
            if "seed" not in e:
                raise ValueError(f"{where}.seed: missing")
            seed = _check_seed(e["seed"], where)
            flags = {}
            for key in ("locked", "collapsed"):
                val = e.get(key, False)
                if not isinstance(val, bool):
                    raise ValueError(f"{where}.{key}: must be true or false, got {val!r}")
                flags[key] = val
            if flags["collapsed"] and name not in internal:
                raise ValueError(f"{where}.collapsed: {name!r} is a leaf; only internal nodes can be collapsed")
            code = e.get("code")
            if code is not None:
                code = canonical_code(torch.from_numpy(decode_array(code, f"{where}.code")), f"{where}.code")
            states[name] = NodeState(seed=seed, code=code, **flags)
        return cls(tree, states, truncation=psi, domain=domain, generator_fingerprint=fp,
                   hierarchy_path=hier.get("path"), hierarchy_identity=hier.get("identity"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Composition":
        try:
            d = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"composition: not valid JSON ({e})") from None
        except RecursionError:
            raise ValueError("composition: the JSON is nested too deeply to be a composition") from None
        try:
            return cls.from_dict(d)
        except RecursionError:
            raise ValueError("composition: nested too deeply to be a composition") from None

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write (a crash leaves any previous file intact)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Composition":
        from ..validate import read_limited

        path = os.fspath(path)
        data = read_limited(path, MAX_COMPOSITION_BYTES, "composition file")
        try:
            return cls.from_json(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self) -> str:
        return (f"Composition(domain={self.domain!r}, tree={self.tree}, truncation={self.truncation}, "
                f"collapsed={sorted(self.collapsed_nodes())})")


# ---------------------------------------------------------------------- PNG
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _chunks(data: bytes) -> list[tuple[bytes, bytes, bool]]:
    """(type, payload, crc_ok) for every chunk; ValueError if the layout is broken."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[:8]) != _PNG_SIG:
        raise ValueError("not a PNG (signature missing)")
    data = bytes(data)
    out, pos = [], 8
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("truncated PNG chunk header")
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + n
        if end > len(data):
            raise ValueError(f"truncated PNG chunk {ctype!r}")
        payload = data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:end])
        out.append((ctype, payload, zlib.crc32(ctype + payload) & 0xFFFFFFFF == crc))
        pos = end
        if ctype == b"IEND":
            break
    if not out or out[0][0] != b"IHDR" or out[-1][0] != b"IEND":
        raise ValueError("PNG lacks IHDR / IEND")
    return out


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


class _TooLarge(ValueError):
    """A chunk that would inflate past the limit: refused, not skipped as damage."""


def _our_text(ctype: bytes, payload: bytes) -> str | None:
    """The text of a tEXt / iTXt chunk with our keyword (None: other chunk); ValueError if malformed."""
    key = PNG_KEYWORD.encode("latin-1") + b"\x00"
    if ctype not in (b"tEXt", b"iTXt") or not payload.startswith(key):
        return None
    rest = payload[len(key):]
    if ctype == b"tEXt":
        return rest.decode("latin-1")
    if len(rest) < 2:
        raise ValueError("iTXt chunk is truncated")
    flag, method, rest = rest[0], rest[1], rest[2:]
    parts = rest.split(b"\x00", 2)            # language tag, translated keyword, text
    if len(parts) != 3:
        raise ValueError("iTXt chunk is malformed")
    text = parts[2]
    if flag == 1:
        if method != 0:
            raise ValueError(f"iTXt compression method {method} is unknown")
        d = zlib.decompressobj()
        text = d.decompress(text, _MAX_PNG_TEXT)
        if d.unconsumed_tail:
            raise _TooLarge(f"the embedded composition inflates to more than {_MAX_PNG_TEXT >> 20} MiB; "
                            "refusing it (a compression bomb, not a composition)")
    elif flag != 0:
        raise ValueError(f"iTXt compression flag {flag} is invalid")
    return text.decode("utf-8")


def embed_in_png(png_bytes: bytes, composition: Composition) -> bytes:
    """The PNG with the composition in a compressed iTXt chunk before IEND (any older one replaced)."""
    chunks = _chunks(png_bytes)
    text = zlib.compress(composition.to_json().encode("utf-8"), 9)
    payload = PNG_KEYWORD.encode("latin-1") + b"\x00" + b"\x01\x00" + b"\x00" + b"\x00" + text
    out = [_PNG_SIG]
    for ctype, data, _ in chunks:
        try:
            ours = _our_text(ctype, data) is not None
        except (ValueError, zlib.error, UnicodeDecodeError):
            ours = True                       # a broken chunk of ours: drop it
        if ours:
            continue
        if ctype == b"IEND":
            out.append(_chunk(b"iTXt", payload))
        out.append(_chunk(ctype, data))
    return b"".join(out)


def extract_from_png(data: bytes) -> Composition | None:
    """The composition embedded by :func:`embed_in_png`, or None.

    None for anything that is not a PNG, a PNG without our chunk, or a chunk that
    is damaged (bad CRC, broken compression or text).  An intact chunk holding an
    invalid composition (e.g. a newer format version) raises ValueError, so the
    caller can tell the user why it was not loaded.
    """
    try:
        chunks = _chunks(data)
    except ValueError:
        return None
    for ctype, payload, crc_ok in chunks:
        if not crc_ok:
            continue
        try:
            text = _our_text(ctype, payload)
        except _TooLarge:
            raise
        except (ValueError, zlib.error, UnicodeDecodeError):
            continue
        if text is None:
            continue
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            continue
        except RecursionError:
            raise ValueError("the embedded composition is nested too deeply to be one") from None
        try:
            return Composition.from_dict(d)
        except RecursionError:
            raise ValueError("the embedded composition is nested too deeply to be one") from None
    return None
