"""The Qt-free labelling document: every edit is one undo entry on immutable RegionNode trees."""
from __future__ import annotations

import numpy as np
import pytest

from sfeditor.regions.labelling import RegionLabels
from sfeditor.regions.regions_file import RegionsFile
from sfeditor.regions.tree import RegionNode, node, paper_tree

K, C = 6, 8


def unlabelled(k: int = K) -> RegionsFile:
    """A regions file as ``sfeditor-train regions`` writes it: leaves cluster_<id> under a Ward tree."""
    rng = np.random.default_rng(0)
    tree = node("all", node("g0", "cluster_0", node("g1", "cluster_1", "cluster_2")),
                node("g2", "cluster_3", node("g3", "cluster_4", "cluster_5")))
    return RegionsFile(domain="toy-faces", generator={"resolution": 16, "style_size": 32, "deep_pixel_channels": C},
                       deep_pixel_size=16, centroids=rng.normal(size=(k, C)).astype(np.float32),
                       clusters={i: f"cluster_{i}" for i in range(k)}, tree=tree)


def test_labelling_a_ward_tree_keeps_its_shape_and_undoes_step_by_step():
    doc = RegionLabels(unlabelled())
    start = doc.state
    names = ["hair", "skin", "eyes", "bg", "mouth", "clothes"]
    for k, name in enumerate(names):
        assert doc.set_cluster_name(k, name)
    assert [n.name for n in doc.tree().walk() if n.is_leaf] == names
    assert doc.problems() == [] and doc.is_modified()
    assert len(doc.undo_stack) == 6
    doc.merge([1, 4], "skin")                 # mouth's only cluster joins skin: leaf mouth has no cluster
    assert doc.clusters()[4] == "skin"
    assert "leaf 'mouth' has no cluster" in doc.problems()
    doc.undo()
    assert doc.clusters()[4] == "mouth" and doc.problems() == []
    while doc.undo():
        pass
    assert doc.state == start and not doc.is_modified()
    doc.redo()
    assert doc.clusters()[0] == "hair"


def test_group_ungroup_rename_sync_and_presets_are_pure_and_undoable():
    doc = RegionLabels(unlabelled())
    before = doc.tree()
    doc.ungroup("g1")                         # g0 gains cluster_1 and cluster_2: three children
    assert [c.name for c in doc.tree().children[0].children] == ["cluster_0", "cluster_1", "cluster_2"]
    assert any("has 3 children" in p for p in doc.problems())
    assert before.children[0].children[1].name == "g1"          # the old tree object is untouched
    new = doc.group("cluster_1", "cluster_2")
    assert new == "cluster_1_cluster_2" and doc.problems() == []
    doc.rename_node("cluster_0", "hair")
    assert doc.clusters()[0] == "hair" and doc.tree().children[0].children[0] == RegionNode("hair")
    with pytest.raises(ValueError, match="already is a node"):
        doc.rename_node("cluster_3", "hair")
    with pytest.raises(ValueError, match="root"):
        doc.group("all", "hair")
    with pytest.raises(ValueError, match="ancestor"):
        doc.group("g2", "cluster_3")
    n = len(doc.undo_stack)
    with pytest.raises(KeyError):
        doc.merge([99], "x")
    assert len(doc.undo_stack) == n           # a refused edit records nothing
    doc.apply_preset("faces")
    assert doc.tree() == paper_tree("faces")
    assert any("missing from the tree" in p for p in doc.problems())
    doc.sync_tree()
    leaves = {m.name for m in doc.tree().walk() if m.is_leaf}
    assert leaves == set(doc.clusters().values())
    doc.auto_tree()
    assert doc.problems() == []
    result = doc.result()
    assert result.tree == doc.tree() and result.clusters == doc.clusters()
    for _ in range(3):                        # auto_tree, sync_tree, apply_preset
        doc.undo()
    assert doc.tree().children[0].children[0] == RegionNode("hair")


def test_result_refuses_incomplete_labels():
    doc = RegionLabels(unlabelled())
    doc.apply_preset("cars")
    with pytest.raises(ValueError, match="not complete"):
        doc.result()
