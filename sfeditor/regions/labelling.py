"""Labelling a new domain's regions (paper Sec. 4.2, 4.5), Qt-free: name clusters, arrange the tree.

``sfeditor-train regions`` writes an unlabelled regions file (leaves ``cluster_<id>``).  A
:class:`RegionLabels` is the document a person edits to label it: cluster id -> region name, and
the region tree (a :class:`~sfeditor.regions.tree.RegionNode`; it may be non-binary while being
edited).  Every edit is one undoable entry on an :class:`~sfeditor.editor.commands.UndoStack`; an
invalid edit raises ValueError / KeyError and changes nothing.  :meth:`RegionLabels.problems` says
what still keeps the labels from making a valid regions file; :meth:`RegionLabels.result` builds it.
The labelling dialog (``sfeditor.ui.labelling``) is a view of this class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..editor.commands import Command, UndoStack
from .regions_file import RegionsFile
from .tree import RegionNode, paper_tree

__all__ = ["LabelState", "RegionLabels"]


@dataclass(frozen=True)
class LabelState:
    """One immutable snapshot: cluster labels (sorted (id, name) pairs) and the tree (or None)."""

    clusters: tuple[tuple[int, str], ...]
    tree: RegionNode | None

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.clusters)


class _SetState(Command):
    def __init__(self, text: str, after: LabelState):
        self.text, self.after, self.before = text, after, None

    def apply(self, doc: "_Doc") -> bool:
        if doc.state == self.after:
            return False
        self.before, doc.state = doc.state, self.after
        return True

    def revert(self, doc: "_Doc") -> None:
        doc.state = self.before


class _Doc:
    def __init__(self, state: LabelState):
        self.state = state


def _state(clusters: dict[int, str], tree: RegionNode | None) -> LabelState:
    return LabelState(tuple(sorted((int(k), str(v)) for k, v in clusters.items())), tree)


def _clean(name, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a {what} cannot be empty")
    return name.strip()


def _names(tree: RegionNode | None) -> set[str]:
    return set() if tree is None else {n.name for n in tree.walk()}


def _replace(tree: RegionNode, fn: Callable[[RegionNode], RegionNode | list[RegionNode] | None]) -> RegionNode:
    """A copy of ``tree`` where every node ``n`` below the root becomes ``fn(n)`` (a node, several nodes
    spliced in its place, or nothing); ``fn`` returning ``n`` itself descends into it."""
    kids: list[RegionNode] = []
    for c in tree.children:
        r = fn(c)
        if r is c:
            kids.append(_replace(c, fn))
        elif isinstance(r, list):
            kids.extend(r)
        elif r is not None:
            kids.append(r)
    return RegionNode(tree.name, tuple(kids))


class RegionLabels:
    """The labelling document: a regions file's cluster labels and region tree, with undo."""

    def __init__(self, regions: RegionsFile, limit: int = 1000):
        self.regions = regions
        self._doc = _Doc(_state(dict(regions.clusters), regions.tree))
        self.undo_stack = UndoStack(self._doc, limit=limit)

    # ------------------------------------------------------------ queries
    @property
    def state(self) -> LabelState:
        return self._doc.state

    def clusters(self) -> dict[int, str]:
        """Cluster id -> region name (a copy)."""
        return self.state.labels

    def tree(self) -> RegionNode | None:
        """The current tree (possibly not binary while problems remain)."""
        return self.state.tree

    def region_names(self) -> list[str]:
        """Region names in use: the tree's leaves in order, then names only clusters use."""
        t = self.state.tree
        names = [] if t is None else [n.name for n in t.walk() if n.is_leaf]
        names += [v for _, v in self.state.clusters]
        return list(dict.fromkeys(names))

    def is_modified(self) -> bool:
        return not self.undo_stack.is_clean

    def problems(self) -> list[str]:
        """What keeps the labels and tree from making a valid regions file (empty when it is valid)."""
        clusters, tree = self.state.labels, self.state.tree
        used = list(dict.fromkeys(clusters[k] for k in sorted(clusters)))
        if tree is None:
            return ["the tree is empty: pick a paper tree, Auto tree or Sync with clusters"]
        nodes = list(tree.walk())
        leaf_names = [n.name for n in nodes if n.is_leaf]
        internal = {n.name for n in nodes if not n.is_leaf}
        out: list[str] = []
        for name in used:
            if name in internal and name not in leaf_names:
                out.append(f"region '{name}' is used by clusters but is an internal node of the tree; "
                           f"clusters must be labelled with leaves")
            elif name not in leaf_names:
                out.append(f"region '{name}' is used by clusters but missing from the tree")
        out += [f"leaf '{name}' has no cluster" for name in leaf_names if name not in used]
        for n in nodes:
            if not n.is_leaf and len(n.children) != 2:
                kids = len(n.children)
                out.append(f"node '{n.name}' has {kids} {'child' if kids == 1 else 'children'}; "
                           f"the tree must be binary")
        counts: dict[str, int] = {}
        for n in nodes:
            counts[n.name] = counts.get(n.name, 0) + 1
        out += [f"node name '{name}' appears {c} times in the tree; names must be unique"
                for name, c in counts.items() if c > 1]
        if not out:
            try:
                self.regions.relabelled(clusters, tree)
            except ValueError as e:
                out.append(str(e))
        return out

    def result(self) -> RegionsFile:
        """The regions file with the current labels and tree (ValueError while problems remain)."""
        problems = self.problems()
        if problems:
            raise ValueError("the labels are not complete: " + "; ".join(problems))
        return self.regions.relabelled(self.state.labels, self.state.tree)

    def free_name(self, base: str, taken: Iterable[str] | None = None) -> str:
        """``base``, or ``base_2``, ``base_3``, ... whichever no node or region uses."""
        taken = set(_names(self.state.tree) if taken is None else taken) | set(self.state.labels.values())
        cand, i = base, 2
        while cand in taken:
            cand, i = f"{base}_{i}", i + 1
        return cand

    # ------------------------------------------------------------ edits (each one undo entry)
    def _push(self, text: str, clusters: dict[int, str], tree: RegionNode | None) -> bool:
        return self.undo_stack.push(_SetState(text, _state(clusters, tree)))

    def merge(self, cluster_ids, name: str) -> bool:
        """Label every cluster of ``cluster_ids`` with region ``name``.

        A region that loses its last cluster here while the tree has no node ``name`` yet is
        renamed in the tree (its place in the hierarchy kept)."""
        name = _clean(name, "region name")
        clusters, tree = self.state.labels, self.state.tree
        ids = [int(k) for k in cluster_ids]
        for k in ids:
            if k not in clusters:
                raise KeyError(f"no cluster {k} (clusters are 0..{len(clusters) - 1})")
        if not ids or all(clusters[k] == name for k in ids):
            return False
        before = list(dict.fromkeys(clusters[k] for k in ids))
        for k in ids:
            clusters[k] = name
        still_used = set(clusters.values())
        for old in before:
            if tree is None or old == name or old in still_used or name in _names(tree):
                continue
            if any(n.name == old and n.is_leaf for n in tree.walk()):
                tree = RegionNode(name) if tree.name == old else _replace(
                    tree, lambda n, old=old: RegionNode(name) if n.name == old and n.is_leaf else n)
        text = f"Label cluster {ids[0]} '{name}'" if len(ids) == 1 else f"Merge {len(ids)} clusters into '{name}'"
        return self._push(text, clusters, tree)

    def set_cluster_name(self, k: int, name: str) -> bool:
        return self.merge([k], name)

    def apply_preset(self, name: str) -> bool:
        """Replace the tree with a paper hierarchy ("faces", "cars", "churches" or a domain name)."""
        return self._push(f"Paper tree '{name}'", self.state.labels, paper_tree(name))

    def auto_tree(self) -> bool:
        """A balanced binary tree over the region names clusters use (tree order, then the clusters')."""
        used = set(self.state.labels.values())
        names = [n for n in self.region_names() if n in used]
        taken = set(names)
        counter = [0]

        def fresh(base: str) -> str:
            cand, i = base, 2
            while cand in taken:
                cand, i = f"{base}_{i}", i + 1
            taken.add(cand)
            return cand

        def build(part: list[str], root: bool) -> RegionNode:
            if len(part) == 1:
                return RegionNode(part[0])
            half = (len(part) + 1) // 2
            left, right = build(part[:half], False), build(part[half:], False)
            if root:
                label = fresh("all")
            else:
                joined = "_".join(part)
                counter[0] += 1
                label = fresh(joined if len(part) <= 3 and len(joined) <= 24 else f"group_{counter[0]}")
            return RegionNode(label, (left, right))

        return self._push("Auto tree", self.state.labels, build(names, True) if names else None)

    def _find(self, name: str) -> RegionNode | None:
        t = self.state.tree
        return None if t is None else next((n for n in t.walk() if n.name == name), None)

    def _parent(self, name: str) -> RegionNode | None:
        t = self.state.tree
        return None if t is None else next((n for n in t.walk() if any(c.name == name for c in n.children)), None)

    def group(self, a: str, b: str, parent_name: str | None = None) -> str:
        """Put nodes ``a`` and ``b`` under a new node ``parent_name`` (default ``a_b``), where ``a`` was.
        Returns the new node's name."""
        tree = self.state.tree
        if tree is None:
            raise ValueError("the tree is empty")
        if a == b:
            raise ValueError("pick two different nodes to group")
        na, nb = self._find(a), self._find(b)
        for name, n in ((a, na), (b, nb)):
            if n is None:
                raise ValueError(f"no node named '{name}' in the tree")
            if n is tree:
                raise ValueError(f"'{name}' is the root; it cannot be grouped")
        if b in _names(na) or a in _names(nb):
            raise ValueError(f"'{a}' and '{b}' are ancestor and descendant; group two separate nodes")
        pa, pb = self._parent(a), self._parent(b)
        if pa is pb and len(pa.children) == 2:
            raise ValueError(f"'{a}' and '{b}' already are the two children of '{pa.name}'")
        parent_name = _clean(parent_name or self.free_name(f"{a}_{b}"), "node name")
        if parent_name in _names(tree):
            raise ValueError(f"there already is a node named '{parent_name}'")
        new = RegionNode(parent_name, (na, nb))
        tree = _replace(tree, lambda n: new if n is na else (None if n is nb else n))
        self._push(f"Group '{a}' and '{b}'", self.state.labels, tree)
        return parent_name

    def ungroup(self, name: str) -> bool:
        """Replace internal node ``name`` by its children (its parent gains them)."""
        n = self._find(name)
        if n is None:
            raise ValueError(f"no node named '{name}' in the tree")
        if n.is_leaf:
            raise ValueError(f"'{name}' is a leaf; only internal nodes can be ungrouped")
        if n is self.state.tree:
            raise ValueError(f"'{name}' is the root; it cannot be ungrouped")
        tree = _replace(self.state.tree, lambda m: list(n.children) if m is n else m)
        return self._push(f"Ungroup '{name}'", self.state.labels, tree)

    def rename_node(self, old: str, new: str) -> bool:
        """Rename a tree node; renaming a leaf renames the region of its clusters too."""
        new = _clean(new, "node name")
        n = self._find(old)
        if n is None:
            raise ValueError(f"no node named '{old}' in the tree")
        if new == old:
            return False
        if new in _names(self.state.tree):
            raise ValueError(f"there already is a node named '{new}'"
                             + (" (to join two regions, merge their clusters)" if n.is_leaf else ""))
        clusters = self.state.labels
        if n.is_leaf:
            clusters = {k: (new if v == old else v) for k, v in clusters.items()}
        renamed = RegionNode(new, n.children)
        tree = renamed if n is self.state.tree else _replace(self.state.tree, lambda m: renamed if m is n else m)
        return self._push(f"Rename '{old}' to '{new}'", clusters, tree)

    def sync_tree(self) -> bool:
        """Drop leaves no cluster uses (a parent left with one child is replaced by it) and add
        missing regions under the root (group them afterwards)."""
        clusters = self.state.labels
        used = list(dict.fromkeys(clusters[k] for k in sorted(clusters)))

        def prune(n: RegionNode) -> RegionNode | None:
            if n.is_leaf:
                return n if n.name in used else None
            kids = [m for m in (prune(c) for c in n.children) if m is not None]
            if not kids:
                return None
            return kids[0] if len(kids) == 1 else RegionNode(n.name, tuple(kids))

        tree = None if self.state.tree is None else prune(self.state.tree)
        present = _names(tree)
        missing = [RegionNode(name) for name in used if name not in present]
        if missing:
            if tree is None:
                tree = missing[0] if len(missing) == 1 else RegionNode(self.free_name("all", ()), tuple(missing))
            elif tree.is_leaf:
                tree = RegionNode(self.free_name("all", present | set(used)), (tree, *missing))
            else:
                tree = RegionNode(tree.name, tree.children + tuple(missing))
        return self._push("Sync tree with clusters", clusters, tree)

    # ------------------------------------------------------------ undo
    def undo(self) -> bool:
        return self.undo_stack.undo()

    def redo(self) -> bool:
        return self.undo_stack.redo()

    def set_saved(self) -> None:
        self.undo_stack.set_clean()
