"""The editor's working state without Qt: a loaded model and one composition with undo.

A :class:`ModelBundle` is what a user opens: a generator, optionally a
FusionNet hierarchy (paper Sec. 4.5) and a regions file (Sec. 4.2), plus the
domain's name and default truncation.  :func:`load_bundle` opens a shipped
domain by name or any checkpoint / hierarchy / regions files; every file goes
through its validating loader, and a hierarchy or regions file that does not
fit the generator is refused with a message naming the file.

An :class:`EditorSession` is the document the desktop app edits: a
:class:`~sfeditor.editor.composition.Composition` behind an
:class:`~sfeditor.editor.commands.UndoStack`.  Every user intent is one method here
(reroll, lock, copy a code, assign a photo's code, a region-limited latent
edit (Sec. 6.1), a region transfer such as hair transfer (Sec. 6.2), ...),
each one undoable entry, so the Qt views only translate clicks into calls.
Files: :meth:`EditorSession.save` / :meth:`EditorSession.open_file`
(compositions as JSON, or PNGs with the composition embedded), atomic writes,
and an autosave / recovery file.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_bytes
from ..model.device import pick_device
from .commands import (AssignCode, CopyCode, NodeEdit, RandomizeUnlocked, Reroll, SetCollapsed, SetLocked,
                       SetSeed, SetTruncation, UndoStack)
from .composition import Composition, embed_in_png, extract_from_png
from ..regions.tree import RegionNode, find_node

__all__ = ["ModelBundle", "load_bundle", "default_hierarchy_path", "EditorSession",
           "SessionError", "autosave_dir"]


class SessionError(ValueError):
    """A user-facing problem (bad file, model mismatch); the message says what and where."""


def default_hierarchy_path(domain: str) -> Path | None:
    """The shipped hierarchy of a domain (``resources/hierarchies/<domain>.pt``), if present."""
    from ..domains import resources_dir

    p = resources_dir() / "hierarchies" / f"{domain}.pt"
    return p if p.is_file() else None


@dataclass
class ModelBundle:
    """A generator with its (optional) hierarchy and regions file."""

    domain: str
    G: torch.nn.Module
    hierarchy: object | None = None          # FusionHierarchy
    regions: object | None = None            # RegionsFile
    truncation: float = 0.7
    generator_source: str = ""
    hierarchy_path: str | None = None
    regions_path: str | None = None
    notes: list[str] = field(default_factory=list)
    _fingerprint: str | None = None
    _hierarchy_fp: str | None = None
    _region_model: object | None = None
    _blend_notes: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.G.device

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..model.identity import generator_fingerprint

            self._fingerprint = generator_fingerprint(self.G)
        return self._fingerprint

    @property
    def tree(self) -> RegionNode:
        """The region tree the composition uses: the regions file's, else the hierarchy's, else one node."""
        if self.regions is not None:
            return self.regions.tree
        if self.hierarchy is not None:
            return self.hierarchy.root
        return RegionNode("all")

    @property
    def region_model(self):
        """Hard / soft masks of generated images (None without a regions file)."""
        if self._region_model is None and self.regions is not None:
            from ..regions.masks import RegionModel

            self._region_model = RegionModel(self.G, self.regions)
        return self._region_model

    def has_net(self, name: str) -> bool:
        return self.hierarchy is not None and name in self.hierarchy.node_map and self.hierarchy.has_net(name)

    def blend_note(self, name: str) -> str | None:
        """What node ``name``'s FusionNet does with its inputs, in words (``sfeditor.fusion.blend_stats``).

        Where its channels come from and whether the global code sets any; a code the net
        ignores is said so.  Computed once per node (16 sampled inputs); None without a net.
        """
        if not self.has_net(name):
            return None
        if name not in self._blend_notes:
            from ..fusion.blend_stats import node_blend_stats

            c1, c2 = self.hierarchy.children_of(name)
            try:
                st = node_blend_stats(self.hierarchy, self.G, name, samples=16, truncation=self.truncation)
            except (RuntimeError, ValueError) as e:      # e.g. a net that does not fit this generator
                self._blend_notes[name] = f"FusionNet: cannot be inspected ({e})"
            else:
                lines = ["FusionNet " + st.summary(c1, c2)]
                lines += [w for w in st.warnings(c1, c2) if "changes nothing" in w]
                self._blend_notes[name] = "\n".join(lines)
        return self._blend_notes[name]

    def sampler_text(self) -> str:
        """How seeds become w: the mapping network or a mixture prior (``sfeditor.model.latent_prior``)."""
        p = self.G.prior
        if p is not None:
            return (f"mixture of {p.n_components} Gaussians over W (rank {p.rank}); "
                    "truncation ψ pulls each sample toward its own component's mean")
        return f"mapping network ({self.G.config.n_mlp} layers); truncation ψ pulls toward the mean w"

    def describe(self) -> str:
        h = "no hierarchy" if self.hierarchy is None else f"{len(self.hierarchy.nets)} FusionNets"
        return f"{self.domain} · {self.G.size}px · {h} · {self.device.type.upper()}"

    def new_composition(self, seed: int | None = None) -> Composition:
        """Fresh random seeds for every node (``seed`` makes them reproducible)."""
        rng = random.Random(seed)
        tree = self.tree
        nodes = {}
        from .composition import NodeState

        for n in tree:
            nodes[n.name] = NodeState(seed=rng.randrange(2 ** 31))
        return Composition(tree, nodes, truncation=self.truncation, domain=self.domain,
                           generator_fingerprint=self.fingerprint, hierarchy_path=self.hierarchy_path,
                           hierarchy_identity=self._hierarchy_identity())

    def _hierarchy_identity(self) -> str | None:
        """sha256 of the hierarchy's weights (computed once: they do not change while open)."""
        if self.hierarchy is None:
            return None
        if self._hierarchy_fp is None:
            from ..model.identity import module_fingerprint

            self._hierarchy_fp = module_fingerprint(self.hierarchy)
        return self._hierarchy_fp


def _check_fit(bundle: ModelBundle) -> None:
    G = bundle.G
    h = bundle.hierarchy
    if h is not None:
        try:
            h.check_generator(G, str(bundle.hierarchy_path))
        except ValueError as e:
            raise SessionError(str(e)) from None
        from ..model.identity import fits_fingerprints

        if not fits_fingerprints(h.meta.get("generator_fingerprint"), h.meta.get("synthesis_fingerprint"), G,
                                 h.meta.get("deep_pixel_fingerprint")):
            bundle.notes.append(f"{Path(str(bundle.hierarchy_path)).name} was trained for another generator "
                                "(fingerprint differs): fusion may be poor")
    r = bundle.regions
    if r is not None:
        try:
            r.check_generator(G)
        except ValueError as e:
            raise SessionError(f"{bundle.regions_path}: {e}") from None
    if r is not None and h is not None:
        if h.root != r.tree:
            raise SessionError(f"{bundle.hierarchy_path}: its tree differs from the regions file's tree "
                               f"({bundle.regions_path})")


def load_bundle(domain: str | None = None, *, generator: str | os.PathLike | None = None,
                hierarchy: str | os.PathLike | None = None, regions: str | os.PathLike | None = None,
                device: str | torch.device | None = "auto", truncation: float | None = None) -> ModelBundle:
    """Open a shipped domain (``load_bundle("toy-faces")``) or any generator with optional files.

    For a shipped domain the hierarchy and regions default to the shipped files
    (a missing shipped hierarchy is a note, not an error: the app then shows the
    root code).  Raises :class:`SessionError` with the file's name for bad or
    mismatching files.
    """
    from ..model.checkpoints import CheckpointError, load_generator
    from ..domains import SHIPPED, resources_dir

    dev = pick_device(device)
    dom = SHIPPED.get(domain) if domain else None
    if domain and dom is None and generator is None:
        raise SessionError(f"unknown domain {domain!r}; shipped: {', '.join(SHIPPED)} (or open a checkpoint)")
    source = str(generator) if generator is not None else domain
    try:
        from ..model.registry import resolve_model

        G = load_generator(resolve_model(source), device=dev)
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as e:
        raise SessionError(str(e)) from None
    G.eval()
    notes = []
    name = domain or Path(str(generator)).stem
    if truncation is None:
        from ..model.truncation import truncation_for

        truncation, why = truncation_for(domain or name, source, default=0.7)
        if dom is None:
            notes.append(f"truncation ψ {truncation:g} ({why}); change it in the inspector")
    b = ModelBundle(name, G, truncation=truncation, generator_source=source, notes=notes)
    if regions is None and dom is not None and dom.regions_file:
        p = resources_dir() / dom.regions_file
        regions = p if p.is_file() else None
    if regions is not None:
        from ..regions.regions_file import RegionsFile

        try:
            b.regions = RegionsFile.load(regions)
        except (ValueError, OSError) as e:
            raise SessionError(f"{regions}: {e}") from None
        b.regions_path = str(regions)
    if hierarchy is None and dom is not None:
        hierarchy = default_hierarchy_path(dom.name)
        if hierarchy is None:
            notes.append(f"no trained hierarchy shipped for {dom.name}: the preview shows the root node's code")
    if hierarchy is not None:
        from ..fusion.hierarchy import load_hierarchy

        try:
            tree = None
            if str(hierarchy).lower().endswith(".json"):      # an official weights JSON: the domain's paper tree
                from ..regions.tree import paper_tree as official_tree
                from ..model.registry import domain_of_file
                from ..model.truncation import paper_domain

                paper = paper_domain(domain) or paper_domain(domain_of_file(source))
                tree = official_tree(paper) if paper else None
            h = load_hierarchy(hierarchy, tree=tree, map_location=dev)
        except (ValueError, OSError, KeyError) as e:
            raise SessionError(f"{hierarchy}: {e}") from None
        h.eval()
        b.hierarchy, b.hierarchy_path = h, str(hierarchy)
    _check_fit(b)
    return b


def autosave_dir() -> Path:
    """``$SFEDITOR_AUTOSAVE`` or ``~/.cache/sfeditor/autosave``."""
    env = os.environ.get("SFEDITOR_AUTOSAVE")
    return Path(env) if env else Path.home() / ".cache" / "sfeditor" / "autosave"


class EditorSession:
    """One composition being edited, its undo stack, its file and its model."""

    def __init__(self, bundle: ModelBundle, composition: Composition | None = None,
                 rng: random.Random | None = None, session_id: str | None = None):
        self.bundle = bundle
        self.rng = rng or random.Random()
        comp = composition if composition is not None else bundle.new_composition(self.rng.randrange(2 ** 31))
        self.stack = UndoStack(comp)
        self.path: Path | None = None
        # one recovery file per window: a model change keeps the id, so a clean exit removes it
        self.session_id = session_id or f"{os.getpid()}-{int(time.time() * 1000)}"

    # -------------------------------------------------------------- access
    @property
    def composition(self) -> Composition:
        return self.stack.composition

    @property
    def dirty(self) -> bool:
        return not self.stack.is_clean

    def subscribe(self, fn: Callable) -> Callable[[], None]:
        return self.stack.subscribe(fn)

    def title(self) -> str:
        name = self.path.name if self.path else "untitled"
        return f"{name}{' *' if self.dirty else ''} — {self.bundle.domain}"

    def subtree(self, name: str) -> list[str]:
        """``name`` and every node below it (a region's nodes, Sec. 6)."""
        return [n.name for n in find_node(self.composition.tree, name)]

    def bypassed_by(self, name: str) -> str | None:
        """The collapsed ancestor hiding ``name``'s code, or None."""
        comp = self.composition
        found = None
        for n in comp.tree:
            if n.name != name and comp.state(n.name).collapsed and name in self.subtree(n.name):
                found = found or n.name
        return found

    # --------------------------------------------------------------- edits
    def push(self, cmd) -> bool:
        return self.stack.push(cmd)

    def reroll(self, name: str) -> bool:
        return self.push(Reroll(name, self.rng))

    def set_seed(self, name: str, seed: int) -> bool:
        return self.push(SetSeed(name, seed))

    def set_locked(self, name: str, locked: bool) -> bool:
        return self.push(SetLocked(name, locked))

    def set_collapsed(self, name: str, collapsed: bool) -> bool:
        return self.push(SetCollapsed(name, collapsed))

    def copy_code(self, src: str, dst: str) -> bool:
        if src == dst:
            return False
        return self.push(CopyCode(src, dst))

    def clear_code(self, name: str) -> bool:
        """Back to the node's seed code (drop its explicit code)."""
        return self.push(NodeEdit(name, f"{name}: back to seed code", code=None))

    def randomize_unlocked(self) -> bool:
        return self.push(RandomizeUnlocked(self.rng))

    def set_truncation(self, psi: float) -> bool:
        return self.push(SetTruncation(psi))

    def seal(self) -> None:
        self.stack.seal()

    def undo(self) -> bool:
        return self.stack.undo()

    def redo(self) -> bool:
        return self.stack.redo()

    def assign_code(self, nodes: Iterable[str], code: torch.Tensor, text: str) -> bool:
        """Give every node in ``nodes`` the explicit w / w+ ``code`` (one undo entry)."""
        code = code.detach().float().cpu()[:1]        # w [1, D] or w+ [1, L, D]: the first of a batch
        with self.stack.macro(text):
            for n in nodes:
                self.push(AssignCode(n, code, text))
        return True

    def assign_photo(self, node: str | None, w_plus: torch.Tensor, label: str = "photo") -> bool:
        """A photo's inverted code: on a node, the node and its subtree take it; on None, every node
        does (fusing identical codes reproduces the photo)."""
        nodes = self.composition.node_names if not node else self.subtree(node)
        where = "all nodes" if not node else node
        return self.assign_code(nodes, w_plus, f"{label} -> {where}")

    def transfer_region(self, region: str, reference_w: torch.Tensor, target_w: torch.Tensor | None = None,
                        label: str = "transfer") -> bool:
        """Sec. 6.2: ``region``'s nodes take the reference's code, every other node the target's (if given)."""
        inside = set(self.subtree(region))
        with self.stack.macro(f"{label}: {region}"):
            for n in self.composition.node_names:
                if n in inside:
                    self.push(AssignCode(n, reference_w.detach().float().cpu()[:1]))
                elif target_w is not None:
                    self.push(AssignCode(n, target_w.detach().float().cpu()[:1]))
        return True

    def node_w_plus(self, name: str) -> torch.Tensor:
        """The node's code as w+ ``[1, n_latent, w_dim]`` on CPU (seed codes are sampled)."""
        G = self.bundle.G
        w = self.composition.w_for(name, G).detach()
        if w.ndim == 2:
            w = w.unsqueeze(1).repeat(1, G.n_latent, 1)
        return w.float().cpu()

    def _direction_edits(self, direction, strength: float, nodes: Sequence[str] | None,
                         layers: Sequence[int] | None) -> tuple[list[tuple[str, torch.Tensor]], str]:
        from ..images.directions import apply_direction

        G = self.bundle.G
        if nodes is None:
            targets, where = self.composition.node_names, "whole image"
        else:
            targets = []
            for n in nodes:
                hidden = self.bypassed_by(n)
                if hidden:
                    raise SessionError(f"{n!r} is inside the collapsed node {hidden!r}: its code is not used; "
                                       f"expand {hidden!r} or edit {hidden!r} instead")
                targets += [t for t in self.subtree(n) if t not in targets]
            where = ", ".join(nodes)
        with torch.no_grad():
            edits = [(n, apply_direction(G, self.node_w_plus(n).to(G.device), direction, strength,
                                         layers=layers).cpu()) for n in targets]
        return edits, where

    def preview_direction(self, direction, strength: float, nodes: Sequence[str] | None = None,
                          layers: Sequence[int] | None = None) -> Composition:
        """The composition :meth:`apply_direction` would make, without changing anything (live slider)."""
        from dataclasses import replace

        edits, _ = self._direction_edits(direction, strength, nodes, layers)
        comp = self.composition.snapshot()
        for n, w in edits:
            comp.set_state(n, replace(comp.state(n), code=w))
        return comp

    def apply_direction(self, direction, strength: float, nodes: Sequence[str] | None = None,
                        layers: Sequence[int] | None = None, label: str = "edit") -> bool:
        """Sec. 6.1: move the codes of ``nodes`` (each with its subtree; None = every node, the
        unrestricted edit of Fig. 14) along ``direction`` by ``strength``.  One undo entry."""
        edits, where = self._direction_edits(direction, strength, nodes, layers)
        if not edits or strength == 0:
            return False
        with self.stack.macro(f"{label} ({strength:+.2f}) on {where}"):
            for n, w in edits:
                self.push(AssignCode(n, w))
        return True

    # --------------------------------------------------------------- files
    def replace_composition(self, comp: Composition, path: Path | None = None) -> list[str]:
        """Start editing ``comp`` (new undo history).  Returns warnings (e.g. other generator)."""
        problems = comp.check_model(self.bundle.G, self.bundle.fingerprint)
        if comp.tree != self.bundle.tree:
            raise SessionError("the composition's region tree differs from this model's tree "
                               f"(nodes {', '.join(comp.node_names)})")
        bad = [p for p in problems if "code shape" in p]
        if bad:
            raise SessionError("; ".join(bad))
        self.stack = UndoStack(comp)
        self.path = path
        return problems

    def load_composition(self, comp: Composition, path: str | os.PathLike | None,
                         label: str | None = None) -> list[str]:
        """Open ``comp`` (read from ``path``; None = a new untitled one) as ONE undo entry on top of the
        current history: undo brings back what was on screen before.  The file becomes the session's
        file and the loaded state its clean (saved) state.  Returns warnings (e.g. other generator)."""
        problems = comp.check_model(self.bundle.G, self.bundle.fingerprint)
        p = Path(path) if path is not None else None
        self.restore(comp, label or (f"open {p.name}" if p else "new composition"))
        self.path = p
        self.stack.set_clean()
        return [q for q in problems if "code shape" not in q]

    def restore(self, comp: Composition, label: str = "restore composition") -> bool:
        """Take every node state and the truncation of ``comp`` (same tree) as ONE undo entry, so
        dropping a saved composition (or an exported PNG) onto the editor loses nothing."""
        if comp.tree != self.composition.tree:
            raise SessionError("the composition's region tree differs from this model's tree")
        bad = [p for p in comp.check_model(self.bundle.G) if "code shape" in p]
        if bad:
            raise SessionError("; ".join(bad))
        with self.stack.macro(label):
            self.push(SetTruncation(comp.truncation))
            for n, st in comp.nodes.items():
                self.push(NodeEdit(n, label, seed=st.seed, code=st.code, locked=st.locked, collapsed=st.collapsed))
        return True

    def save(self, path: str | os.PathLike | None = None) -> Path:
        target = Path(path) if path is not None else self.path
        if target is None:
            raise SessionError("no file name given")
        self.composition.save(target)
        self.path = target
        self.stack.set_clean()
        return target

    def export_png(self, path: str | os.PathLike, image: np.ndarray) -> Path:
        """Write ``image`` (uint8 [H, W, 3]) as a PNG carrying this composition (atomic)."""
        import cv2

        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
        if not ok:
            raise SessionError("could not encode the image as PNG")
        data = embed_in_png(buf.tobytes(), self.composition)
        atomic_write_bytes(path, data)
        return Path(path)

    @staticmethod
    def read_composition(path: str | os.PathLike) -> Composition | None:
        """A composition file, or a PNG with one embedded; None for a PNG without one.

        Raises SessionError for unreadable or invalid files."""
        from .composition import MAX_COMPOSITION_BYTES
        from ..validate import read_limited

        p = Path(path)
        try:   # a regular file of sane size: /dev/zero or a FIFO would never finish reading
            data = read_limited(p, MAX_COMPOSITION_BYTES, "composition file")
        except (OSError, ValueError) as e:
            raise SessionError(str(e) if isinstance(e, ValueError) else f"{p}: cannot read ({e.strerror or e})") from None
        try:
            if data.startswith(b"\x89PNG"):
                return extract_from_png(data)
            return Composition.from_json(data)
        except (ValueError, KeyError, TypeError) as e:
            raise SessionError(f"{p.name}: not a usable composition ({e})") from None

    # ------------------------------------------------------------ autosave
    def autosave_path(self, folder: str | os.PathLike | None = None) -> Path:
        return Path(folder or autosave_dir()) / f"recovery-{self.session_id}.sfcomp.json"

    def autosave(self, folder: str | os.PathLike | None = None) -> Path:
        """Write the recovery file (atomic); removed by :meth:`discard_autosave` on a clean exit."""
        p = self.autosave_path(folder)
        p.parent.mkdir(parents=True, exist_ok=True)
        self.composition.save(p)
        return p

    def discard_autosave(self, folder: str | os.PathLike | None = None) -> None:
        try:
            self.autosave_path(folder).unlink()
        except FileNotFoundError:
            pass

    @staticmethod
    def recovery_files(folder: str | os.PathLike | None = None) -> list[Path]:
        """Recovery files left by sessions that did not exit cleanly, newest first."""
        d = Path(folder or autosave_dir())
        if not d.is_dir():
            return []
        return sorted(d.glob("recovery-*.sfcomp.json"), key=lambda p: p.stat().st_mtime, reverse=True)
