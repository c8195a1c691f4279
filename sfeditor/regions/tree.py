"""The region tree (paper Sec. 4.5, Fig. 7, Appendix A.1): the one tree type of sfeditor.

A binary tree of named regions: a leaf is a region a user controls (hair, eyes, ...); an
internal node fuses its two children with a FusionNet and owns a "global" alignment code.
Regions files, hierarchies, compositions and the labelling tool all use :class:`RegionNode`.

Two walks: iterating a node is breadth-first (parents first: the order FusionNets are trained,
Sec. 4.5); :meth:`RegionNode.walk` is pre-order (node, child 1's subtree, child 2's).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator, Mapping

__all__ = ["RegionNode", "node", "PAPER_TREES", "DOMAIN_TREES", "paper_tree", "leaves", "find_node",
           "region_of", "internal_nodes", "validate_tree"]

MAX_DEPTH = 64


@dataclass(frozen=True)
class RegionNode:
    """A node of the region hierarchy: a leaf region, or exactly two children (Sec. 4.5)."""

    name: str
    children: tuple["RegionNode", ...] = ()

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def to_dict(self) -> dict | str:
        """Nested ``{"name", "children": [c1, c2]}``; a leaf is its name (a plain string)."""
        if self.is_leaf:
            return self.name
        return {"name": self.name, "children": [c.to_dict() for c in self.children]}

    @classmethod
    def from_dict(cls, d, path: str = "tree", _depth: int = 0) -> "RegionNode":
        """Parse and check one subtree of a file (binary, named, no unknown keys); leaves may be
        strings or ``{"name": ...}``."""
        if _depth > MAX_DEPTH:
            raise ValueError(f"{path}: the region tree is nested deeper than {MAX_DEPTH} levels")
        if isinstance(d, str):
            d = {"name": d}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a tree node must be an object with a 'name', got {type(d).__name__}")
        extra = set(d) - {"name", "children"}
        if extra:
            raise ValueError(f"{path}: unknown tree node keys {sorted(extra)}")
        name = d.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: a tree node needs a non-empty string 'name'")
        kids = d.get("children")
        if kids is None or kids == []:
            return cls(name)
        if not isinstance(kids, list) or len(kids) != 2:
            n = len(kids) if isinstance(kids, list) else type(kids).__name__
            raise ValueError(f"{path} ({name!r}): an internal node must have exactly 2 children, got {n}")
        return cls(name, tuple(cls.from_dict(k, f"{path}.{name}[{i}]", _depth + 1) for i, k in enumerate(kids)))

    @classmethod
    def parse(cls, spec) -> "RegionNode":
        """Any tree spelling -> a checked tree: a RegionNode, a nested dict, a nested tuple
        ``("all", (child1, child2))`` or ``("all", c1, c2)``, or a region name (a one-node tree).
        Node names must be unique."""
        root = _parse(spec, 0)
        validate_tree(root)
        return root

    def __str__(self) -> str:
        """Compact nested form: ``all(face(skin_mouth(mouth, skin), eyes), ...)``."""
        return self.name if self.is_leaf else f"{self.name}({', '.join(str(c) for c in self.children)})"

    def __iter__(self) -> Iterator["RegionNode"]:
        """All nodes, parents first (breadth-first from this node)."""
        queue = deque([self])
        while queue:
            n = queue.popleft()
            yield n
            queue.extend(n.children)

    def walk(self) -> Iterator["RegionNode"]:
        """Pre-order: the node, then child 1's subtree, then child 2's."""
        yield self
        for c in self.children:
            yield from c.walk()


def _parse(spec, depth: int) -> RegionNode:
    if depth > MAX_DEPTH:
        raise ValueError(f"the region tree is nested deeper than {MAX_DEPTH} levels")
    if isinstance(spec, RegionNode):
        return spec
    if isinstance(spec, str):
        name, kids = spec, []
    elif isinstance(spec, Mapping):
        name, kids = spec.get("name"), spec.get("children") or []
        if not isinstance(kids, (list, tuple)):
            raise ValueError(f"node {name!r}: children must be a list")
    elif isinstance(spec, (tuple, list)) and spec and isinstance(spec[0], str):
        name, kids = spec[0], list(spec[1:])
        if len(kids) == 1 and isinstance(kids[0], (tuple, list)) and len(kids[0]) == 2:
            kids = list(kids[0])            # ("all", (child1, child2))
    else:
        raise ValueError(f"cannot read a tree node from {spec!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tree node names must be non-empty strings, got {name!r}")
    if len(kids) not in (0, 2):
        raise ValueError(f"node {name!r} has {len(kids)} children; the region tree is binary (0 or 2)")
    return RegionNode(name, tuple(_parse(k, depth + 1) for k in kids))


def node(name: str, *children: RegionNode | str) -> RegionNode:
    """Build a tree tersely: ``node("car", "car_body", "wheels")``."""
    return RegionNode(name, tuple(c if isinstance(c, RegionNode) else RegionNode(c) for c in children))


#: The paper's hierarchies (Appendix A.1), children in the official code's order; leaves are the
#: regions each code controls.
PAPER_TREES: dict[str, RegionNode] = {
    "faces": node("all",
                  node("face", node("skin_mouth", "mouth", "skin"), "eyes"),
                  node("bg_hair_clothes", node("bg_clothes", "clothes", "bg"), "hair")),
    "cars": node("all", node("car", "car_body", "wheels"),
                 node("background", "background_top", "background_bottom")),
    "churches": node("all", "church", "background"),
}

#: Which paper tree each domain uses.
DOMAIN_TREES = {"toy-faces": "faces", "toy-cars": "cars", "ffhq": "faces", "face": "faces", "car": "cars",
                "church": "churches"}


def paper_tree(name: str) -> RegionNode:
    """A paper hierarchy by tree name ("faces", "cars", "churches") or domain name."""
    key = DOMAIN_TREES.get(name, name)
    if key not in PAPER_TREES:
        raise ValueError(f"no built-in tree {name!r}; known: {', '.join(PAPER_TREES)} "
                         f"(or a domain: {', '.join(DOMAIN_TREES)})")
    return PAPER_TREES[key]


def leaves(tree: RegionNode) -> list[str]:
    """Leaf names, left to right."""
    return [n.name for n in tree.walk() if n.is_leaf]


def find_node(tree: RegionNode, name: str) -> RegionNode:
    for n in tree:
        if n.name == name:
            return n
    raise KeyError(f"no region named {name!r} in the tree (nodes: {', '.join(n.name for n in tree)})")


def region_of(tree: RegionNode, name: str) -> set[str]:
    """The set of leaves under node ``name`` (e.g. "face" -> {"mouth", "skin", "eyes"})."""
    return set(leaves(find_node(tree, name)))


def internal_nodes(tree: RegionNode) -> list[RegionNode]:
    """Internal nodes parents first (breadth-first: the order FusionNets are trained, Sec. 4.5)."""
    return [n for n in tree if not n.is_leaf]


def validate_tree(tree: RegionNode) -> None:
    """Raise ValueError on duplicate node names or a node with other than 0 or 2 children."""
    seen: set[str] = set()
    for n in tree:
        if n.name in seen:
            raise ValueError(f"region tree has duplicate node name {n.name!r}")
        if not n.is_leaf and len(n.children) != 2:
            raise ValueError(f"tree: node {n.name!r} must have exactly 2 children, got {len(n.children)}")
        seen.add(n.name)
