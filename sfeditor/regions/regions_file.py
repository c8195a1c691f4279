"""The *regions file*: a domain's semantic regions, discovered from the generator.

Paper Sec. 4.2: DeepPixels are clustered (Ward), each cluster is labelled
with a semantic region (several clusters may share one), and a new image is
segmented by giving each DeepPixel the label of its nearest cluster.  Sec. 4.5
and Appendix A.1: the regions are organised as a binary tree (one FusionNet
per internal node, leaves = the regions users control).

A regions file is versioned JSON::

    {"format": "sfeditor-regions", "version": 1 (or 2, below),
     "domain": "toy-faces",
     "generator": {"resolution": 64, "style_size": 2176, "deep_pixel_channels": 1440,
                   "fingerprint": "sha256:...",              # the whole generator (provenance)
                   "synthesis_fingerprint": "sha256:..."},   # all but the mapping: what the check uses
     "deep_pixel_size": 64,
     "normalization": "layer",                      # how distances are measured (below)
     "channel_scale": <array [C]> or null,
     "centroids": <array [K, C]>,                   # raw DeepPixel space
     "temperature": 0.05,                           # default soft-min temperature (optional)
     "clusters": {"0": "hair", "1": "skin", ...},   # cluster id -> leaf region
     "tree": {"name": "all", "children": [{"name": "face", "children": [...]}, ..., "hair"]},
     "clustering": {...how it was made...},
     "card": {...metrics...}}

Version 2 stores the centroids over the *active* channels only: a channel whose
distance weight ``1 / channel_scale_c ** 2`` is below 1e-9 of the largest weighs
nothing (clustering with ``min_resolution`` gives the coarse layers 1e-12), so
``"active_channels": [[start, end], ...]`` (half-open ranges) name the stored
columns of ``"centroids"`` ``[K, C_active]`` and ``"inactive_fill"``
``[C - C_active]`` gives every centroid the same value on the other channels
(their mean).  A channel equal for every centroid adds the same term to every
distance, so nearest centroids and soft masks are unchanged.  Files with no
inactive channel are written as version 1.

Tree leaves are plain strings (the form :mod:`sfeditor.fusion.hierarchy` reads too).
Arrays are ``{"dtype": "float16"|"float32", "shape": [...], "base64": "..."}``
(little-endian) or plain nested lists.  The distance between a DeepPixel x and
centroid c is ``mean_c ((x_c - c_c) / channel_scale_c) ** 2`` (scale 1 when
``channel_scale`` is null).
"""
from __future__ import annotations

import base64
import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..atomic import atomic_write_text
from ..model.identity import fits_fingerprints, generator_identity
from .tree import RegionNode, internal_nodes, leaves, region_of, validate_tree

FORMAT = "sfeditor-regions"
VERSION = 1               # a file whose channels all weigh something
COMPACT_VERSION = 2       # centroids stored over the active channels (module doc)
READ_VERSIONS = (VERSION, COMPACT_VERSION)
INACTIVE_WEIGHT = 1e-9    # a channel weighing less than this x the heaviest counts as inactive
NORMALIZATIONS = ("none", "channel", "layer")


# ------------------------------------------------------------------ arrays
def encode_array(a: np.ndarray, dtype: str = "float16") -> dict:
    """A compact JSON form of a float array (base64 of little-endian bytes)."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    a = np.ascontiguousarray(np.asarray(a, dtype=np.dtype(dtype).newbyteorder("<")))
    return {"dtype": dtype, "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(obj, what: str) -> np.ndarray:
    """Inverse of :func:`encode_array`; also accepts nested lists.  Returns float32, checked finite."""
    if isinstance(obj, dict):
        try:
            dt = np.dtype(obj["dtype"]).newbyteorder("<")
            shape = tuple(int(s) for s in obj["shape"])
            raw = base64.b64decode(obj["base64"], validate=True)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{what}: malformed encoded array ({type(e).__name__}: {e})") from None
        if obj["dtype"] not in ("float16", "float32"):
            raise ValueError(f"{what}: array dtype must be float16 or float32, got {obj['dtype']!r}")
        if len(raw) != int(np.prod(shape)) * dt.itemsize:
            raise ValueError(f"{what}: {len(raw)} bytes do not hold an array of shape {list(shape)}")
        a = np.frombuffer(raw, dtype=dt).reshape(shape).astype(np.float32)
    elif isinstance(obj, list):
        try:
            a = np.asarray(obj, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: not a rectangular array of numbers ({e})") from None
    else:
        raise ValueError(f"{what}: expected an encoded array or nested lists, got {type(obj).__name__}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: array holds non-finite values")
    return a


# --------------------------------------------------------------- generator id


# ---------------------------------------------------------------- the file
def _expand_centroids(d: dict, stored: np.ndarray) -> np.ndarray:
    """``[K, C]`` centroids of a version-2 file from its active columns and fill (module doc)."""
    for key in ("active_channels", "inactive_fill"):
        if key not in d:
            raise ValueError(f"{key}: missing (version {COMPACT_VERSION} stores centroids over the active channels)")
    c = d["generator"].get("deep_pixel_channels") if isinstance(d["generator"], dict) else None
    if not isinstance(c, int) or isinstance(c, bool) or c <= 0:
        raise ValueError("generator.deep_pixel_channels: must be a positive integer")
    ranges = d["active_channels"]
    ok = isinstance(ranges, list) and len(ranges) > 0 and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
        for r in ranges)
    if not ok:
        raise ValueError("active_channels: must be a non-empty list of [start, end] integer pairs")
    active = np.zeros(c, dtype=bool)
    prev = 0
    for a, b in ranges:
        if not (prev <= a < b <= c):
            raise ValueError(f"active_channels: range [{a}, {b}] is empty, out of order, overlapping or outside "
                             f"the {c} DeepPixel channels")
        active[a:b] = True
        prev = b
    if stored.ndim != 2 or stored.shape[1] != int(active.sum()):
        raise ValueError(f"centroids: width {stored.shape[1] if stored.ndim == 2 else '?'} does not match the "
                         f"{int(active.sum())} active channels")
    fill = decode_array(d["inactive_fill"], "inactive_fill")
    if fill.shape != (c - int(active.sum()),):
        raise ValueError(f"inactive_fill: must have shape [{c - int(active.sum())}], got {list(fill.shape)}")
    full = np.empty((stored.shape[0], c), dtype=np.float32)
    full[:, active] = stored
    full[:, ~active] = fill
    return full


@dataclass
class RegionsFile:
    """A domain's regions: cluster centroids, their labels and the region hierarchy."""

    domain: str
    generator: dict
    centroids: np.ndarray                  # [K, C] float32, raw DeepPixel space
    clusters: dict[int, str]               # cluster id -> leaf region name
    tree: RegionNode
    deep_pixel_size: int = 64
    normalization: str = "none"
    channel_scale: np.ndarray | None = None  # [C] or None (= all ones)
    temperature: float | None = None
    clustering: dict = field(default_factory=dict)
    card: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.centroids = np.asarray(self.centroids, dtype=np.float32)
        if self.channel_scale is not None:
            self.channel_scale = np.asarray(self.channel_scale, dtype=np.float32)
        self.clusters = {int(k): v for k, v in self.clusters.items()}
        self.validate()

    # ------------------------------------------------------------ queries
    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def channels(self) -> int:
        return int(self.centroids.shape[1])

    def active_channels(self) -> np.ndarray:
        """Bool ``[C]``: the channels whose distance weight ``1 / channel_scale ** 2`` counts (module doc)."""
        if self.channel_scale is None:
            return np.ones(self.channels, dtype=bool)
        w = 1.0 / np.square(self.channel_scale.astype(np.float64))
        return w >= INACTIVE_WEIGHT * w.max()

    @property
    def leaves(self) -> list[str]:
        """Leaf region names in tree order (the order of every per-leaf axis)."""
        return leaves(self.tree)

    def region_of(self, name: str) -> set[str]:
        """The leaves making up region ``name`` (a leaf or an internal node, e.g. "face")."""
        return region_of(self.tree, name)

    def internal_nodes(self) -> list[RegionNode]:
        return internal_nodes(self.tree)

    def node_names(self) -> list[str]:
        return [n.name for n in self.tree]

    def clusters_of(self, name: str) -> list[int]:
        """Cluster ids labelled with any leaf of region ``name``."""
        members = self.region_of(name)
        return [k for k in range(self.num_clusters) if self.clusters[k] in members]

    def membership(self, regions: Iterable[str] | None = None) -> np.ndarray:
        """[K, R] 0/1 matrix: cluster k belongs to region r (default regions: the leaves)."""
        regions = self.leaves if regions is None else list(regions)
        m = np.zeros((self.num_clusters, len(regions)), dtype=np.float32)
        for r, name in enumerate(regions):
            m[self.clusters_of(name), r] = 1.0
        return m

    # --------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError naming the first malformed field."""
        if not isinstance(self.domain, str) or not self.domain:
            raise ValueError("domain: must be a non-empty string")
        g = self.generator
        if not isinstance(g, dict):
            raise ValueError("generator: must be an object")
        for key in ("resolution", "style_size", "deep_pixel_channels"):
            if not isinstance(g.get(key), int) or isinstance(g.get(key), bool) or g[key] <= 0:
                raise ValueError(f"generator.{key}: must be a positive integer, got {g.get(key)!r}")
        for key in ("fingerprint", "synthesis_fingerprint", "deep_pixel_fingerprint"):
            if key in g and not isinstance(g[key], str):
                raise ValueError(f"generator.{key}: must be a string")
        if not isinstance(self.deep_pixel_size, int) or self.deep_pixel_size < 1:
            raise ValueError(f"deep_pixel_size: must be a positive integer, got {self.deep_pixel_size!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization: must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        c = self.centroids
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise ValueError(f"centroids: must be a non-empty [K, C] array, got shape {list(c.shape)}")
        if not np.isfinite(c).all():
            raise ValueError("centroids: hold non-finite values")
        if c.shape[1] != g["deep_pixel_channels"]:
            raise ValueError(f"centroids: width {c.shape[1]} does not match generator.deep_pixel_channels "
                             f"{g['deep_pixel_channels']}")
        if self.channel_scale is not None:
            s = self.channel_scale
            if s.shape != (c.shape[1],):
                raise ValueError(f"channel_scale: must have shape [{c.shape[1]}], got {list(s.shape)}")
            if not (np.isfinite(s).all() and (s > 0).all()):
                raise ValueError("channel_scale: must be finite and positive")
        if self.temperature is not None and not (isinstance(self.temperature, (int, float))
                                                 and np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature: must be a positive number, got {self.temperature!r}")
        ids = sorted(self.clusters)
        if ids != list(range(c.shape[0])):
            raise ValueError(f"clusters: must label every cluster id 0..{c.shape[0] - 1} exactly once, "
                             f"got ids {ids}")
        for k, name in self.clusters.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"clusters.{k}: label must be a non-empty string, got {name!r}")
        if not isinstance(self.tree, RegionNode):
            raise ValueError("tree: must be a RegionNode")
        validate_tree(self.tree)
        leaf_set, label_set = set(self.leaves), set(self.clusters.values())
        if leaf_set != label_set:
            parts = []
            if label_set - leaf_set:
                parts.append(f"cluster labels not among the tree's leaves: {sorted(label_set - leaf_set)}")
            if leaf_set - label_set:
                parts.append(f"leaves with no cluster: {sorted(leaf_set - label_set)}")
            raise ValueError("tree/clusters: leaf names must equal the cluster labels; " + "; ".join(parts))
        for key in ("clustering", "card"):
            if not isinstance(getattr(self, key), dict):
                raise ValueError(f"{key}: must be an object")

    def check_generator(self, G, strict_fingerprint: bool = False) -> None:
        """Raise ValueError when ``G`` cannot use these regions; warn (or raise) on another fingerprint."""
        ident = generator_identity(G, fingerprint=False)
        if self.channels != ident["deep_pixel_channels"]:
            raise ValueError(f"centroids have width {self.channels} but the generator's DeepPixels have "
                             f"{ident['deep_pixel_channels']} channels: regions file made for another generator")
        for key in ("resolution", "style_size"):
            if self.generator[key] != ident[key]:
                raise ValueError(f"generator.{key} is {self.generator[key]} in the regions file but "
                                 f"{ident[key]} for this generator")
        if not fits_fingerprints(self.generator.get("fingerprint"), self.generator.get("synthesis_fingerprint"), G,
                                 self.generator.get("deep_pixel_fingerprint")):
            msg = ("the generator's weights differ from those the regions were clustered on "
                   "(fingerprint mismatch); the regions may not fit")
            if strict_fingerprint:
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=2)

    # --------------------------------------------------------------- I/O
    def to_dict(self, array_dtype: str = "float16") -> dict:
        active = self.active_channels()
        d = {
            "format": FORMAT, "version": VERSION, "domain": self.domain,
            "generator": dict(self.generator), "deep_pixel_size": self.deep_pixel_size,
            "normalization": self.normalization,
            "channel_scale": None if self.channel_scale is None else encode_array(self.channel_scale, "float32"),
            "centroids": encode_array(self.centroids, array_dtype),
            "temperature": self.temperature,
            "clusters": {str(k): v for k, v in sorted(self.clusters.items())},
            "tree": self.tree.to_dict(),
            "clustering": copy.deepcopy(self.clustering), "card": copy.deepcopy(self.card),
        }
        if not active.all():
            edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
            d.update(version=COMPACT_VERSION,
                     active_channels=[[int(a), int(b)] for a, b in zip(edges[0::2], edges[1::2])],
                     centroids=encode_array(self.centroids[:, active], array_dtype),
                     inactive_fill=encode_array(self.centroids[:, ~active].mean(0, dtype=np.float64), array_dtype))
        return d

    @classmethod
    def from_dict(cls, d) -> "RegionsFile":
        if not isinstance(d, dict):
            raise ValueError("not a regions file: expected a JSON object")
        if d.get("format") != FORMAT:
            raise ValueError(f"format: not an sfeditor regions file (format={d.get('format')!r}, "
                             f"expected {FORMAT!r})")
        version = d.get("version")
        if version not in READ_VERSIONS or isinstance(version, bool):
            raise ValueError(f"version: unsupported regions file version {version!r} (this sfeditor reads "
                             f"{', '.join(map(str, READ_VERSIONS))})")
        known = {"format", "version", "domain", "generator", "deep_pixel_size", "normalization", "channel_scale",
                 "centroids", "temperature", "clusters", "tree", "clustering", "card"}
        if version == COMPACT_VERSION:
            known |= {"active_channels", "inactive_fill"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown top-level keys {sorted(extra)}")
        for key in ("domain", "generator", "centroids", "clusters", "tree"):
            if key not in d:
                raise ValueError(f"{key}: missing")
        clusters = d["clusters"]
        if not isinstance(clusters, dict):
            raise ValueError("clusters: must be an object mapping cluster id to region name")
        try:
            clusters = {int(k): v for k, v in clusters.items()}
        except ValueError:
            raise ValueError(f"clusters: keys must be integer cluster ids, got {sorted(clusters)}") from None
        if len(clusters) != len(d["clusters"]):
            raise ValueError("clusters: duplicate cluster ids")
        scale = d.get("channel_scale")
        centroids = decode_array(d["centroids"], "centroids")
        if version == COMPACT_VERSION:
            centroids = _expand_centroids(d, centroids)
        return cls(
            domain=d["domain"], generator=d["generator"],
            centroids=centroids,
            clusters=clusters, tree=RegionNode.from_dict(d["tree"]),
            deep_pixel_size=d.get("deep_pixel_size", 64), normalization=d.get("normalization", "none"),
            channel_scale=None if scale is None else decode_array(scale, "channel_scale"),
            temperature=d.get("temperature"), clustering=d.get("clustering", {}), card=d.get("card", {}))

    def to_json(self, array_dtype: str = "float16") -> str:
        return json.dumps(self.to_dict(array_dtype), indent=1) + "\n"

    def save(self, path: str | os.PathLike, array_dtype: str = "float16") -> None:
        """Atomic write (a crash leaves any previous file intact)."""
        atomic_write_text(path, self.to_json(array_dtype))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RegionsFile":
        from ..integrity import verify_shipped
        from ..validate import check_regular_file, load_json_file

        path = os.fspath(path)
        check_regular_file(path, 1 << 30, "regions file")
        verify_shipped(path)           # shipped resources: SHA-256 against resources/MANIFEST.json
        d = load_json_file(path, "regions file", max_bytes=1 << 30)   # one-line errors naming the file
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except RecursionError:
            raise ValueError(f"{path}: nested too deeply to be a regions file") from None

    def relabelled(self, clusters: dict[int, str], tree: RegionNode) -> "RegionsFile":
        """A copy with new cluster labels and hierarchy (validated)."""
        new = copy.copy(self)
        new.clusters, new.tree = {int(k): v for k, v in clusters.items()}, tree
        new.clustering, new.card = copy.deepcopy(self.clustering), copy.deepcopy(self.card)
        new.validate()
        return new


def load_regions(source: str | os.PathLike) -> RegionsFile:
    """A regions file by path, or a shipped domain's by domain name."""
    if not os.path.exists(os.fspath(source)):
        from ..domains import SHIPPED, resources_dir

        name = os.fspath(source)
        if name in SHIPPED and SHIPPED[name].regions_file:
            path = resources_dir() / SHIPPED[name].regions_file
            if not path.exists():
                raise FileNotFoundError(f"{path}: no regions file shipped yet for {name!r} "
                                        f"(make one with `sfeditor-train regions --domain {name} ...`)")
            return RegionsFile.load(path)
        raise FileNotFoundError(f"{name}: no such regions file or shipped domain")
    return RegionsFile.load(source)


__all__ = ["FORMAT", "VERSION", "COMPACT_VERSION", "RegionsFile",
           "load_regions", "encode_array", "decode_array"]
