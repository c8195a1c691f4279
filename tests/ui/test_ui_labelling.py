"""The region labelling dialog (sfeditor.ui.labelling): cluster names, tree edits, validation, saving."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QDialog, QInputDialog  # noqa: E402

from sfeditor.regions.regions_file import RegionsFile
from sfeditor.regions.tree import node  # noqa: E402
from sfeditor.ui.labelling import RegionLabellingDialog  # noqa: E402

K, C = 6, 8


def make_regions(clusters=None, tree=None) -> RegionsFile:
    rng = np.random.default_rng(0)
    return RegionsFile(domain="tiny", generator={"resolution": 32, "style_size": 100, "deep_pixel_channels": C},
                       centroids=rng.normal(size=(K, C)).astype(np.float32),
                       clusters=clusters or {0: "a", 1: "b", 2: "c", 3: "a", 4: "b", 5: "c"},
                       tree=tree or node("all", node("ab", "a", "b"), "c"), deep_pixel_size=32,
                       card={"note": "kept"})


def make_sheets() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(1)
    return {k: rng.integers(0, 256, (18 + 36, 2 + 3 * 34, 3), dtype=np.uint8) for k in range(K)}


@pytest.fixture
def dlg(qtbot):
    d = RegionLabellingDialog(make_regions(), make_sheets(), shares={k: 1 / K for k in range(K)})
    qtbot.addWidget(d)
    d._ask_unsaved = lambda: "discard"     # never block on a message box at teardown
    return d


def test_starts_valid_and_shows_every_cluster(dlg):
    assert dlg.problems() == [] and dlg.save_button.isEnabled() and not dlg.is_dirty()
    assert dlg.table.rowCount() == K and sorted(dlg.combos) == list(range(K))
    assert [dlg.combos[k].currentText() for k in range(K)] == ["a", "b", "c", "a", "b", "c"]
    assert dlg.region_names() == ["a", "b", "c"]
    assert dlg.tree_widget.topLevelItem(0).text(0) == "all"
    assert dlg.tree_widget.topLevelItem(0).text(1) == str(K)       # clusters under the root
    assert "Ready to save" in dlg.problem_label.text()


def test_rename_a_cluster_and_missing_region(dlg):
    dlg.set_cluster_name(2, "d")                # "c" keeps cluster 5, so the tree has no leaf "d"
    assert dlg.clusters()[2] == "d" and dlg.is_dirty()
    assert dlg.problems() == ["region 'd' is used by clusters but missing from the tree"]
    assert not dlg.save_button.isEnabled() and "missing from the tree" in dlg.problem_label.text()
    assert dlg.combos[2].currentText() == "d" and dlg.combos[0].findText("d") >= 0   # new name offered everywhere
    dlg.set_cluster_name(2, "  c ")             # names are stripped
    assert dlg.problems() == []
    with pytest.raises(ValueError):
        dlg.set_cluster_name(0, "   ")
    with pytest.raises(KeyError):
        dlg.set_cluster_name(99, "a")


def test_a_region_losing_its_last_cluster_renames_its_leaf(dlg):
    dlg.merge([2, 5], "sky")                    # all of "c"'s clusters -> the leaf follows
    assert dlg.tree() == node("all", node("ab", "a", "b"), "sky") and dlg.problems() == []


def test_merge_then_sync(dlg):
    dlg.merge([0, 1, 3, 4], "fg")               # "a" -> leaf renamed; "b" left without a cluster
    assert set(dlg.clusters().values()) == {"fg", "c"}
    assert dlg.problems() == ["leaf 'b' has no cluster"]
    item = dlg.tree_widget.findItems("b", Qt.MatchFlag.MatchRecursive)[0]
    assert item.text(1) == "0" and "no cluster" in item.toolTip(0)
    dlg.sync_tree()                             # "ab" keeps one child and is replaced by it
    assert dlg.tree() == node("all", "fg", "c") and dlg.problems() == []


def test_sync_adds_missing_regions_under_the_root(dlg):
    dlg.set_cluster_name(0, "x")
    dlg.set_cluster_name(1, "y")
    dlg.sync_tree()
    assert dlg.tree() == node("all", node("ab", "a", "b"), "c", "x", "y")
    assert dlg.problems() == ["node 'all' has 4 children; the tree must be binary"]
    dlg.group("x", "y", "xy")
    dlg.group("c", "xy", "rest")
    assert dlg.tree() == node("all", node("ab", "a", "b"), node("rest", "c", node("xy", "x", "y")))
    assert dlg.problems() == []


def test_presets(dlg):
    dlg.apply_preset("churches")
    probs = dlg.problems()
    assert "region 'a' is used by clusters but missing from the tree" in probs
    assert "leaf 'church' has no cluster" in probs and "leaf 'background' has no cluster" in probs
    assert not dlg.save_button.isEnabled()
    dlg.merge([0, 1, 3], "church")
    dlg.merge([2, 4, 5], "background")
    assert dlg.problems() == [] and dlg.result_regions().leaves == ["church", "background"]
    dlg.apply_preset("faces")
    assert dlg.tree().name == "all" and "leaf 'eyes' has no cluster" in dlg.problems()
    with pytest.raises(ValueError):
        dlg.apply_preset("dogs")


def test_group_and_ungroup(dlg):
    dlg.ungroup("ab")
    assert dlg.tree() == node("all", "a", "b", "c")
    assert dlg.problems() == ["node 'all' has 3 children; the tree must be binary"]
    assert dlg.group("b", "c") == "b_c"         # default name
    assert dlg.tree() == node("all", "a", node("b_c", "b", "c")) and dlg.problems() == []
    with pytest.raises(ValueError, match="root"):
        dlg.ungroup("all")
    with pytest.raises(ValueError, match="leaf"):
        dlg.ungroup("a")
    with pytest.raises(ValueError, match="root"):
        dlg.group("all", "a", "p")
    with pytest.raises(ValueError, match="already"):
        dlg.group("b", "c", "p")                # already the two children of b_c
    with pytest.raises(ValueError, match="ancestor"):
        dlg.group("b_c", "b", "p")
    with pytest.raises(ValueError, match="already is a node"):
        dlg.ungroup("b_c") or dlg.group("a", "b", "c")
    with pytest.raises(ValueError, match="no node"):
        dlg.group("a", "zzz", "p")


def test_grouping_across_parents_and_unary_nodes(qtbot):
    d = RegionLabellingDialog(make_regions())
    qtbot.addWidget(d)
    d._ask_unsaved = lambda: "discard"
    d.group("a", "c", "ac")                     # not siblings: the new node goes where "a" was
    assert d.tree() == node("all", node("ab", node("ac", "a", "c"), "b"))
    assert d.problems() == ["node 'all' has 1 child; the tree must be binary"]
    with pytest.raises(ValueError, match="already"):
        d.rename_node("ac", "a")
    d.set_cluster_name(0, "ab")                 # a cluster labelled with an internal node
    assert any("'ab' is used by clusters but is an internal node" in p for p in d.problems())


def test_auto_tree(qtbot):
    rf = make_regions(clusters={0: "p", 1: "q", 2: "r", 3: "s", 4: "t", 5: "p"},
                      tree=node("all", node("pq", "p", "q"), node("rst", "r", node("st", "s", "t"))))
    d = RegionLabellingDialog(rf)
    qtbot.addWidget(d)
    d._ask_unsaved = lambda: "discard"
    d.set_cluster_name(4, "u")                  # "t" -> "u" (leaf follows)
    d.set_cluster_name(3, "all")                # a region named like the default root
    d.auto_tree()
    tree = d.tree()
    assert sorted(d.result_regions().leaves) == ["all", "p", "q", "r", "u"]
    assert all(len(n.children) in (0, 2) for n in tree) and d.problems() == []
    assert tree.name != "all" and len({n.name for n in tree}) == len(list(tree))
    depth = lambda n: 0 if n.is_leaf else 1 + max(depth(c) for c in n.children)   # noqa: E731
    assert depth(tree) == 3                     # balanced over 5 leaves


def test_rename_nodes(dlg):
    dlg.rename_node("ab", "pair")
    dlg.rename_node("c", "sky")                 # a leaf: its clusters follow
    assert dlg.tree() == node("all", node("pair", "a", "b"), "sky")
    assert dlg.clusters()[2] == dlg.clusters()[5] == "sky" and dlg.problems() == []
    with pytest.raises(ValueError):
        dlg.rename_node("sky", "a")
    with pytest.raises(ValueError):
        dlg.rename_node("nope", "x")


def test_save_round_trip_and_refusal(dlg, tmp_path):
    path = tmp_path / "labelled.json"
    dlg.merge([2, 5], "sky")
    dlg.rename_node("ab", "pair")
    dlg.set_cluster_name(0, "zz")               # invalid: "zz" not in the tree
    with pytest.raises(ValueError, match="missing from the tree"):
        dlg.save(str(path))
    assert not path.exists() and not dlg.save_button.isEnabled()
    dlg._on_save_clicked()                      # the button path refuses too
    assert not path.exists() and "Cannot save" in dlg.status_label.text()
    dlg.set_cluster_name(0, "a")
    seen = []
    dlg.saved.connect(seen.append)
    result = dlg.save(str(path))
    back = RegionsFile.load(path)
    assert back.clusters == {0: "a", 1: "b", 2: "sky", 3: "a", 4: "b", 5: "sky"}
    assert back.tree == node("all", node("pair", "a", "b"), "sky") == result.tree
    assert back.card == {"note": "kept"} and back.num_clusters == K
    assert seen == [str(path)] and not dlg.is_dirty() and dlg.saved_regions is result
    assert dlg.result_regions().clusters == back.clusters


def test_save_button_writes_to_save_path_and_closes(qtbot, tmp_path):
    path = tmp_path / "out.json"
    d = RegionLabellingDialog(make_regions(), save_path=str(path))
    qtbot.addWidget(d)
    d.show()
    d.rename_node("ab", "pair")
    d.save_button.click()
    assert path.exists() and RegionsFile.load(path).tree.children[0].name == "pair"
    assert d.result() == QDialog.DialogCode.Accepted and not d.isVisible()


def test_unsaved_changes_prompt(qtbot):
    d = RegionLabellingDialog(make_regions())
    qtbot.addWidget(d)
    asked = []
    d._ask_unsaved = lambda: asked.append(1) or "cancel"
    d.show()
    d.close()                                   # unchanged: no question
    assert not asked and not d.isVisible()
    d.show()
    d.set_cluster_name(0, "b")
    d.close()
    assert asked == [1] and d.isVisible()       # cancelled: stays open
    d._ask_unsaved = lambda: "discard"
    d.reject()
    assert not d.isVisible() and d.result() == QDialog.DialogCode.Rejected


def test_widgets_drive_the_edits(dlg, qtbot, monkeypatch):
    # typing a name into a cluster's combo box
    combo = dlg.combos[1]
    combo.setEditText("b")
    combo.setEditText("fresh")
    combo.lineEdit().editingFinished.emit()
    qtbot.waitUntil(lambda: dlg.clusters()[1] == "fresh", timeout=2000)
    dlg.set_cluster_name(1, "b")
    # select rows, then merge through the (patched) input dialog
    dlg._select_region("a")
    assert dlg.selected_clusters() == [0, 3] and dlg.merge_button.isEnabled()
    monkeypatch.setattr(QInputDialog, "getItem", staticmethod(lambda *a, **k: ("c", True)))
    dlg.merge_button.click()
    assert [dlg.clusters()[k] for k in (0, 3)] == ["c", "c"] and "leaf 'a' has no cluster" in dlg.problems()
    # double-click renaming in the tree
    item = dlg.tree_widget.findItems("ab", Qt.MatchFlag.MatchRecursive)[0]
    item.setText(0, "pair")
    qtbot.waitUntil(lambda: dlg.tree().children[0].name == "pair", timeout=2000)
    # group two selected tree nodes (the root's two children are refused: nothing to group)
    dlg.tree_widget.clearSelection()
    for name in ("pair", "c"):
        dlg.tree_widget.findItems(name, Qt.MatchFlag.MatchRecursive)[0].setSelected(True)
    assert dlg.group_button.isEnabled() and not dlg.ungroup_button.isEnabled()
    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: ("both", True)))
    dlg.group_button.click()
    assert "already are the two children" in dlg.status_label.text()
    dlg.tree_widget.clearSelection()
    dlg.tree_widget.findItems("pair", Qt.MatchFlag.MatchRecursive)[0].setSelected(True)
    assert dlg.ungroup_button.isEnabled()
    dlg.ungroup_button.click()
    assert dlg.tree() == node("all", "a", "b", "c")
    for name in ("b", "c"):
        dlg.tree_widget.findItems(name, Qt.MatchFlag.MatchRecursive)[0].setSelected(True)
    dlg.group_button.click()
    assert dlg.tree() == node("all", "a", node("both", "b", "c")) and dlg.status_label.text() == ""
    # a failing edit shows its error instead of raising
    dlg.tree_widget.clearSelection()
    dlg.tree_widget.findItems("all", Qt.MatchFlag.MatchRecursive)[0].setSelected(True)
    assert not dlg.ungroup_button.isEnabled()
    dlg._on_ungroup_clicked()                   # (the disabled button's handler)
    assert "root" in dlg.status_label.text()
    # presets from their buttons; a contact sheet opens larger on click
    dlg.preset_buttons["cars"].click()
    assert dlg.tree().name == "all" and "leaf 'wheels' has no cluster" in dlg.problems()
    dlg.thumbs[4].click()
    assert len(dlg._viewers) == 1 and dlg._viewers[0].isVisible()
    assert dlg._viewers[0].image.pixmap().width() >= 700


def test_without_sheets(qtbot):
    d = RegionLabellingDialog(make_regions(), None)
    qtbot.addWidget(d)
    assert d.show_sheet(0) is None and not d.thumbs[0].isEnabled()
    assert d.table.columnCount() == 3            # no pixel-share column without shares
