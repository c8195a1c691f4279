"""Hierarchical multi-fusion (paper Sec. 4.5, Fig. 7, Appendix A.1).

A binary tree of regions; every internal node holds a FusionNet that fuses
its two children's codes with the node's own (global / alignment) code:

    code(node) = fusion_net(code(child1), code(child2), own_code(node))

A leaf, an internal node without a net, or a node the user marks
``collapsed`` passes its OWN code (the paper's bypass: the whole subtree then
takes that node's code).

Trees are nested dicts ``{"name": "all", "children": [child1, child2]}`` with
leaves given as region-name strings (the regions-file format), or nested
tuples ``("all", child1, child2)`` with string leaves.  Child order matters:
child 1 is the FusionNet's ``s1``.

Caching: each node remembers the inputs of its last evaluation (tensor
identity + in-place version counter by default, or a content hash with
``cache_mode="content"``), so changing one code recomputes only the nodes on
its path to the root.  ``last_recomputed`` lists the nodes whose FusionNet ran
in the last call, ``recompute_counts`` counts runs per node.  Caching is
skipped (and nothing is stored) while autograd would record the computation
(grad enabled and a net parameter or an input requires grad), so training
graphs are never reused.

Inference speed: a call made without autograd recording runs every
FusionNet from folded weights (equalised-LR scales multiplied in once,
contiguous; :meth:`sfeditor.fusion.latent_blender.LatentBlender.mlp`); float32 results
are bit-identical to the module path.  :meth:`FusionHierarchy.prepare_inference`
folds up front and picks bf16 weights where the CPU runs bf16 natively
(:func:`load_hierarchy` does this with ``precision="auto"``).

Files: :func:`load_hierarchy` reads an official-style weights JSON (node ->
weight file) or the project's own single-file format (see
:meth:`FusionHierarchy.save`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from ..atomic import atomic_torch_save
from .fusion_net import FusionNet, FusionNetConfig, read_weight_file
from ..model.style_code import StyleCode, StyleLayout
from ..regions.tree import DOMAIN_TREES, PAPER_TREES, RegionNode

HIERARCHY_FORMAT = "sfeditor-hierarchy"
HIERARCHY_VERSION = 1

# ----------------------------------------------------------------- hierarchy
class FusionHierarchy(nn.Module):
    """A tree of FusionNets; ``hierarchy(codes)`` -> fused StyleCode.

    ``codes`` maps node names to StyleCodes: one per leaf and one (global /
    alignment) code per internal node; only the codes of visited nodes are
    needed (see :meth:`required_codes`).
    """

    def __init__(self, tree, nets: Mapping[str, FusionNet] | None = None, *,
                 config: FusionNetConfig | None = None, layout: StyleLayout | None = None,
                 collapsed: Iterable[str] = (), cache_mode: str = "identity"):
        super().__init__()
        self.root = RegionNode.parse(tree)
        self.node_map = {n.name: n for n in self.root.walk()}
        self.config = config
        self.layout = layout
        if cache_mode not in ("identity", "content"):
            raise ValueError("cache_mode must be 'identity' or 'content'")
        self.cache_mode = cache_mode
        self._cache: dict[str, tuple] = {}
        self.last_recomputed: list[str] = []
        self.recompute_counts: dict[str, int] = {}
        self.collapsed: set[str] = set(collapsed)
        self.meta: dict = {}       # JSON-like notes saved with the file, e.g. the generator's fingerprint
        self.nets = nn.ModuleDict()
        for name, net in (nets or {}).items():
            self.set_net(name, net)

    # ------------------------------------------------------------ structure
    @classmethod
    def with_random_nets(cls, tree, config: FusionNetConfig, layout: StyleLayout | None = None,
                         **kwargs) -> "FusionHierarchy":
        """A net (fresh weights) at every internal node."""
        root = RegionNode.parse(tree)
        nets = {n.name: FusionNet(config) for n in root.walk() if not n.is_leaf}
        return cls(root, nets, config=config, layout=layout, **kwargs)

    @property
    def internal_nodes(self) -> list[str]:
        return [n.name for n in self.root.walk() if not n.is_leaf]

    @property
    def leaves(self) -> list[str]:
        return [n.name for n in self.root.walk() if n.is_leaf]

    def children_of(self, name: str) -> tuple[str, ...]:
        return tuple(c.name for c in self._node(name).children)

    def parent_of(self, name: str) -> str | None:
        self._node(name)
        for n in self.root.walk():
            if any(c.name == name for c in n.children):
                return n.name
        return None

    def _node(self, name: str) -> RegionNode:
        try:
            return self.node_map[name]
        except KeyError:
            raise KeyError(f"no node {name!r} in the hierarchy") from None

    def set_net(self, name: str, net: FusionNet | None) -> None:
        """Attach (or with ``None`` remove) the FusionNet of an internal node."""
        node = self._node(name)
        if node.is_leaf:
            raise ValueError(f"{name!r} is a leaf; FusionNets live at internal nodes only")
        if net is None:
            if name in self.nets:
                del self.nets[name]
        else:
            if not isinstance(net, FusionNet):
                raise TypeError("expected a FusionNet")
            self.nets[name] = net
        self._cache.pop(name, None)

    def has_net(self, name: str) -> bool:
        return name in self.nets

    @property
    def variant(self) -> str | None:
        vs = {net.config.variant for net in self.nets.values()}
        return vs.pop() if len(vs) == 1 else (None if not vs else "mixed")

    def _bypassed(self, node: RegionNode, collapsed: set[str]) -> bool:
        return node.is_leaf or node.name in collapsed or node.name not in self.nets

    def required_codes(self, collapsed: Iterable[str] | None = None) -> list[str]:
        """Names whose codes a call needs (pre-order)."""
        col = self.collapsed if collapsed is None else set(collapsed)
        out: list[str] = []

        def visit(n: RegionNode) -> None:
            out.append(n.name)
            if not self._bypassed(n, col):
                for c in n.children:
                    visit(c)
        visit(self.root)
        return out

    def active_parts(self, collapsed: Iterable[str] | None = None) -> list[str]:
        """The regions a user controls separately: the visited nodes that pass their own code."""
        col = self.collapsed if collapsed is None else set(collapsed)
        return [n for n in self.required_codes(col) if self._bypassed(self.node_map[n], col)]

    # -------------------------------------------------------------- caching
    def clear_cache(self) -> None:
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):   # .to() / .half() / ...: cached results are stale
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _code_sig(self, code: StyleCode) -> tuple:
        if self.cache_mode == "content":
            h = hashlib.blake2b(digest_size=16)
            for t in code.layers:
                t = t.detach()
                h.update(str((tuple(t.shape), t.dtype, t.device)).encode())
                h.update(t.contiguous().cpu().view(torch.uint8).numpy().tobytes()
                         if t.numel() else b"")
            return ("content", h.hexdigest())
        return ("id",) + tuple((id(t), t._version) for t in code.layers)

    @staticmethod
    def _net_sig(net: FusionNet) -> tuple:
        return tuple((id(p), p._version) for p in net.parameters())

    @staticmethod
    def _records_grad(net: FusionNet, codes: Iterable[StyleCode]) -> bool:
        if not torch.is_grad_enabled():
            return False
        if any(p.requires_grad for p in net.parameters()):
            return True
        return any(t.requires_grad for c in codes for t in c.layers)

    def node_result(self, name: str) -> StyleCode | None:
        """The cached fused code of an internal node from the last call (None if not cached)."""
        entry = self._cache.get(name)
        return None if entry is None else entry[1]

    # ---------------------------------------------------- inference speed
    def blenders(self) -> list:
        return [b for net in self.nets.values() for b in (net.blender_common, net.blender_segments)]

    @property
    def inference_dtype(self) -> torch.dtype:
        """Precision of the folded inference weights (float32 unless bf16 was chosen)."""
        ds = {b.inference_dtype for b in self.blenders()}
        return ds.pop() if len(ds) == 1 else torch.float32

    def set_fast_inference(self, enabled: bool) -> None:
        """``False``: no-grad calls run the modules (the reference path; for checks and benchmarks)."""
        for b in self.blenders():
            b.fast_inference = bool(enabled)
            if not enabled:
                b.drop_folded()
        self._cache.clear()

    def prepare_inference(self, precision: str = "auto") -> torch.dtype:
        """Fold every net's weights now (instead of on the first call) and choose their precision.

        precision: ``"float32"``, ``"bfloat16"``, or ``"auto"`` = bf16 on a CPU that runs bf16
        natively (AVX512-BF16 / AMX, :func:`sfeditor.model.device.bf16_is_fast`), else float32;
        the environment variable ``SFEDITOR_FUSION_PRECISION`` overrides ``"auto"``.
        Costs one extra copy of the weights in memory (half of it in bf16).  Returns the dtype.
        """
        dtype = resolve_precision(precision, self._device())
        for b in self.blenders():
            b.set_inference_dtype(dtype)
            b.fast_inference = True
            b.folded_layers()
        self._cache.clear()
        return dtype

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return torch.device("cpu") if p is None else p.device

    # -------------------------------------------------------------- forward
    def forward(self, codes: Mapping[str, StyleCode], collapsed: Iterable[str] | None = None, *,
                use_cache: bool = True) -> StyleCode:
        col = self.collapsed if collapsed is None else set(collapsed)
        unknown = sorted(col - set(self.node_map))
        if unknown:
            raise ValueError(f"collapsed names not in the hierarchy: {unknown}")
        need = self.required_codes(col)
        missing = [n for n in need if n not in codes]
        if missing:
            raise ValueError(f"missing codes for {missing} (this tree needs {need})")
        for n in need:
            if not isinstance(codes[n], StyleCode):
                raise TypeError(f"code for {n!r} is not a StyleCode")
        self.last_recomputed = []
        return self._eval(self.root, codes, col, use_cache)

    def _eval(self, node: RegionNode, codes: Mapping[str, StyleCode], col: set[str], use_cache: bool) -> StyleCode:
        own = codes[node.name]
        if self._bypassed(node, col):
            return own
        c1 = self._eval(node.children[0], codes, col, use_cache)
        c2 = self._eval(node.children[1], codes, col, use_cache)
        net = self.nets[node.name]
        grad = self._records_grad(net, (own, c1, c2))
        key = None
        if use_cache and not grad:
            key = (self._net_sig(net), self._code_sig(c1), self._code_sig(c2), self._code_sig(own))
            entry = self._cache.get(node.name)
            if entry is not None and entry[0] == key:
                return entry[1]
        out = net(c1, c2, own).result
        self.last_recomputed.append(node.name)
        self.recompute_counts[node.name] = self.recompute_counts.get(node.name, 0) + 1
        if key is not None:
            # the inputs are kept alive with the entry so that their ids cannot be reused
            self._cache[node.name] = (key, out, (c1, c2, own))
        else:
            self._cache.pop(node.name, None)
        return out

    # ----------------------------------------------------------------- save
    def to_state(self, half: bool = False) -> dict:
        cfgs = {name: net.config.to_dict() for name, net in self.nets.items()}
        shared = next(iter(cfgs.values()), self.config.to_dict() if self.config else None)
        state = {
            "format": HIERARCHY_FORMAT, "version": HIERARCHY_VERSION,
            "tree": self.root.to_dict(),
            "variant": self.variant,
            "config": shared,
            "nets": {name: {k: (v.detach().cpu().half() if half else v.detach().cpu().float())
                            for k, v in net.state_dict().items()} for name, net in self.nets.items()},
            "dtype": "float16" if half else "float32",
        }
        if any(c != shared for c in cfgs.values()):
            state["net_configs"] = cfgs
        if self.layout is not None:
            state["layout"] = self.layout.to_dict()
        if self.meta:
            state["meta"] = dict(self.meta)
        return state

    def check_generator(self, G, where: str = "hierarchy") -> None:
        """Raise a ValueError naming ``where`` if these FusionNets cannot fuse ``G``'s S codes."""
        if self.layout is not None and self.layout.dims != G.layout.dims:
            raise ValueError(f"{where}: the hierarchy was made for another generator (its S-space layout differs)")
        widths = {net.config.width for net in self.nets.values()}
        if widths and widths != {max(G.layout.dims)}:
            raise ValueError(f"{where}: FusionNets of width {sorted(widths)} do not fit this generator "
                             f"(widest S layer {max(G.layout.dims)})")

    def save(self, path: str | os.PathLike, half: bool = False) -> None:
        """Atomic single-file save (loads with ``torch.load(weights_only=True)``); ``half`` stores fp16."""
        from ..integrity import DIGEST_KEY, state_digest

        state = self.to_state(half)
        state[DIGEST_KEY] = state_digest(state)     # checked by load_hierarchy: flipped bytes are refused
        atomic_torch_save(state, path)


PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str | None, device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on a CPU with native bf16, else float32 (``SFEDITOR_FUSION_PRECISION`` overrides)."""
    if precision in (None, "auto"):
        precision = os.environ.get("SFEDITOR_FUSION_PRECISION", "auto").strip().lower() or "auto"
        if precision not in PRECISIONS:
            raise ValueError(f"SFEDITOR_FUSION_PRECISION must be one of {PRECISIONS}, got {precision!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        from ..model.device import bf16_is_fast

        dev = torch.device(device)
        return torch.bfloat16 if dev.type == "cpu" and bf16_is_fast(dev) else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


# ------------------------------------------------------------------ loading
def _infer_paper_tree(names: set[str], hint: str | None = None) -> RegionNode:
    """The paper's tree (A.1) whose internal nodes include ``names`` (a JSON may list only some nets).

    ``hint`` (the tree named by the JSON's file name or its weight folders, as in the official
    repository's ``weights/ffhq_weights.json`` -> ``weights/ffhq/all.pt``) decides when the names fit
    several trees (e.g. only ``all``); without it such a JSON is an error, never a silent guess.
    """
    fits = {key: root for key, root in PAPER_TREES.items()
            if names <= {n.name for n in root.walk() if not n.is_leaf}}
    if hint in fits:
        return fits[hint]
    if len(fits) == 1:
        return next(iter(fits.values()))
    if fits:
        raise ValueError(f"nodes {sorted(names)} fit the {', '.join(fits)} hierarchies; name the file "
                         f"<domain>_weights.json (e.g. ffhq_weights.json) or pass tree=")
    raise ValueError(f"nodes {sorted(names)} match no official hierarchy; pass tree=")


def _domain_hint(path: Path, spec: Mapping[str, str]) -> str | None:
    """The paper tree named by ``<domain>_weights.json`` or, failing that, by the weight files' folder."""
    for word in [path.stem.lower().split("_")[0]] + [Path(v).parent.name.lower() for v in spec.values()]:
        word = DOMAIN_TREES.get(word, word)
        if word in PAPER_TREES:
            return word
    return None


def _resolve(json_path: Path, rel: str) -> Path:
    p = Path(rel)
    if p.is_absolute():
        candidates = [p]
    else:   # next to the JSON; then its parent (the official repo keeps weights/x.json -> "weights/ffhq/all.pt")
        candidates = [json_path.parent / p, json_path.parent.parent / p]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{json_path}: weight file {rel!r} not found (tried {', '.join(map(str, candidates))})")


def _from_json(path: Path, tree, map_location) -> FusionHierarchy:
    from ..validate import load_json_file

    try:
        spec = load_json_file(path, "hierarchy weights JSON", max_bytes=16 << 20)
    except ValueError as e:
        raise ValueError(f"not a hierarchy weights JSON ({e})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object mapping node names to weight files")
    if "nets" in spec and isinstance(spec["nets"], dict):      # {"tree": ..., "nets": {...}}
        tree = spec.get("tree", tree)
        spec = spec["nets"]
    if not spec or not all(isinstance(k, str) and isinstance(v, str) for k, v in spec.items()):
        raise ValueError(f"{path}: expected a non-empty object of node name -> weight file path")
    root = RegionNode.parse(tree) if tree is not None else _infer_paper_tree(set(spec), _domain_hint(path, spec))
    nodes = {n.name: n for n in root.walk()}
    bad = sorted(k for k in spec if k not in nodes or nodes[k].is_leaf)
    if bad:
        raise ValueError(f"{path}: {bad} are not internal nodes of the tree")
    nets = {}
    for name, rel in spec.items():
        sd = read_weight_file(_resolve(path, rel))
        try:
            nets[name] = FusionNet.from_state_dict(sd).to(map_location)
        except ValueError as e:
            raise ValueError(f"{path}: node {name!r}: {e}") from None
    cfg = next(iter(nets.values())).config
    return FusionHierarchy(root, nets, config=cfg)


def _from_state(state: dict, where: str, map_location) -> FusionHierarchy:
    if int(state.get("version", 0)) > HIERARCHY_VERSION:
        raise ValueError(f"{where}: hierarchy file version {state.get('version')} is newer than supported")
    try:
        root = RegionNode.parse(state["tree"])
        cfg = FusionNetConfig.from_dict(state["config"]) if state.get("config") is not None else None
        net_cfgs = state.get("net_configs") or {}
        layout = StyleLayout.from_dict(state["layout"]) if state.get("layout") else None
        nets_sd = state["nets"]
        if not isinstance(nets_sd, dict):
            raise ValueError("'nets' must map node names to state dicts")
        nets = {}
        for name, sd in nets_sd.items():
            c = FusionNetConfig.from_dict(net_cfgs[name]) if name in net_cfgs else cfg
            if c is None:
                raise ValueError("no FusionNet config stored")
            net = FusionNet(c)
            try:
                net.load_checked({k: v.float() if isinstance(v, torch.Tensor) else v for k, v in sd.items()})
            except (ValueError, AttributeError) as e:
                raise ValueError(f"node {name!r}: {e}") from None
            nets[name] = net.to(map_location)
        h = FusionHierarchy(root, nets, config=cfg, layout=layout)
        meta = state.get("meta")
        if isinstance(meta, dict):
            h.meta = {str(k): v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
        return h
    except KeyError as e:
        raise ValueError(f"{where}: hierarchy file lacks {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None


def load_hierarchy(spec, *, tree=None, map_location="cpu", precision: str | None = "auto") -> FusionHierarchy:
    """Load a FusionNet hierarchy.

    spec: a path to the project's own file (:meth:`FusionHierarchy.save`) or to an
    official-style weights JSON (``{"all": "weights/ffhq/all.pt", ...}``; paths are
    relative to the JSON's folder, or to its parent folder as in the official
    repository), or an already-read own-format dict.  The tree of an official
    JSON is inferred from its node names (FFHQ, car, church) unless ``tree`` is given.
    precision: folds the nets for inference at load (:meth:`FusionHierarchy.prepare_inference`;
    ``"auto"`` = bf16 weights where the CPU runs bf16 natively); ``None`` folds lazily on the
    first no-grad call, in float32.
    """
    h = _load_hierarchy(spec, tree, map_location)
    if precision is not None:
        h.prepare_inference(precision)
    return h


def _load_hierarchy(spec, tree, map_location) -> FusionHierarchy:
    if isinstance(spec, Mapping):
        if spec.get("format") != HIERARCHY_FORMAT:
            raise ValueError("not an sfeditor hierarchy (format key missing)")
        return _from_state(dict(spec), "<dict>", map_location)
    from ..integrity import DIGEST_KEY, IntegrityError, state_digest, verify_shipped
    from ..model.safe_torch import TorchFileError, safe_torch_load
    from ..validate import check_regular_file

    path = Path(os.fspath(spec))
    if not path.exists():
        raise FileNotFoundError(f"no hierarchy file at {path}")
    check_regular_file(path, None, "hierarchy file")
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if path.suffix.lower() == ".json" or head.startswith(b"{"):
        return _from_json(path, tree, map_location)
    try:
        verify_shipped(path)
        state = safe_torch_load(path)        # CRCs and declared sizes checked before anything is allocated
    except (TorchFileError, IntegrityError) as e:
        raise ValueError(f"not a readable hierarchy file: {e}") from None
    except Exception as e:  # garbage / truncated / needs globals
        raise ValueError(f"{path}: not a readable hierarchy file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != HIERARCHY_FORMAT:
        raise ValueError(f"{path}: not an sfeditor hierarchy file (use a weights JSON for official nets)")
    stored = state.get(DIGEST_KEY)
    if stored is not None and stored != state_digest(state):
        raise ValueError(f"{path}: the hierarchy's content hash does not match its weights (the file is corrupt)")
    h = _from_state(state, str(path), map_location)
    if tree is not None and RegionNode.parse(tree) != h.root:
        raise ValueError(f"{path}: stored tree differs from the tree given")
    return h
