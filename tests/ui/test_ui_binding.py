"""The Qt binding must not leak references to None (PySide6 6.12.0 on Python < 3.12 does, and the app
then aborts with "none_dealloc" after a few thousand painter calls).  pyproject.toml excludes it."""
from __future__ import annotations

import sys

import pytest

from sfeditor.editor.composition import Composition
from sfeditor.regions.tree import paper_tree
from sfeditor.ui.node_graph import NodeGraphView


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None is immortal from Python 3.12")
def test_painting_does_not_drop_references_to_none(qtbot):
    view = NodeGraphView()
    qtbot.addWidget(view)
    view.resize(800, 500)
    view.set_tree(paper_tree("faces"))
    view.update_nodes(Composition(paper_tree("faces")))
    view.grab()
    before = sys.getrefcount(None)
    for _ in range(20):                      # ~ thousands of void painter / path calls
        view.viewport().update()
        view.grab()
    lost = before - sys.getrefcount(None)
    import PySide6

    assert lost < 200, (f"PySide6 {PySide6.__version__} lost {lost} references to None while painting; "
                        "this binding crashes long sessions (use PySide6-Essentials < 6.12 on Python < 3.12)")
