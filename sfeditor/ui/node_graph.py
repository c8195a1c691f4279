"""The fusion-tree node graph: one card per node of a composition's region tree.

Leaves are region codes, internal nodes the "global" (alignment) code of their
FusionNet (paper Sec. 4.5).  Each card shows the node's thumbnail, its seed (or
that it holds a photo / edited code), whether it is locked or collapsed
(bypass: the subtree takes this node's code; the nodes below are dimmed) and
whether its FusionNet is missing.  The view holds no math and never changes the
composition: clicks, keys, menus and drops only emit *intent* signals, which
the main window turns into undoable commands.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (QColor, QDrag, QFont, QFontMetricsF, QKeySequence, QPainter, QPainterPath,
                           QPalette, QPen, QPixmap)
from PySide6.QtWidgets import (QApplication, QFrame, QGraphicsItem, QGraphicsPathItem, QGraphicsScene,
                               QGraphicsView, QMenu)

from .pixmaps import rgb_pixmap
from ..editor.composition import Composition
from ..regions.tree import RegionNode

__all__ = ["NodeGraphView", "NodeItem", "NODE_MIME", "Theme", "DARK", "LIGHT"]

NODE_MIME = "application/x-sfeditor-node"

CARD_W, CARD_H = 150.0, 118.0
H_GAP, V_GAP = 36.0, 84.0           # between cards in a row / between rows (room for the badges)
ZOOM_MIN, ZOOM_MAX = 0.2, 4.0
FIT_MAX = 1.5                       # fit() never blows a small tree up beyond this
DIM_OPACITY = 0.35                  # nodes under a collapsed ancestor
GRID = 24.0                         # background dot spacing (scene units)

_HEADER = QRectF(0, 0, CARD_W, 24)
_THUMB = QRectF(8, 28, 72, 72)
_KIND = QRectF(88, 28, 54, 15)
_GLYPH = {"reroll": QRectF(88, 49, 25, 23), "lock": QRectF(117, 49, 25, 23), "collapse": QRectF(88, 77, 54, 23)}
_FOOTER = QRectF(8, 101, CARD_W - 16, 16)
_BADGE_H, _BADGE_GAP = 17.0, 4.0
#: The smallest text that counts as readable on screen: 9 pt at 96 dpi (issue 39).  When the view is
#: zoomed out so far that a card's title would be smaller, the name is also drawn as a caption above
#: the card at this screen size (the seed and buttons stay in the card, the inspector and the tooltip).
READABLE_PX = 12.0
_CAPTION_ROOM = 64.0                # scene units above a card the caption may use (V_GAP minus badges)


# --------------------------------------------------------------------- theme
@dataclass(frozen=True)
class Theme:
    """Colours of the graph (hex strings); :data:`DARK` suits qdarkstyle, :data:`LIGHT` a light palette."""

    dark: bool
    canvas: str
    grid: str
    card: str
    card_border: str
    card_hover: str
    text: str
    muted: str
    button: str
    button_hover: str
    button_border: str
    thumb_bg: str
    edge: str
    select: str
    lock: str
    explicit: str
    bypass: str
    no_net: str
    drop: str
    leaf: str
    internal: str

    def c(self, key: str, alpha: int | None = None) -> QColor:
        col = QColor(getattr(self, key))
        if alpha is not None:
            col.setAlpha(alpha)
        return col


DARK = Theme(dark=True, canvas="#151d26", grid="#2a3848", card="#1f2a36", card_border="#3a4b5e",
             card_hover="#5b7088", text="#e8edf2", muted="#98a8b9", button="#293747", button_hover="#3a4d63",
             button_border="#43566c", thumb_bg="#17212b", edge="#62788f", select="#4f9dff", lock="#fbbf24",
             explicit="#f472b6", bypass="#c084fc", no_net="#f87171", drop="#34d399", leaf="#2dd4bf",
             internal="#8b93ff")
LIGHT = Theme(dark=False, canvas="#eef1f5", grid="#cfd7e0", card="#ffffff", card_border="#c3cdd8",
              card_hover="#8a9bb0", text="#1d2733", muted="#566474", button="#eef2f6", button_hover="#dbe4ee",
              button_border="#c5d0dc", thumb_bg="#e2e8ee", edge="#8797ab", select="#1f6feb", lock="#b7791f",
              explicit="#c2185b", bypass="#7c3aed", no_net="#dc2626", drop="#059669", leaf="#0f8f83",
              internal="#4f46e5")


def _font(px: float, bold: bool = False) -> QFont:
    f = QFont(QApplication.font())
    f.setPixelSize(max(1, round(px)))
    f.setBold(bold)
    return f


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


def _rgb_pixmap(rgb: np.ndarray) -> QPixmap:
    return rgb_pixmap(rgb, "thumbnail")


# --------------------------------------------------------------------- glyphs
def _glyph_path(kind: str, c: QPointF, on: bool) -> tuple[QPainterPath, QPainterPath | None]:
    """(stroke path, fill path or None) of a glyph centred at c (~12 px)."""
    stroke, fill = QPainterPath(), None
    x, y = c.x(), c.y()
    if kind == "reroll":                                       # circular arrow (⟳)
        r = 5.5
        box = QRectF(x - r, y - r, 2 * r, 2 * r)
        start, span = 70.0, 285.0
        stroke.arcMoveTo(box, start)
        stroke.arcTo(box, start, span)
        th = math.radians(start + span)
        end = QPointF(x + r * math.cos(th), y - r * math.sin(th))
        d = QPointF(-math.sin(th), -math.cos(th))              # direction of travel (counter-clockwise)
        n = QPointF(-d.y(), d.x())
        fill = QPainterPath()
        fill.moveTo(end + d * 3.2)
        fill.lineTo(end - d * 1.2 + n * 3.0)
        fill.lineTo(end - d * 1.2 - n * 3.0)
        fill.closeSubpath()
    elif kind == "lock":                                       # padlock, shackle open when unlocked
        body = QRectF(x - 5.0, y - 0.5, 10.0, 7.0)
        lift = 0.0 if on else 2.5
        top = y - 7.0 - lift
        stroke.moveTo(x - 3.2, body.top())
        stroke.lineTo(x - 3.2, top + 3.2)
        stroke.arcTo(QRectF(x - 3.2, top, 6.4, 6.4), 180, -180)
        stroke.lineTo(x + 3.2, body.top() if on else top + 5.0)
        fill = QPainterPath()
        fill.addRoundedRect(body, 1.5, 1.5)
    elif kind == "collapse":                                   # ⊟ (expanded) / ⊞ (collapsed)
        box = QRectF(x - 5.5, y - 5.5, 11, 11)
        stroke.addRoundedRect(box, 2, 2)
        stroke.moveTo(x - 2.8, y)
        stroke.lineTo(x + 2.8, y)
        if on:
            stroke.moveTo(x, y - 2.8)
            stroke.lineTo(x, y + 2.8)
    return stroke, fill


# ---------------------------------------------------------------------- items
class NodeItem(QGraphicsItem):
    """One node's card.  Painted from plain attributes the view sets; it handles only hover feedback."""

    def __init__(self, node: RegionNode):
        super().__init__()
        self.name = node.name
        self.is_leaf = node.is_leaf
        self.seed: int | None = None
        self.explicit = False            # an explicit code (photo / edit) overrides the seed
        self.locked = False
        self.collapsed = False
        self.bypassed_by: str | None = None   # the collapsed ancestor whose code this node's region takes
        self.net_available = True
        self.selected = False
        self.current = False             # the last-selected node (keyboard target)
        self.drop_highlight = False
        self.hovered = False
        self.hover_glyph: str | None = None
        self.pixmap: QPixmap | None = None
        self._bounds = QRectF()
        self.setAcceptHoverEvents(True)
        self.setAcceptedMouseButtons(Qt.NoButton)      # the view handles clicks (selection, glyphs, drags)
        self.setZValue(1)
        self._refresh_geometry()
        self._refresh_tooltip()

    # ------------------------------------------------------------ geometry
    @staticmethod
    def card_rect() -> QRectF:
        return QRectF(0, 0, CARD_W, CARD_H)

    def glyphs(self) -> tuple[str, ...]:
        return ("reroll", "lock") if self.is_leaf else ("reroll", "lock", "collapse")

    def glyph_rect(self, glyph: str) -> QRectF:
        """A glyph button's rect in item coordinates (KeyError for a leaf's "collapse")."""
        if glyph not in self.glyphs():
            raise KeyError(f"node {self.name!r} has no {glyph!r} button")
        return QRectF(_GLYPH[glyph])

    def glyph_at(self, p: QPointF) -> str | None:
        for g in self.glyphs():
            if _GLYPH[g].adjusted(-1, -1, 1, 1).contains(p):
                return g
        return None

    def badges(self) -> list[tuple[str, str]]:
        """(text, theme colour key) of the pills under the card."""
        out = []
        if self.collapsed:
            out.append(("bypass: subtree uses this code", "bypass"))
        if not self.is_leaf and not self.net_available:
            out.append(("no net (bypass)", "no_net"))
        return out

    def badge_rects(self) -> list[QRectF]:
        fm = QFontMetricsF(_font(10, True))
        rects, y = [], CARD_H + 7
        for text, _ in self.badges():
            w = fm.horizontalAdvance(text) + 16
            rects.append(QRectF(CARD_W / 2 - w / 2, y, w, _BADGE_H))
            y += _BADGE_H + _BADGE_GAP
        return rects

    def hit(self, p: QPointF) -> bool:
        """Is item point p on the card or one of its badges?"""
        return self.card_rect().contains(p) or any(r.contains(p) for r in self.badge_rects())

    def boundingRect(self) -> QRectF:
        return self._bounds

    def _refresh_geometry(self) -> None:
        self.prepareGeometryChange()
        r = self.card_rect().adjusted(-8, -8, 8, 8).united(self._caption_bounds())
        for b in self.badge_rects():
            r = r.united(b.adjusted(-2, -2, 2, 2))
        self._bounds = r

    # --------------------------------------------------------------- state
    def seed_text(self) -> str:
        if self.explicit:
            return "photo/edited code"
        return "seed —" if self.seed is None else f"seed {self.seed}"

    def set_state(self, seed: int, explicit: bool, locked: bool, collapsed: bool) -> None:
        collapsed = bool(collapsed) and not self.is_leaf
        geometry = collapsed != self.collapsed
        self.seed, self.explicit, self.locked, self.collapsed = int(seed), bool(explicit), bool(locked), collapsed
        if geometry:
            self._refresh_geometry()
        self._refresh_tooltip()
        self.update()

    def set_bypassed(self, by: str | None) -> None:
        self.bypassed_by = by
        self.setOpacity(DIM_OPACITY if by else 1.0)
        self._refresh_tooltip()

    def set_net_available(self, ok: bool) -> None:
        if bool(ok) != self.net_available:
            self.net_available = bool(ok)
            self._refresh_geometry()
            self._refresh_tooltip()
            self.update()

    def set_pixmap(self, pm: QPixmap | None) -> None:
        self.pixmap = pm
        self.update()

    def _refresh_tooltip(self) -> None:
        kind = "leaf region code" if self.is_leaf else "global (alignment) code of a FusionNet"
        lines = [f"<b>{self.name}</b> — {kind}", self.seed_text()]
        if self.locked:
            lines.append("locked: kept by “Randomise all”")
        if self.collapsed:
            lines.append("collapsed: the whole subtree uses this node's code")
        if self.bypassed_by:
            lines.append(f"bypassed: “{self.bypassed_by}” is collapsed, so this region uses its code")
        if not self.is_leaf and not self.net_available:
            lines.append("no trained FusionNet for this node: it is bypassed")
        lines.append("<i>drag onto another node to copy its code · double-click: locality heatmap</i>")
        self._card_tip = "<br>".join(lines)
        self.setToolTip(self._glyph_tip(self.hover_glyph) if self.hover_glyph else self._card_tip)

    def _glyph_tip(self, g: str) -> str:
        return {"reroll": "Re-roll: a new random seed (R)",
                "lock": "Unlock (L)" if self.locked else "Lock: keep this code when randomising (L)",
                "collapse": ("Expand: fuse the children again (C)" if self.collapsed
                             else "Collapse: bypass, the subtree uses this code (C)")}[g]

    # --------------------------------------------------------------- hover
    def hoverEnterEvent(self, e) -> None:
        self.hovered = True
        self.update()

    def hoverMoveEvent(self, e) -> None:
        g = self.glyph_at(e.pos())
        if g != self.hover_glyph:
            self.hover_glyph = g
            self.setToolTip(self._glyph_tip(g) if g else self._card_tip)
            if g:
                self.setCursor(Qt.PointingHandCursor)
            else:
                self.unsetCursor()
            self.update()

    def hoverLeaveEvent(self, e) -> None:
        self.hovered, self.hover_glyph = False, None
        self.unsetCursor()
        self.setToolTip(self._card_tip)
        self.update()

    # --------------------------------------------------------------- paint
    def _theme(self) -> Theme:
        sc = self.scene()
        return getattr(sc, "theme", DARK) if sc is not None else DARK

    def paint(self, painter: QPainter, option=None, widget=None) -> None:
        self.paint_card(painter, self._theme())
        self.paint_caption(painter, self._theme())

    @staticmethod
    def _caption_bounds() -> QRectF:
        return QRectF(-H_GAP / 2, -_CAPTION_ROOM - 2, CARD_W + H_GAP, _CAPTION_ROOM)

    @staticmethod
    def caption_font_px(zoom: float) -> float | None:
        """The caption's font size in scene units at view ``zoom`` (``READABLE_PX`` on screen, capped by
        the room above the card), or None when the card's own title is readable at that zoom."""
        if not (zoom > 0 and math.isfinite(zoom)) or 12.5 * zoom >= READABLE_PX:
            return None
        return min(READABLE_PX / zoom, _CAPTION_ROOM / 1.45)

    def paint_caption(self, p: QPainter, t: Theme) -> None:
        """The node's name above the card, readable when the view is zoomed out (see READABLE_PX)."""
        m = p.worldTransform()
        px = self.caption_font_px(math.hypot(m.m11(), m.m12()))
        if px is None:
            return
        p.save()
        p.setRenderHint(QPainter.Antialiasing)
        f = _font(px, True)
        fm = QFontMetricsF(f)
        room = self._caption_bounds()
        text = fm.elidedText(self.name, Qt.ElideRight, room.width() - px * 0.6)
        w, h = fm.horizontalAdvance(text) + px * 0.6, fm.height() * 1.1
        r = QRectF(CARD_W / 2 - w / 2, -h - 3, w, h)
        pill = QPainterPath()
        pill.addRoundedRect(r, h / 3, h / 3)
        p.fillPath(pill, t.c("canvas"))                     # opaque over the edges
        p.fillPath(pill, t.c("select", 70) if self.selected else t.c("card"))
        p.setFont(f)
        p.setPen(t.c("text"))
        p.drawText(r, Qt.AlignCenter, text)
        p.restore()

    def paint_card(self, p: QPainter, t: Theme) -> None:
        p.save()
        p.setRenderHint(QPainter.Antialiasing)
        p.setRenderHint(QPainter.SmoothPixmapTransform)
        card = self.card_rect()
        kind = "leaf" if self.is_leaf else "internal"

        if self.drop_highlight:
            p.setPen(QPen(t.c("drop"), 2.5, Qt.DashLine))
            p.setBrush(t.c("drop", 40))
            p.drawRoundedRect(card.adjusted(-6, -6, 6, 6), 13, 13)
        if self.selected:                                     # soft glow
            p.setPen(Qt.NoPen)
            for grow, alpha in ((6, 38), (3, 70)):
                p.setBrush(t.c("select", alpha))
                p.drawRoundedRect(card.adjusted(-grow, -grow, grow, grow), 8 + grow, 8 + grow)

        shape = QPainterPath()
        shape.addRoundedRect(card, 8, 8)
        p.fillPath(shape, t.c("card"))
        p.save()
        p.setClipPath(shape)
        p.fillRect(_HEADER, t.c(kind, 34 if t.dark else 26))
        p.fillRect(QRectF(0, 0, CARD_W, 3), t.c("lock") if self.locked else t.c(kind))
        p.restore()

        # title
        title = QRectF(10, 3, CARD_W - 20, _HEADER.height() - 2)
        px = 12.5                                             # long names shrink a little before eliding
        while px > 10.5 and QFontMetricsF(_font(px, True)).horizontalAdvance(self.name) > title.width():
            px -= 0.5
        p.setFont(_font(px, True))
        p.setPen(t.c("text"))
        p.drawText(title, Qt.AlignVCenter | Qt.AlignLeft,
                   QFontMetricsF(p.font()).elidedText(self.name, Qt.ElideRight, title.width()))

        # kind chip
        p.setPen(Qt.NoPen)
        p.setBrush(t.c(kind, 48 if t.dark else 30))
        p.drawRoundedRect(_KIND, 4, 4)
        p.setFont(_font(9.5, True))
        p.setPen(t.c(kind))
        p.drawText(_KIND, Qt.AlignCenter, "LEAF" if self.is_leaf else "GLOBAL")

        # thumbnail
        tpath = QPainterPath()
        tpath.addRoundedRect(_THUMB, 5, 5)
        p.fillPath(tpath, t.c("thumb_bg"))
        if self.pixmap is not None and not self.pixmap.isNull():
            p.save()
            p.setClipPath(tpath)
            p.drawPixmap(_THUMB, self.pixmap, QRectF(self.pixmap.rect()))
            p.restore()
        else:
            p.setFont(_font(9.5))
            p.setPen(t.c("muted"))
            p.drawText(_THUMB, Qt.AlignCenter, "rendering…")
        p.setPen(QPen(t.c("card_border"), 1))
        p.setBrush(Qt.NoBrush)
        p.drawPath(tpath)

        # glyph buttons
        for g in self.glyphs():
            r = _GLYPH[g]
            on = (g == "lock" and self.locked) or (g == "collapse" and self.collapsed)
            accent = "lock" if g == "lock" else "bypass"
            if on:
                fill, border, ink = t.c(accent, 70 if t.dark else 45), t.c(accent), t.c(accent)
            else:
                fill = t.c("button_hover" if g == self.hover_glyph else "button")
                border, ink = t.c("button_border"), t.c("text")
            if g == self.hover_glyph:
                border = t.c("select")
            p.setPen(QPen(border, 1))
            p.setBrush(fill)
            p.drawRoundedRect(r.adjusted(0.5, 0.5, -0.5, -0.5), 5, 5)
            centre = r.center()
            if g == "collapse":                               # a wide toggle: glyph + "bypass"
                centre = QPointF(r.left() + 10.5, r.center().y())
                f = _font(9.5)
                f.setStretch(QFont.SemiCondensed)
                p.setFont(f)
                p.setPen(ink)
                p.drawText(r.adjusted(18, 0, -2, 0), Qt.AlignCenter, "bypass")
            stroke, fillp = _glyph_path(g, centre, on)
            p.setBrush(Qt.NoBrush)
            p.setPen(QPen(ink, 1.6, Qt.SolidLine, Qt.RoundCap, Qt.RoundJoin))
            p.drawPath(stroke)
            if fillp is not None:
                if g == "lock" and not on:
                    p.drawPath(fillp)
                else:
                    p.fillPath(fillp, ink)

        # footer: seed / explicit code
        if self.explicit:
            p.setPen(Qt.NoPen)
            p.setBrush(t.c("explicit"))
            p.drawEllipse(QPointF(_FOOTER.left() + 3.5, _FOOTER.center().y()), 3.2, 3.2)
            foot, col = _FOOTER.adjusted(11, 0, 0, 0), t.c("explicit")
        else:
            foot, col = _FOOTER, t.c("muted")
        p.setFont(_font(11, self.explicit))
        p.setPen(col)
        p.drawText(foot, Qt.AlignVCenter | Qt.AlignLeft,
                   QFontMetricsF(p.font()).elidedText(self.seed_text(), Qt.ElideRight, foot.width()))

        # border
        if self.selected:
            pen = QPen(t.c("select"), 2.4)
        elif self.locked:
            pen = QPen(t.c("lock"), 2.0)
        else:
            pen = QPen(t.c("card_hover" if self.hovered else "card_border"), 1.4 if self.hovered else 1.1)
        p.setPen(pen)
        p.setBrush(Qt.NoBrush)
        p.drawRoundedRect(card.adjusted(0.5, 0.5, -0.5, -0.5), 8, 8)

        # badges
        p.setFont(_font(10, True))
        for (text, key), r in zip(self.badges(), self.badge_rects()):
            pill = QPainterPath()
            pill.addRoundedRect(r, _BADGE_H / 2, _BADGE_H / 2)
            p.fillPath(pill, t.c("canvas"))                 # opaque: hides the edges running under it
            p.fillPath(pill, t.c(key, 60 if t.dark else 36))
            p.setPen(QPen(t.c(key), 1))
            p.drawPath(pill)
            p.drawText(r, Qt.AlignCenter, text)
        p.restore()


class EdgeItem(QGraphicsPathItem):
    """A smooth (cubic) edge from a parent card's bottom to a child card's top."""

    def __init__(self, parent: NodeItem, child: NodeItem):
        super().__init__()
        self.parent_name, self.child_name = parent.name, child.name
        self.dashed = False
        self.setZValue(0)
        self.setAcceptedMouseButtons(Qt.NoButton)
        a = parent.pos() + QPointF(CARD_W / 2, CARD_H)
        b = child.pos() + QPointF(CARD_W / 2, 0)
        dy = (b.y() - a.y()) * 0.55
        path = QPainterPath(a)
        path.cubicTo(a + QPointF(0, dy), b - QPointF(0, dy), b)
        self.setPath(path)

    def restyle(self, t: Theme, dashed: bool, dim: bool) -> None:
        self.dashed = dashed
        pen = QPen(t.c("bypass") if dashed else t.c("edge"), 2.0, Qt.DashLine if dashed else Qt.SolidLine,
                   Qt.RoundCap)
        self.setPen(pen)
        self.setOpacity(DIM_OPACITY + 0.15 if dim else 1.0)


class _GraphScene(QGraphicsScene):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.theme: Theme = DARK


# ----------------------------------------------------------------------- view
class NodeGraphView(QGraphicsView):
    """Displays a composition's fusion tree; emits intents (node names), never edits anything.

    Mouse: click selects (Ctrl toggles, Shift adds), empty click deselects, the
    card buttons re-roll / (un)lock / collapse, double-click asks for the
    locality heatmap, dragging a card onto another copies its code, dragging the
    background (or with the middle button) pans, the wheel zooms under the
    cursor.  Keys: F fit, +/- zoom, and on the selection R re-roll, L lock,
    C collapse, Delete/Backspace back to the seed code, Esc deselect, arrows
    walk the tree (Up parent, Down first child, Left/Right sibling, else the
    neighbour in the same row).
    """

    selectionChangedNames = Signal(list)
    rerollRequested = Signal(str)
    seedRequested = Signal(str)
    lockRequested = Signal(str, bool)
    collapseRequested = Signal(str, bool)
    copyRequested = Signal(str, str)
    clearCodeRequested = Signal(str)
    photoRequested = Signal(str)
    heatmapRequested = Signal(str)
    filesDropped = Signal(str, list)
    randomizeRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = _GraphScene(self)
        self.setScene(self._scene)
        self.setRenderHints(QPainter.Antialiasing | QPainter.TextAntialiasing | QPainter.SmoothPixmapTransform)
        self.setViewportUpdateMode(QGraphicsView.SmartViewportUpdate)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setTransformationAnchor(QGraphicsView.NoAnchor)
        self.setResizeAnchor(QGraphicsView.AnchorViewCenter)
        self.setDragMode(QGraphicsView.NoDrag)
        self.setFrameShape(QFrame.NoFrame)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setMouseTracking(True)
        self._theme_mode = "auto"
        self._tree: RegionNode | None = None
        self._items: dict[str, NodeItem] = {}
        self._edges: dict[str, EdgeItem] = {}           # by child name
        self._parent: dict[str, str | None] = {}
        self._selection: list[str] = []
        self._content = QRectF()
        self._press: tuple[str, str | None, QPointF] | None = None   # left press on a card: (name, glyph, pos)
        self._bg_press: QPointF | None = None
        self._pan_last: QPointF | None = None
        self._drop_target: str | None = None
        self._canvas_drop = False
        self._auto_fit = True
        self._apply_theme()

    # ------------------------------------------------------------ building
    def set_tree(self, tree: RegionNode) -> None:
        """Rebuild every card and edge for ``tree`` (any previous tree's items are removed), lay out, fit."""
        had_selection = bool(self._selection)
        self._press = self._bg_press = self._pan_last = None
        self._drop_target, self._canvas_drop = None, False
        self._scene.clear()
        self._items, self._edges, self._parent, self._selection = {}, {}, {}, []
        self._tree = tree
        positions = self._layout(tree)
        for n in tree:
            item = NodeItem(n)
            item.setPos(positions[n.name])
            self._scene.addItem(item)
            self._items[n.name] = item
            self._parent.setdefault(n.name, None)
            for c in n.children:
                self._parent[c.name] = n.name
        for n in tree:
            for c in n.children:
                edge = EdgeItem(self._items[n.name], self._items[c.name])
                self._scene.addItem(edge)
                self._edges[c.name] = edge
        self._restyle_edges()
        self._update_scene_rect()
        self._auto_fit = True
        self.fit()
        if had_selection:
            self.selectionChangedNames.emit([])

    @staticmethod
    def _layout(tree: RegionNode) -> dict[str, QPointF]:
        """Top-left corners: internal nodes one row per depth, every leaf on the bottom row, parents centred."""
        depth: dict[str, int] = {}

        def walk(n: RegionNode, d: int) -> None:
            depth[n.name] = d
            for c in n.children:
                walk(c, d + 1)

        walk(tree, 0)
        bottom = max(depth[n.name] for n in tree if n.is_leaf)
        xs: dict[str, float] = {}
        count = [0]

        def place(n: RegionNode) -> float:
            if n.is_leaf:
                xs[n.name] = count[0] * (CARD_W + H_GAP)
                count[0] += 1
            else:
                xs[n.name] = sum(place(c) for c in n.children) / len(n.children)
            return xs[n.name]

        place(tree)
        return {n.name: QPointF(xs[n.name], (bottom if n.is_leaf else depth[n.name]) * (CARD_H + V_GAP))
                for n in tree}

    def _update_scene_rect(self) -> None:
        r = QRectF()
        for item in self._items.values():
            r = r.united(item.sceneBoundingRect())
        self._content = r
        m = max(r.width(), r.height(), 1000.0) * 2      # room to pan past the edges
        self._scene.setSceneRect(r.adjusted(-m, -m, m, m))

    # ------------------------------------------------------------- updates
    def update_nodes(self, comp: Composition) -> None:
        """Show ``comp``'s seeds, explicit-code markers, lock / collapse flags and the bypassed (dimmed) nodes."""
        if self._tree is None:
            self.set_tree(comp.tree)
        for name, item in self._items.items():
            st = comp.nodes.get(name)
            if st is not None:
                item.set_state(st.seed, st.code is not None, st.locked, st.collapsed)
        for n in self._tree:                                  # parents first
            parent = self._parent.get(n.name)
            by = None
            if parent is not None:
                pitem = self._items[parent]
                by = pitem.bypassed_by or (parent if pitem.collapsed else None)
            self._items[n.name].set_bypassed(by)
        self._restyle_edges()
        self._update_scene_rect()

    def set_thumbnail(self, name: str, rgb: np.ndarray | None) -> None:
        """Show a node's render (uint8 [H, W, 3], drawn ~72 px); None clears it.  Unknown names are ignored."""
        item = self._items.get(name)
        if item is None:
            return
        item.set_pixmap(None if rgb is None else _rgb_pixmap(rgb))

    def set_net_available(self, name: str, ok: bool) -> None:
        """Mark an internal node as lacking a trained FusionNet ("no net (bypass)" badge)."""
        item = self._items.get(name)
        if item is None or item.is_leaf:
            return
        item.set_net_available(ok)
        self._update_scene_rect()

    def set_theme(self, mode: str) -> None:
        """"dark", "light", or "auto" (default: follow the widget palette, e.g. qdarkstyle)."""
        if mode not in ("auto", "dark", "light"):
            raise ValueError(f"theme must be 'auto', 'dark' or 'light', got {mode!r}")
        self._theme_mode = mode
        self._apply_theme()

    def theme(self) -> Theme:
        return self._scene.theme

    def _apply_theme(self) -> None:
        if self._theme_mode == "auto":
            dark = self.palette().color(QPalette.Base).lightness() < 128
        else:
            dark = self._theme_mode == "dark"
        t = DARK if dark else LIGHT
        if t is not self._scene.theme:
            self._scene.theme = t
            self._restyle_edges()
            self._scene.update()
            self.viewport().update()

    def _restyle_edges(self) -> None:
        t = self._scene.theme
        for child, edge in self._edges.items():
            parent = self._items[edge.parent_name]
            citem = self._items[child]
            edge.restyle(t, dashed=parent.collapsed or parent.bypassed_by is not None,
                         dim=citem.bypassed_by is not None)

    def changeEvent(self, e) -> None:
        super().changeEvent(e)
        if e.type() in (QEvent.PaletteChange, QEvent.StyleChange) and self._theme_mode == "auto":
            self._apply_theme()

    # ------------------------------------------------------------- queries
    def node_names(self) -> list[str]:
        """All nodes, parents first."""
        return list(self._items)

    def node_item(self, name: str) -> NodeItem:
        return self._items[name]

    def selected_nodes(self) -> list[str]:
        """The selection in the order it was made (the last one is the current node)."""
        return list(self._selection)

    def current_node(self) -> str | None:
        return self._selection[-1] if self._selection else None

    def zoom_level(self) -> float:
        return self.transform().m11()

    # ----------------------------------------------------------- selection
    def select(self, name: str | None, add: bool = False) -> None:
        """Select ``name`` (None: clear); with ``add`` it joins the selection and becomes current."""
        if name is None:
            new = list(self._selection) if add else []
        elif name not in self._items:
            raise KeyError(f"no node {name!r} in the graph (nodes: {', '.join(self._items)})")
        elif add:
            new = [n for n in self._selection if n != name] + [name]
        else:
            new = [name]
        self._set_selection(new)

    def _set_selection(self, new: list[str]) -> None:
        if new == self._selection:
            return
        self._selection = list(new)
        cur = self.current_node()
        for name, item in self._items.items():
            sel = name in self._selection
            if sel != item.selected or (name == cur) != item.current:
                item.selected, item.current = sel, name == cur
                item.setZValue(2 if sel else 1)
                item.update()
        self.selectionChangedNames.emit(list(self._selection))

    # ---------------------------------------------------------------- view
    def fit(self) -> None:
        """Fit the whole tree in the view (not magnified beyond 1.5x)."""
        if not self._items:
            return
        r = self._content.adjusted(-30, -30, 30, 30)
        self.resetTransform()
        self.fitInView(r, Qt.KeepAspectRatio)
        z = self.zoom_level()
        target = _clamp(z, ZOOM_MIN, FIT_MAX)
        if abs(target - z) > 1e-9:
            self.resetTransform()
            self.scale(target, target)
        self.centerOn(r.center())
        self._auto_fit = True

    def zoom_by(self, factor: float) -> None:
        """Zoom about the view centre, clamped to 0.2x-4x."""
        self._zoom_at(factor, QPointF(self.viewport().rect().center()))

    def _zoom_at(self, factor: float, view_pos: QPointF) -> None:
        if not (factor > 0 and math.isfinite(factor)):
            return
        cur = self.zoom_level()
        new = _clamp(cur * factor, ZOOM_MIN, ZOOM_MAX)
        self._auto_fit = False
        if abs(new - cur) < 1e-12:
            return
        vp = QPointF(view_pos).toPoint()
        anchor = self.mapToScene(vp)
        self.scale(new / cur, new / cur)
        d = self.mapFromScene(anchor) - vp                    # keep the anchor's scene point under view_pos
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() + d.x())
        self.verticalScrollBar().setValue(self.verticalScrollBar().value() + d.y())

    def resizeEvent(self, e) -> None:
        super().resizeEvent(e)
        if self._auto_fit:
            self.fit()

    def showEvent(self, e) -> None:
        super().showEvent(e)
        if self._auto_fit:
            self.fit()

    def wheelEvent(self, e) -> None:
        dy = e.angleDelta().y() or e.pixelDelta().y()
        if dy:
            self._zoom_at(2.0 ** (dy / 480.0), e.position())
        e.accept()

    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:
        t = self._scene.theme
        painter.fillRect(rect, t.c("canvas"))
        z = self.zoom_level()
        step = GRID
        while step * z < 14:
            step *= 2
        x0, y0 = math.floor(rect.left() / step) * step, math.floor(rect.top() / step) * step
        nx, ny = int(rect.width() / step) + 2, int(rect.height() / step) + 2
        if nx * ny > 40000:
            return
        pen = QPen(t.c("grid"), 2.0)
        pen.setCosmetic(True)
        painter.setPen(pen)
        painter.drawPoints([QPointF(x0 + i * step, y0 + j * step) for j in range(ny) for i in range(nx)])

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:
        if not self._canvas_drop:
            return
        t = self._scene.theme
        painter.save()
        painter.resetTransform()
        painter.setRenderHint(QPainter.Antialiasing)
        painter.setPen(QPen(t.c("drop"), 3, Qt.DashLine))
        painter.setBrush(t.c("drop", 18))
        painter.drawRoundedRect(QRectF(self.viewport().rect()).adjusted(3, 3, -3, -3), 10, 10)
        painter.restore()

    # --------------------------------------------------------------- mouse
    def _node_at(self, view_pos) -> NodeItem | None:
        sp = self.mapToScene(QPointF(view_pos).toPoint())
        for it in self._scene.items(sp):
            if isinstance(it, NodeItem) and it.hit(it.mapFromScene(sp)):
                return it
        return None

    def _glyph_under(self, view_pos) -> tuple[NodeItem | None, str | None]:
        item = self._node_at(view_pos)
        if item is None:
            return None, None
        return item, item.glyph_at(item.mapFromScene(self.mapToScene(QPointF(view_pos).toPoint())))

    def mousePressEvent(self, e) -> None:
        self.setFocus(Qt.MouseFocusReason)
        pos = e.position()
        if e.button() == Qt.MiddleButton:
            self._pan_last = pos
            self.viewport().setCursor(Qt.ClosedHandCursor)
            self._auto_fit = False
            e.accept()
            return
        if e.button() != Qt.LeftButton:
            e.accept()                       # right button: the context menu event follows
            return
        item, glyph = self._glyph_under(pos)
        if item is None:
            self._bg_press = pos
            self.setDragMode(QGraphicsView.ScrollHandDrag)
            super().mousePressEvent(e)
            return
        self._press = (item.name, glyph, pos)
        if glyph is None:
            mods = e.modifiers()
            if mods & Qt.ControlModifier:
                if item.name in self._selection:
                    self._set_selection([n for n in self._selection if n != item.name])
                else:
                    self.select(item.name, add=True)
            elif mods & Qt.ShiftModifier:
                self.select(item.name, add=True)
            elif self._selection != [item.name]:
                self.select(item.name)
        e.accept()

    def mouseMoveEvent(self, e) -> None:
        pos = e.position()
        if self._pan_last is not None:
            d = pos - self._pan_last
            self._pan_last = pos
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - round(d.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - round(d.y()))
            e.accept()
            return
        if self._press is not None and self._press[1] is None and e.buttons() & Qt.LeftButton:
            if (pos - self._press[2]).manhattanLength() >= QApplication.startDragDistance():
                name = self._press[0]
                self._press = None
                self._start_drag(name)
                e.accept()
                return
        super().mouseMoveEvent(e)

    def mouseReleaseEvent(self, e) -> None:
        pos = e.position()
        if e.button() == Qt.MiddleButton and self._pan_last is not None:
            self._pan_last = None
            self.viewport().unsetCursor()
            e.accept()
            return
        if e.button() == Qt.LeftButton and self._bg_press is not None:
            start, self._bg_press = self._bg_press, None
            super().mouseReleaseEvent(e)
            self.setDragMode(QGraphicsView.NoDrag)
            self.viewport().unsetCursor()
            if (pos - start).manhattanLength() < QApplication.startDragDistance():
                if not e.modifiers() & (Qt.ControlModifier | Qt.ShiftModifier):
                    self._set_selection([])
            else:
                self._auto_fit = False
            return
        if e.button() == Qt.LeftButton and self._press is not None:
            name, glyph, _ = self._press
            self._press = None
            if glyph is not None:
                item, g = self._glyph_under(pos)
                if item is not None and item.name == name and g == glyph:
                    self._activate(name, glyph)
            e.accept()
            return
        super().mouseReleaseEvent(e)

    def mouseDoubleClickEvent(self, e) -> None:
        if e.button() != Qt.LeftButton:
            e.accept()
            return
        item, glyph = self._glyph_under(e.position())
        if item is None:
            e.accept()
            return
        if glyph is not None:                 # a fast second click on a button is another click
            self._press = (item.name, glyph, e.position())
        else:
            self.heatmapRequested.emit(item.name)
        e.accept()

    def _activate(self, name: str, glyph: str) -> None:
        item = self._items[name]
        if glyph == "reroll":
            self.rerollRequested.emit(name)
        elif glyph == "lock":
            self.lockRequested.emit(name, not item.locked)
        elif glyph == "collapse" and not item.is_leaf:
            self.collapseRequested.emit(name, not item.collapsed)

    # ---------------------------------------------------------------- keys
    def keyPressEvent(self, e) -> None:
        key, mods = e.key(), e.modifiers()
        if mods & (Qt.ControlModifier | Qt.AltModifier | Qt.MetaModifier):
            super().keyPressEvent(e)
            return
        sel = [n for n in self._selection if n in self._items]
        if key == Qt.Key_F:
            self.fit()
        elif key in (Qt.Key_Plus, Qt.Key_Equal):
            self.zoom_by(1.25)
        elif key in (Qt.Key_Minus, Qt.Key_Underscore):
            self.zoom_by(0.8)
        elif key == Qt.Key_Escape and sel:
            self._set_selection([])
        elif key == Qt.Key_R and sel:
            for n in sel:
                self.rerollRequested.emit(n)
        elif key == Qt.Key_L and sel:
            target = not all(self._items[n].locked for n in sel)
            for n in sel:
                if self._items[n].locked != target:
                    self.lockRequested.emit(n, target)
        elif key == Qt.Key_C and any(not self._items[n].is_leaf for n in sel):
            inner = [n for n in sel if not self._items[n].is_leaf]
            target = not all(self._items[n].collapsed for n in inner)
            for n in inner:
                if self._items[n].collapsed != target:
                    self.collapseRequested.emit(n, target)
        elif key in (Qt.Key_Delete, Qt.Key_Backspace) and sel:
            for n in sel:
                if self._items[n].explicit:
                    self.clearCodeRequested.emit(n)
        elif key in (Qt.Key_Up, Qt.Key_Down, Qt.Key_Left, Qt.Key_Right) and self._items:
            target = self._neighbour(self.current_node(), key)
            if target is not None:
                self.select(target)
                self.ensureVisible(self._items[target].sceneBoundingRect(), 40, 40)
        else:
            super().keyPressEvent(e)
            return
        e.accept()

    def _neighbour(self, name: str | None, key) -> str | None:
        """Arrow-key navigation target (no current node: the root)."""
        if name is None or name not in self._items:
            return self._tree.name
        if key == Qt.Key_Up:
            return self._parent.get(name)
        node = next(n for n in self._tree if n.name == name)
        if key == Qt.Key_Down:
            return node.children[0].name if node.children else None
        right = key == Qt.Key_Right
        x = self._items[name].pos().x()
        parent = self._parent.get(name)
        if parent is not None:                               # the sibling, when it lies that way
            sibs = [c.name for c in next(n for n in self._tree if n.name == parent).children if c.name != name]
            sibs = [s for s in sibs if (self._items[s].pos().x() > x) == right]
            if sibs:
                return min(sibs, key=lambda s: abs(self._items[s].pos().x() - x))
        y = self._items[name].pos().y()                      # else the nearest card in the same row
        row = [n for n, it in self._items.items() if abs(it.pos().y() - y) < 1 and n != name
               and ((it.pos().x() > x) if right else (it.pos().x() < x))]
        return min(row, key=lambda n: abs(self._items[n].pos().x() - x)) if row else None

    # ---------------------------------------------------------------- menus
    def node_menu(self, name: str) -> QMenu:
        """The context menu of node ``name`` (built, not shown).  Action objectNames: reroll, seed, lock,
        collapse (internal nodes), clearCode (enabled with an explicit code), photo, heatmap."""
        item = self._items[name]
        menu = QMenu(self)

        def add(key, text, slot, enabled=True, shortcut=None):
            a = menu.addAction(text)
            a.setObjectName(key)
            a.setEnabled(enabled)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
                a.setShortcutContext(Qt.WidgetShortcut)
                a.setShortcutVisibleInContextMenu(True)
            a.triggered.connect(slot)
            return a

        add("reroll", "Re-roll", lambda: self.rerollRequested.emit(name), shortcut="R")
        add("seed", "Set seed…", lambda: self.seedRequested.emit(name))
        menu.addSeparator()
        locked = item.locked
        add("lock", "Unlock" if locked else "Lock", lambda: self.lockRequested.emit(name, not locked), shortcut="L")
        if not item.is_leaf:
            collapsed = item.collapsed
            add("collapse", "Expand (fuse the children)" if collapsed else "Collapse (bypass the subtree)",
                lambda: self.collapseRequested.emit(name, not collapsed), shortcut="C")
        menu.addSeparator()
        add("clearCode", "Back to seed code", lambda: self.clearCodeRequested.emit(name), enabled=item.explicit,
            shortcut="Del")
        add("photo", "Assign photo…", lambda: self.photoRequested.emit(name))
        menu.addSeparator()
        add("heatmap", "Show locality heatmap", lambda: self.heatmapRequested.emit(name))
        return menu

    def canvas_menu(self) -> QMenu:
        """The empty-canvas context menu (objectNames: randomize, fit)."""
        menu = QMenu(self)
        a = menu.addAction("Randomise all unlocked")
        a.setObjectName("randomize")
        a.triggered.connect(self.randomizeRequested.emit)
        a = menu.addAction("Fit view")
        a.setObjectName("fit")
        a.setShortcut(QKeySequence("F"))
        a.setShortcutContext(Qt.WidgetShortcut)
        a.setShortcutVisibleInContextMenu(True)
        a.triggered.connect(self.fit)
        return menu

    def contextMenuEvent(self, e) -> None:
        item = self._node_at(e.pos())
        if item is not None:
            if item.name not in self._selection:
                self.select(item.name)
            menu = self.node_menu(item.name)
        else:
            menu = self.canvas_menu()
        menu.exec(e.globalPos())
        menu.deleteLater()
        e.accept()

    # ----------------------------------------------------------- drag/drop
    def make_drag(self, name: str) -> QDrag:
        """A QDrag carrying node ``name`` (mime NODE_MIME) with its thumbnail (or a small card) as pixmap."""
        item = self._items[name]
        mime = QMimeData()
        mime.setData(NODE_MIME, name.encode("utf-8"))
        drag = QDrag(self)
        drag.setMimeData(mime)
        if item.pixmap is not None and not item.pixmap.isNull():
            pm = item.pixmap.scaled(64, 64, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        else:
            s = 0.6
            pm = QPixmap(round(CARD_W * s) + 2, round(CARD_H * s) + 2)
            pm.fill(Qt.transparent)
            p = QPainter(pm)
            p.scale(s, s)
            p.translate(1, 1)
            p.setOpacity(0.9)
            item.paint_card(p, self._scene.theme)
            p.end()
        drag.setPixmap(pm)
        drag.setHotSpot(QPoint(pm.width() // 2, pm.height() // 2))
        return drag

    def _start_drag(self, name: str) -> None:
        self._exec_drag(self.make_drag(name))
        self._set_drop_target(None, False)

    def _exec_drag(self, drag: QDrag):            # separate so tests can stand in for the nested event loop
        return drag.exec(Qt.CopyAction)

    def _drop_info(self, mime: QMimeData, view_pos) -> tuple[str, str, object] | None:
        """("node", source, destination) / ("files", node name or "", paths) / None (not droppable here)."""
        target = self._node_at(view_pos)
        if mime.hasFormat(NODE_MIME):
            src = bytes(mime.data(NODE_MIME)).decode("utf-8", "replace")
            if target is None or target.name == src or src not in self._items:
                return None
            return ("node", src, target.name)
        if mime.hasUrls():
            paths = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]
            if paths:
                return ("files", target.name if target is not None else "", paths)
        return None

    def _accepts(self, mime: QMimeData) -> bool:
        return mime.hasFormat(NODE_MIME) or (mime.hasUrls() and any(u.isLocalFile() for u in mime.urls()))

    def _set_drop_target(self, name: str | None, canvas: bool) -> None:
        if name != self._drop_target:
            for n in (self._drop_target, name):
                if n in self._items:
                    self._items[n].drop_highlight = n == name
                    self._items[n].update()
            self._drop_target = name
        if canvas != self._canvas_drop:
            self._canvas_drop = canvas
            self.viewport().update()

    def drop_target(self) -> str | None:
        """The card highlighted under a drag in progress (None: none)."""
        return self._drop_target

    def handle_drop(self, mime: QMimeData, view_pos) -> bool:
        """Emit copyRequested / filesDropped for ``mime`` dropped at view position ``view_pos``."""
        info = self._drop_info(mime, view_pos)
        self._set_drop_target(None, False)
        if info is None:
            return False
        kind, a, b = info
        if kind == "node":
            self.copyRequested.emit(a, b)
        else:
            self.filesDropped.emit(a, list(b))
        return True

    def dragEnterEvent(self, e) -> None:
        if self._accepts(e.mimeData()):
            e.setDropAction(Qt.CopyAction)
            e.accept()
            self.dragMoveEvent(e)
        else:
            e.ignore()

    def dragMoveEvent(self, e) -> None:
        info = self._drop_info(e.mimeData(), e.position())
        if info is None:
            self._set_drop_target(None, False)
            e.ignore()
            return
        target = info[2] if info[0] == "node" else (info[1] or None)
        self._set_drop_target(target, info[0] == "files" and not target)
        e.setDropAction(Qt.CopyAction)
        e.accept()

    def dragLeaveEvent(self, e) -> None:
        self._set_drop_target(None, False)
        e.accept()

    def dropEvent(self, e) -> None:
        if self.handle_drop(e.mimeData(), e.position()):
            e.setDropAction(Qt.CopyAction)
            e.accept()
        else:
            e.ignore()


# ---------------------------------------------------------------------- demo
def _demo_thumb(i: int, size: int = 64) -> np.ndarray:
    """A colourful stand-in render (for the demo / screenshots)."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.2, 0.9, 3)
    img = np.stack([base[c] * (0.6 + 0.4 * np.sin(6 * x + i + c) * np.cos(5 * y - c)) for c in range(3)], -1)
    cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.18, 0.3)]
    blob = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)))[..., None]
    img = img * (1 - 0.6 * blob) + 0.6 * blob * rng.uniform(0.5, 1.0, 3)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _demo(argv: list[str] | None = None) -> int:
    """``python -m sfeditor.ui.node_graph [faces|cars] [--light] [--shot out.png]``: show (or grab) the graph."""
    import argparse
    import sys

    from ..editor.composition import NodeState
    from ..regions.tree import paper_tree

    ap = argparse.ArgumentParser(description=_demo.__doc__)
    ap.add_argument("tree", nargs="?", default="faces")
    ap.add_argument("--light", action="store_true")
    ap.add_argument("--shot", help="write a screenshot here and exit")
    ap.add_argument("--size", default="1200x720")
    args = ap.parse_args(argv)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    if not args.light:
        import qdarkstyle
        app.setStyleSheet(qdarkstyle.load_stylesheet(qt_api="pyside6"))
    tree = paper_tree(args.tree)
    comp = Composition(tree)
    names = comp.node_names
    comp.set_state(names[1], NodeState(seed=1234, locked=True))
    internal = comp.internal_nodes
    comp.set_state(internal[-1], NodeState(seed=77, collapsed=True))
    comp.set_state(comp.leaves[0], NodeState(seed=5, code=np.zeros((1, 8), np.float32)))
    view = NodeGraphView()
    w, h = (int(v) for v in args.size.split("x"))
    view.resize(w, h)
    view.set_tree(tree)
    view.update_nodes(comp)
    for i, n in enumerate(names):
        if i != len(names) - 1:
            view.set_thumbnail(n, _demo_thumb(i))
    view.set_net_available(internal[len(internal) // 2], False)
    view.select(comp.leaves[1])
    for sig in ("rerollRequested", "lockRequested", "collapseRequested", "copyRequested", "heatmapRequested",
                "filesDropped", "clearCodeRequested", "selectionChangedNames"):
        getattr(view, sig).connect(lambda *a, s=sig: print(s, *a))
    view.show()
    if args.shot:
        app.processEvents()
        view.fit()
        app.processEvents()
        ok = view.grab().save(args.shot)
        print(("wrote " if ok else "could not write ") + args.shot)
        return 0 if ok else 1
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(_demo())
