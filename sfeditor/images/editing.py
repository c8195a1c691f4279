"""Region-limited editing and region transfer through a FusionNet hierarchy (paper Sec. 6).

A *composition* maps hierarchy node names to codes: one per leaf (the region
codes) and one per internal node (the global / alignment codes).  A code is
a w+ tensor ``[B, n_latent, w_dim]`` (or w ``[B, w_dim]``), turned into S with
``G.styles`` when fused, or already a :class:`StyleCode`.

* Real-image editing (Sec. 6.1, Fig. 14): invert the image to w, start from
  the composition that gives every node w (fusing identical codes
  reproduces the image), move the codes of the chosen regions' nodes along a
  latent direction (``w_edit``) and fuse: "we pass w_edit as input to FN_face
  while the original code w is passed to the remaining networks".  A region
  is a node of the tree; *its* nodes are the node itself and everything below
  it (for a leaf: just the leaf; for ``face``: face's global code and those of
  skin_mouth, mouth, skin, eyes).  :func:`edit_whole` is the unrestricted edit
  for comparison.
* Region transfer (Sec. 6.2 hair transfer): the reference's code goes to the
  region's nodes, the target's code to every other node, global codes
  included (:func:`transfer_region`, :func:`hair_transfer`).

A region whose code the hierarchy would not read (an ancestor is collapsed or
has no FusionNet, so the whole subtree takes the ancestor's code) cannot be
edited on its own: that is an error naming the ancestor.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch

from .directions import apply_direction
from ..model.style_code import StyleCode

__all__ = ["composition_from", "region_nodes", "check_region", "fuse", "render", "edit_regions",
           "edit_whole", "transfer_region", "hair_transfer", "changed_nodes"]


def _all_nodes(hierarchy) -> list[str]:
    return [n.name for n in hierarchy.root.walk()]


def composition_from(hierarchy, code) -> dict:
    """Every node of the tree (leaves and internal nodes) gets ``code`` (one shared object)."""
    return {name: code for name in _all_nodes(hierarchy)}


def _bypass_ancestor(hierarchy, name: str, collapsed: set[str]) -> str | None:
    """The topmost ancestor that passes its own code (so ``name``'s code is never read), if any."""
    anc = hierarchy.parent_of(name)
    found = None
    while anc is not None:
        if anc in collapsed or not hierarchy.has_net(anc):
            found = anc
        anc = hierarchy.parent_of(anc)
    return found


def check_region(hierarchy, region: str, collapsed: Iterable[str] | None = None) -> None:
    """Raise a clear ValueError if ``region`` is not a node, or is hidden by a collapsed ancestor."""
    names = _all_nodes(hierarchy)
    if region not in names:
        raise ValueError(f"no region {region!r} in the hierarchy; its nodes are: {', '.join(names)}")
    col = set(hierarchy.collapsed if collapsed is None else collapsed)
    anc = _bypass_ancestor(hierarchy, region, col)
    if anc is not None:
        why = "is collapsed" if anc in col else "has no FusionNet"
        raise ValueError(f"region {region!r} cannot be changed on its own: its ancestor {anc!r} {why}, so the "
                         f"whole {anc!r} subtree takes {anc!r}'s code (un-collapse it, or edit {anc!r})")


def region_nodes(hierarchy, region: str, collapsed: Iterable[str] | None = None) -> list[str]:
    """The nodes whose codes belong to ``region``: the node and all its descendants (pre-order)."""
    check_region(hierarchy, region, collapsed)
    return [n.name for n in hierarchy.node_map[region].walk()]


def _styles(G, code) -> StyleCode:
    if isinstance(code, StyleCode):
        return code
    if not isinstance(code, torch.Tensor):
        raise TypeError(f"a code must be a w / w+ tensor or a StyleCode, got {type(code).__name__}")
    return G.styles(code.to(G.device))


def fuse(G, hierarchy, composition: Mapping[str, object], collapsed: Iterable[str] | None = None) -> StyleCode:
    """Fused S code of a composition (w / w+ entries go through ``G.styles``; codes shared by
    several nodes are converted once, which also lets the hierarchy's cache see identical inputs)."""
    need = hierarchy.required_codes(None if collapsed is None else set(collapsed))
    missing = [n for n in need if n not in composition]
    if missing:
        raise ValueError(f"the composition lacks codes for {missing}")
    converted: dict[int, StyleCode] = {}
    codes = {}
    for n in need:
        c = composition[n]
        key = id(c)
        if key not in converted:
            converted[key] = _styles(G, c)
        codes[n] = converted[key]
    return hierarchy(codes, collapsed=None if collapsed is None else set(collapsed))


@torch.no_grad()
def render(G, code, noise: Sequence[torch.Tensor] | None = None, noise_mode: str = "const") -> torch.Tensor:
    """Image ``[B, 3, S, S]`` in [-1, 1] of a StyleCode or w / w+ tensor."""
    s = _styles(G, code)
    if noise is not None:
        noise = [n.to(G.device) for n in noise]
    return G.synthesis(s, noise_mode=noise_mode, noise=noise)


def edit_regions(G, hierarchy, composition: Mapping[str, object], direction, strength: float,
                 regions: Iterable[str], *, layers: Iterable[int] | None = None,
                 collapsed: Iterable[str] | None = None) -> dict:
    """A new composition whose ``regions``' nodes moved along ``direction`` by ``strength``.

    Every other entry is the same object as in ``composition``.  Entries must be
    w / w+ tensors for the edited nodes (directions live in W).  A node listed
    through several regions moves once.
    """
    regions = list(regions)
    if not regions:
        raise ValueError("no regions given to edit")
    targets: list[str] = []
    for r in regions:
        for n in region_nodes(hierarchy, r, collapsed):
            if n not in targets:
                targets.append(n)
    out = dict(composition)
    edited: dict[int, torch.Tensor] = {}
    for n in targets:
        if n not in composition:
            continue           # not read by this hierarchy (e.g. below a node without a net)
        c = composition[n]
        if isinstance(c, StyleCode):
            raise TypeError(f"node {n!r} holds an S-space code; W directions need its w / w+ (keep the "
                            "inversion's w+)")
        if id(c) not in edited:   # shared code objects stay shared after the edit
            edited[id(c)] = apply_direction(G, c, direction, strength, layers)
        out[n] = edited[id(c)]
    return out


def edit_whole(G, w_plus: torch.Tensor, direction, strength: float,
               layers: Iterable[int] | None = None) -> torch.Tensor:
    """The same edit on the whole image (no StyleFusion): ``w + strength * direction``."""
    return apply_direction(G, w_plus, direction, strength, layers)


def _pick(code_or_comp, name: str):
    if isinstance(code_or_comp, Mapping):
        try:
            return code_or_comp[name]
        except KeyError:
            raise ValueError(f"the composition given has no code for node {name!r}") from None
    return code_or_comp


def transfer_region(hierarchy, region: str, from_code, to_code, collapsed: Iterable[str] | None = None) -> dict:
    """Composition with ``region`` taken from ``from_code`` and everything else from ``to_code``.

    ``from_code`` / ``to_code``: single codes (w+, w or StyleCode) or compositions
    (dicts node -> code).  The region's nodes are the region node and its
    descendants; all other nodes, the global codes of the region's ancestors
    included, keep ``to_code``.
    """
    inside = set(region_nodes(hierarchy, region, collapsed))
    return {n: _pick(from_code if n in inside else to_code, n) for n in _all_nodes(hierarchy)}


def hair_transfer(G, hierarchy, target, reference, region: str = "hair",
                  collapsed: Iterable[str] | None = None) -> tuple[dict, StyleCode]:
    """Sec. 6.2: the reference's hair on the target.  Returns (composition, fused StyleCode).

    ``target`` / ``reference``: inverted codes (w+ tensors, StyleCodes or compositions).
    """
    comp = transfer_region(hierarchy, region, reference, target, collapsed)
    return comp, fuse(G, hierarchy, comp, collapsed)


def changed_nodes(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """Nodes whose code differs between two compositions (by value)."""
    out = []
    for n in after:
        a, b = before.get(n), after[n]
        if a is b:
            continue
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape == b.shape and torch.equal(a, b):
                continue
        elif isinstance(a, StyleCode) and isinstance(b, StyleCode):
            if a.layout.dims == b.layout.dims and torch.equal(a.flat(), b.flat()):
                continue
        out.append(n)
    return out
