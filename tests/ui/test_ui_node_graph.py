"""NodeGraphView: layout, state display, and the intents it emits (it never edits the composition)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragLeaveEvent, QDragMoveEvent, QDropEvent, QMouseEvent, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from sfeditor.editor.composition import Composition, NodeState  # noqa: E402
from sfeditor.regions.tree import paper_tree  # noqa: E402
from sfeditor.regions.tree import leaves
from sfeditor.ui.node_graph import (DIM_OPACITY, LIGHT, NODE_MIME, ZOOM_MAX, ZOOM_MIN,  # noqa: E402
                                    NodeGraphView)


class Recorder:
    """Collects every emission of the view's intent signals as (signal name, *args)."""

    SIGNALS = ("selectionChangedNames", "rerollRequested", "seedRequested", "lockRequested", "collapseRequested",
               "copyRequested", "clearCodeRequested", "photoRequested", "heatmapRequested", "filesDropped",
               "randomizeRequested")

    def __init__(self, view):
        self.calls = []
        for s in self.SIGNALS:
            getattr(view, s).connect(lambda *a, s=s: self.calls.append((s, *a)))

    def of(self, name):
        return [c[1:] for c in self.calls if c[0] == name]

    def clear(self):
        self.calls.clear()


@pytest.fixture
def faces():
    return paper_tree("faces")


@pytest.fixture
def view(qtbot, faces):
    v = NodeGraphView()
    qtbot.addWidget(v)
    v.resize(1000, 700)
    v.set_tree(faces)
    v.update_nodes(Composition(faces))
    v.show()
    qtbot.waitExposed(v)
    return v


@pytest.fixture
def rec(view):
    return Recorder(view)


def vpos(view, name, local=None) -> QPoint:
    """View (viewport) position of item point ``local`` (default: the thumbnail) of node ``name``."""
    item = view.node_item(name)
    local = QPointF(40, 60) if local is None else local
    return view.mapFromScene(item.mapToScene(local))


def glyph_pos(view, name, glyph) -> QPoint:
    item = view.node_item(name)
    return vpos(view, name, item.glyph_rect(glyph).center())


def empty_pos(view) -> QPoint:
    root = view.node_item(view.node_names()[0])
    p = view.mapFromScene(root.mapToScene(QPointF(-200, 40)))
    assert view._node_at(p) is None
    return p


def send_mouse(view, etype, pos, button=Qt.LeftButton, buttons=None, mods=Qt.NoModifier):
    pos = QPointF(pos)
    buttons = button if buttons is None else buttons
    ev = QMouseEvent(etype, pos, QPointF(view.viewport().mapToGlobal(pos.toPoint())), button, buttons, mods)
    QApplication.sendEvent(view.viewport(), ev)


def comp_with(faces, **states) -> Composition:
    comp = Composition(faces)
    for name, st in states.items():
        comp.set_state(name, st)
    return comp


# --------------------------------------------------------------------- layout
def test_layout_is_a_top_down_tree(view, faces):
    names = view.node_names()
    assert names == [n.name for n in faces]
    card = {n: view.node_item(n).mapRectToScene(view.node_item(n).card_rect()) for n in names}
    for n in faces:
        for c in n.children:
            assert card[n.name].bottom() < card[c.name].top()                  # parents above children
        if n.children:                                                         # centred over them
            mean = sum(card[c.name].center().x() for c in n.children) / len(n.children)
            assert card[n.name].center().x() == pytest.approx(mean)
    bottoms = {card[leaf].top() for leaf in leaves(faces)}
    assert len(bottoms) == 1 and bottoms.pop() == max(r.top() for r in card.values())   # leaves: bottom row
    xs = [card[leaf].center().x() for leaf in leaves(faces)]
    assert xs == sorted(xs)                                                    # left to right, tree order
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not card[a].intersects(card[b]), (a, b)
    r = card[names[0]]
    assert (r.width(), r.height()) == (150, 118)
    for n in names:                                                            # fit: all of it in view
        assert view.viewport().rect().contains(view.mapFromScene(card[n]).boundingRect())


# ---------------------------------------------------------------- node states
def test_update_nodes_shows_seed_flags_and_bypass(view, faces):
    comp = comp_with(faces, face=NodeState(seed=1234, locked=True), bg_clothes=NodeState(seed=5, collapsed=True),
                     eyes=NodeState(seed=3, code=np.zeros((1, 8), np.float32)))
    view.update_nodes(comp)
    face, eyes, bgc = view.node_item("face"), view.node_item("eyes"), view.node_item("bg_clothes")
    assert face.seed_text() == "seed 1234" and face.locked and not face.collapsed
    assert eyes.seed_text() == "photo/edited code" and eyes.explicit
    assert bgc.collapsed and ("bypass: subtree uses this code", "bypass") in bgc.badges()
    assert view.node_item("mouth").seed_text() == f"seed {comp.state('mouth').seed}"
    for n in ("clothes", "bg"):                                                # under the collapsed node
        assert view.node_item(n).bypassed_by == "bg_clothes"
        assert view.node_item(n).opacity() == pytest.approx(DIM_OPACITY)
    for n in ("all", "face", "bg_clothes", "hair", "eyes", "mouth"):
        assert view.node_item(n).bypassed_by is None and view.node_item(n).opacity() == 1.0
    assert view._edges["clothes"].dashed and not view._edges["hair"].dashed

    comp.set_state("all", NodeState(seed=0, collapsed=True))                   # topmost collapsed ancestor wins
    view.update_nodes(comp)
    assert {view.node_item(n).bypassed_by for n in view.node_names()[1:]} == {"all"}
    assert view.node_item("all").opacity() == 1.0

    view.update_nodes(Composition(faces))                                      # all expanded again
    assert all(view.node_item(n).opacity() == 1.0 for n in view.node_names())
    assert not bgc.collapsed and bgc.badges() == [] and not face.locked and not eyes.explicit
    view.grab()                                                                # paints every state


def test_thumbnail_and_net_badge(view):
    item = view.node_item("hair")
    view.set_thumbnail("hair", np.full((64, 64, 3), 200, np.uint8))
    assert item.pixmap is not None and item.pixmap.width() == 64
    view.set_thumbnail("hair", None)
    assert item.pixmap is None
    view.set_thumbnail("no-such-node", np.zeros((4, 4, 3), np.uint8))         # stale renders are ignored
    with pytest.raises(ValueError):
        view.set_thumbnail("hair", np.zeros((4, 4, 3), np.float32))
    view.set_net_available("face", False)
    assert ("no net (bypass)", "no_net") in view.node_item("face").badges()
    view.set_net_available("hair", False)                                      # leaves have no net
    assert view.node_item("hair").badges() == []
    view.set_net_available("face", True)
    assert view.node_item("face").badges() == []


# --------------------------------------------------------------- glyph clicks
def test_glyph_buttons_emit_intents(view, rec, faces):
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, glyph_pos(view, "skin", "reroll"))
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, glyph_pos(view, "face", "lock"))
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, glyph_pos(view, "face", "collapse"))
    assert rec.of("rerollRequested") == [("skin",)]
    assert rec.of("lockRequested") == [("face", True)]
    assert rec.of("collapseRequested") == [("face", True)]
    assert rec.of("selectionChangedNames") == []                               # buttons don't select

    view.update_nodes(comp_with(faces, face=NodeState(seed=1, locked=True, collapsed=True)))
    rec.clear()
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, glyph_pos(view, "face", "lock"))
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, glyph_pos(view, "face", "collapse"))
    assert rec.of("lockRequested") == [("face", False)]
    assert rec.of("collapseRequested") == [("face", False)]
    with pytest.raises(KeyError):
        view.node_item("skin").glyph_rect("collapse")                          # leaves: no collapse button


def test_button_press_released_elsewhere_does_nothing(view, rec):
    send_mouse(view, QEvent.MouseButtonPress, glyph_pos(view, "skin", "reroll"))
    send_mouse(view, QEvent.MouseButtonRelease, empty_pos(view), buttons=Qt.NoButton)
    assert rec.of("rerollRequested") == []


# ------------------------------------------------------------------ selection
def test_click_selection(view, rec):
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, vpos(view, "eyes"))
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.ControlModifier, vpos(view, "hair"))
    assert view.selected_nodes() == ["eyes", "hair"] and view.current_node() == "hair"
    assert view.node_item("eyes").selected and view.node_item("hair").selected
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.ControlModifier, vpos(view, "eyes"))   # toggles off
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.ShiftModifier, vpos(view, "face"))     # adds
    assert view.selected_nodes() == ["hair", "face"]
    QTest.mouseClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, empty_pos(view))           # deselects
    assert view.selected_nodes() == [] and not view.node_item("hair").selected
    assert rec.of("selectionChangedNames") == [(["eyes"],), (["eyes", "hair"],), (["hair"],), (["hair", "face"],),
                                               ([],)]
    rec.clear()
    view.select("all")
    view.select("all")                                                         # no change, no signal
    view.select("bg", add=True)
    view.select(None)
    assert rec.of("selectionChangedNames") == [(["all"],), (["all", "bg"],), ([],)]
    with pytest.raises(KeyError):
        view.select("nope")


def test_double_click_asks_for_heatmap(view, rec):
    QTest.mouseDClick(view.viewport(), Qt.LeftButton, Qt.NoModifier, vpos(view, "skin"))
    assert rec.of("heatmapRequested") and set(rec.of("heatmapRequested")) == {("skin",)}


# ------------------------------------------------------------------- keyboard
def test_keyboard_on_selection(view, rec, faces):
    view.select("face")
    view.setFocus()
    for key in (Qt.Key_R, Qt.Key_L, Qt.Key_C, Qt.Key_Delete):
        QTest.keyClick(view, key)
    assert rec.of("rerollRequested") == [("face",)]
    assert rec.of("lockRequested") == [("face", True)]
    assert rec.of("collapseRequested") == [("face", True)]
    assert rec.of("clearCodeRequested") == []                                  # no explicit code to drop
    view.update_nodes(comp_with(faces, face=NodeState(seed=2, code=np.ones((1, 8)), locked=True)))
    rec.clear()
    QTest.keyClick(view, Qt.Key_L)
    QTest.keyClick(view, Qt.Key_Backspace)
    assert rec.of("lockRequested") == [("face", False)]
    assert rec.of("clearCodeRequested") == [("face",)]
    view.select("hair")
    rec.clear()
    QTest.keyClick(view, Qt.Key_C)                                             # a leaf: nothing to collapse
    assert rec.of("collapseRequested") == []
    QTest.keyClick(view, Qt.Key_Escape)
    assert view.selected_nodes() == []


def test_arrow_keys_walk_the_tree(view):
    view.setFocus()
    steps = [(Qt.Key_Down, "all"),            # nothing selected: the root
             (Qt.Key_Down, "face"), (Qt.Key_Right, "bg_hair_clothes"), (Qt.Key_Down, "bg_clothes"),
             (Qt.Key_Left, "skin_mouth"),      # sibling (hair) is to the right: nearest in the row
             (Qt.Key_Right, "eyes"),           # the sibling
             (Qt.Key_Right, "clothes"),        # bottom-row neighbour
             (Qt.Key_Up, "bg_clothes"), (Qt.Key_Up, "bg_hair_clothes"), (Qt.Key_Left, "face"),
             (Qt.Key_Up, "all"), (Qt.Key_Up, "all")]
    for key, expected in steps:
        QTest.keyClick(view, key)
        assert view.selected_nodes() == [expected], (key, expected)


def test_zoom_keys_fit_and_clamps(view):
    fitted = view.zoom_level()
    view.setFocus()
    QTest.keyClick(view, Qt.Key_Plus)
    assert view.zoom_level() == pytest.approx(fitted * 1.25)
    QTest.keyClick(view, Qt.Key_Minus)
    assert view.zoom_level() == pytest.approx(fitted)
    view.zoom_by(1000)
    assert view.zoom_level() == pytest.approx(ZOOM_MAX)
    view.zoom_by(1e-4)
    assert view.zoom_level() == pytest.approx(ZOOM_MIN)
    QTest.keyClick(view, Qt.Key_F)
    assert view.zoom_level() == pytest.approx(fitted)


def test_wheel_zooms_under_the_mouse(view):
    pos = vpos(view, "eyes")
    before = view.mapToScene(pos)
    z = view.zoom_level()
    ev = QWheelEvent(QPointF(pos), QPointF(view.viewport().mapToGlobal(pos)), QPoint(0, 0), QPoint(0, 240),
                     Qt.NoButton, Qt.NoModifier, Qt.NoScrollPhase, False)
    QApplication.sendEvent(view.viewport(), ev)
    assert view.zoom_level() == pytest.approx(z * 2 ** 0.5)
    after = view.mapToScene(pos)
    assert abs(after.x() - before.x()) < 3 and abs(after.y() - before.y()) < 3
    for _ in range(20):
        QApplication.sendEvent(view.viewport(), QWheelEvent(
            QPointF(pos), QPointF(view.viewport().mapToGlobal(pos)), QPoint(0, 0), QPoint(0, -480),
            Qt.NoButton, Qt.NoModifier, Qt.NoScrollPhase, False))
    assert view.zoom_level() == pytest.approx(ZOOM_MIN)


def test_background_drag_pans_without_deselecting(view):
    view.select("face")
    h, v = view.horizontalScrollBar().value(), view.verticalScrollBar().value()
    start = empty_pos(view)
    send_mouse(view, QEvent.MouseButtonPress, start)
    for i in range(1, 6):
        send_mouse(view, QEvent.MouseMove, start + QPoint(12 * i, 8 * i), button=Qt.NoButton, buttons=Qt.LeftButton)
    send_mouse(view, QEvent.MouseButtonRelease, start + QPoint(60, 40), buttons=Qt.NoButton)
    assert (view.horizontalScrollBar().value(), view.verticalScrollBar().value()) == (h - 60, v - 40)
    assert view.selected_nodes() == ["face"]
    # middle button pans too (even over a card)
    p = vpos(view, "eyes")
    send_mouse(view, QEvent.MouseButtonPress, p, button=Qt.MiddleButton)
    send_mouse(view, QEvent.MouseMove, p + QPoint(-30, 10), button=Qt.NoButton, buttons=Qt.MiddleButton)
    send_mouse(view, QEvent.MouseButtonRelease, p + QPoint(-30, 10), button=Qt.MiddleButton, buttons=Qt.NoButton)
    assert (view.horizontalScrollBar().value(), view.verticalScrollBar().value()) == (h - 30, v - 50)


# ---------------------------------------------------------------- drag & drop
def node_mime(name):
    m = QMimeData()
    m.setData(NODE_MIME, name.encode())
    return m


def file_mime(*paths):
    m = QMimeData()
    m.setUrls([QUrl.fromLocalFile(p) if not p.startswith("http") else QUrl(p) for p in paths])
    return m


def drop(view, mime, pos) -> bool:
    ev = QDropEvent(QPointF(pos), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    view.dropEvent(ev)
    return ev.isAccepted()


def test_dragging_a_card_starts_a_node_drag(view, monkeypatch):
    started = []
    monkeypatch.setattr(view, "_exec_drag", lambda d: started.append(d))
    p = vpos(view, "skin")
    send_mouse(view, QEvent.MouseButtonPress, p)
    send_mouse(view, QEvent.MouseMove, p + QPoint(1, 0), button=Qt.NoButton, buttons=Qt.LeftButton)
    assert started == []                                                      # below the drag distance
    send_mouse(view, QEvent.MouseMove, p + QPoint(QApplication.startDragDistance() + 5, 0),
               button=Qt.NoButton, buttons=Qt.LeftButton)
    send_mouse(view, QEvent.MouseButtonRelease, p + QPoint(30, 0), buttons=Qt.NoButton)
    assert len(started) == 1
    d = started[0]
    assert bytes(d.mimeData().data(NODE_MIME)) == b"skin" and not d.pixmap().isNull()
    item = view.node_item("skin")                                             # layout is automatic
    assert not item.flags() & item.GraphicsItemFlag.ItemIsMovable
    assert view.mapFromScene(item.mapToScene(QPointF(40, 60))) == p


def test_node_drop_emits_copy(view, rec):
    assert drop(view, node_mime("skin"), vpos(view, "eyes"))
    assert rec.of("copyRequested") == [("skin", "eyes")]
    assert not drop(view, node_mime("skin"), vpos(view, "skin"))             # not onto itself
    assert not drop(view, node_mime("skin"), empty_pos(view))
    assert not drop(view, node_mime("nope"), vpos(view, "eyes"))
    assert rec.of("copyRequested") == [("skin", "eyes")]


def test_drag_highlights_the_card_under_the_cursor(view):
    def move(mime, pos):
        ev = QDragMoveEvent(QPoint(pos.x(), pos.y()), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
        view.dragMoveEvent(ev)
        return ev.isAccepted()

    skin, files = node_mime("skin"), file_mime("/tmp/a.png")   # the events do not own their mime data
    assert move(skin, vpos(view, "hair"))
    assert view.drop_target() == "hair" and view.node_item("hair").drop_highlight
    assert not move(skin, vpos(view, "skin"))                                  # not onto itself
    assert view.drop_target() is None and not view.node_item("hair").drop_highlight
    assert move(files, empty_pos(view))                                        # files: the canvas lights up
    assert view.drop_target() is None and view._canvas_drop
    view.grab()
    assert move(files, vpos(view, "face")) and view.drop_target() == "face" and not view._canvas_drop
    view.dragLeaveEvent(QDragLeaveEvent())
    assert view.drop_target() is None and not view.node_item("face").drop_highlight


def test_file_drops(view, rec):
    assert drop(view, file_mime("/tmp/photo.png", "/tmp/b.jpg"), vpos(view, "hair"))
    assert drop(view, file_mime("/tmp/photo.png"), empty_pos(view))
    assert not drop(view, file_mime("https://example.com/x.png"), vpos(view, "hair"))   # not a local file
    assert rec.of("filesDropped") == [("hair", ["/tmp/photo.png", "/tmp/b.jpg"]), ("", ["/tmp/photo.png"])]


# ---------------------------------------------------------------------- menus
def test_node_menu(view, rec, faces):
    menu = view.node_menu("face")
    acts = {a.objectName(): a for a in menu.actions() if a.objectName()}
    assert list(acts) == ["reroll", "seed", "lock", "collapse", "clearCode", "photo", "heatmap"]
    assert acts["lock"].text() == "Lock" and not acts["clearCode"].isEnabled()
    assert all(a.isEnabled() for k, a in acts.items() if k != "clearCode")
    for a in acts.values():
        a.trigger()
    assert [c[0] for c in rec.calls] == ["rerollRequested", "seedRequested", "lockRequested", "collapseRequested",
                                         "photoRequested", "heatmapRequested"]      # disabled: not triggered
    assert rec.of("lockRequested") == [("face", True)] and rec.of("collapseRequested") == [("face", True)]

    leaf = {a.objectName() for a in view.node_menu("skin").actions() if a.objectName()}
    assert "collapse" not in leaf
    view.update_nodes(comp_with(faces, skin=NodeState(seed=1, code=np.ones((1, 8)), locked=True)))
    acts = {a.objectName(): a for a in view.node_menu("skin").actions() if a.objectName()}
    assert acts["clearCode"].isEnabled() and acts["lock"].text() == "Unlock"
    rec.clear()
    acts["clearCode"].trigger()
    acts["lock"].trigger()
    assert rec.calls == [("clearCodeRequested", "skin"), ("lockRequested", "skin", False)]


def test_canvas_menu(view, rec):
    acts = {a.objectName(): a for a in view.canvas_menu().actions() if a.objectName()}
    assert set(acts) == {"randomize", "fit"}
    view.zoom_by(2)
    acts["randomize"].trigger()
    acts["fit"].trigger()
    assert rec.calls == [("randomizeRequested",)]


# ------------------------------------------------------------------- rebuilds
def test_set_tree_again_replaces_everything(view, rec):
    view.select("face")
    rec.clear()
    cars = paper_tree("cars")
    view.set_tree(cars)
    assert view.node_names() == [n.name for n in cars]
    assert rec.of("selectionChangedNames") == [([],)] and view.selected_nodes() == []
    n_nodes = len(list(cars))
    assert len(view.scene().items()) == n_nodes + (n_nodes - 1)                # cards + edges, nothing stale
    view.set_thumbnail("face", np.zeros((8, 8, 3), np.uint8))                  # old name: ignored
    view.update_nodes(Composition(cars))
    assert view.node_item("wheels").seed_text().startswith("seed ")
    with pytest.raises(KeyError):
        view.node_item("face")
    view.set_tree(paper_tree("faces"))
    assert len(view.scene().items()) == 11 + 10


def test_theme(view, qtbot):
    view.set_theme("light")
    assert view.theme() is LIGHT
    view.grab()
    view.set_theme("auto")                                                     # follows the (style sheet) palette
    view.setStyleSheet("QGraphicsView { background-color: #19232d; color: #dfe1e2; }")
    qtbot.waitUntil(lambda: view.theme().dark, timeout=1000)
    view.setStyleSheet("QGraphicsView { background-color: #fafafa; color: #19232d; }")
    qtbot.waitUntil(lambda: not view.theme().dark, timeout=1000)
    with pytest.raises(ValueError):
        view.set_theme("purple")


def test_names_become_readable_captions_when_zoomed_out(qtbot, faces):
    """Issue 39: fitted into a narrow pane the cards' own text is a few pixels tall; each name is then
    drawn above its card at READABLE_PX (9 pt) on screen, and not at a zoom where the title is readable."""
    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QColor

    from sfeditor.ui.node_graph import CARD_W, READABLE_PX, NodeItem

    v = NodeGraphView()
    qtbot.addWidget(v)
    v.resize(360, 700)
    v.set_tree(faces)
    v.update_nodes(Composition(faces))
    v.show()
    qtbot.waitExposed(v)
    v.fit()
    z = v.zoom_level()
    assert 12.5 * z < READABLE_PX
    px = NodeItem.caption_font_px(z)
    assert px * z == pytest.approx(READABLE_PX)
    assert NodeItem.caption_font_px(1.0) is None

    def ink_above(name: str) -> int:
        item = v.node_item(name)
        above = item.mapRectToScene(QRectF(10, -READABLE_PX * 1.3 / v.zoom_level() - 3, CARD_W - 20,
                                           READABLE_PX * 1.3 / v.zoom_level()))
        r = v.mapFromScene(above).boundingRect()
        img = v.viewport().grab().toImage()
        ink = QColor(v.scene().theme.text)
        return sum(1 for x in range(max(r.left(), 0), min(r.right(), img.width()))
                   for y in range(max(r.top(), 0), min(r.bottom(), img.height()))
                   if sum(abs(a - b) for a, b in zip(QColor(img.pixel(x, y)).getRgb()[:3], ink.getRgb()[:3])) < 60)

    assert ink_above("hair") > 10                      # the caption's text (the theme's text colour)
    v.zoom_by(1.0 / z)                                    # 100 %: the card's own title is readable
    v.centerOn(v.node_item("hair"))
    assert v.zoom_level() == pytest.approx(1.0) and ink_above("hair") == 0
