"""Label a new domain's regions: name the DeepPixel clusters and arrange the region tree.

Paper Sec. 4.2 / 4.5: the Ward clusters of a generator's DeepPixels are named
with semantic regions (several clusters may share one) and the regions are
arranged in a binary tree.  ``sfeditor-train regions`` writes an unlabelled
regions file (leaves ``cluster_<id>``); this dialog is where a person labels it:

* every cluster is a row with its contact sheet (click to enlarge) and an
  editable region name (existing names or free text); several selected rows
  can be merged into one region;
* the region tree beside it: the paper's trees as presets, a balanced
  "auto tree", grouping two nodes under a new parent, ungrouping, renaming by
  double click and "sync" (drop leaves no cluster uses, add missing regions);
* a live list of what still keeps the file from being valid; Save is enabled
  only when there is nothing left, and writes the relabelled file atomically.

Renaming the only cluster of a region to a name the tree does not have renames
that leaf too (so labelling a Ward tree's ``cluster_<id>`` leaves keeps its
shape).  Qt only: contact sheets come in as uint8 RGB arrays
(:func:`sfeditor.regions.cluster_sheets.cluster_sheets`).
"""
from __future__ import annotations

import html

import numpy as np
from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QIcon, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QGroupBox,
                               QHBoxLayout, QHeaderView, QInputDialog, QLabel, QMessageBox, QPushButton,
                               QScrollArea, QSplitter, QTableWidget, QTableWidgetItem, QToolButton, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from .pixmaps import rgb_pixmap
from ..regions.cluster_sheets import BANNER_HEIGHT, PALETTE, ContactSheets
from ..regions.regions_file import RegionsFile
from ..regions.labelling import RegionLabels
from ..regions.tree import PAPER_TREES, RegionNode

__all__ = ["RegionLabellingDialog", "SheetViewer", "sheet_pixmap"]

THUMB_W, THUMB_H = 520, 120
OK_COLOUR, BAD_COLOUR = "#7bd88f", "#ff7b7b"
NAME_ROLE = Qt.ItemDataRole.UserRole


# ------------------------------------------------------------------ helpers
def sheet_pixmap(rgb: np.ndarray) -> QPixmap:
    """uint8 RGB [H, W, 3] -> QPixmap."""
    return rgb_pixmap(rgb, "a contact sheet")


def _chip(colour: QColor, size: int = 12) -> QIcon:
    pm = QPixmap(size, size)
    pm.fill(colour)
    return QIcon(pm)


def _cell() -> QWidget:
    """A transparent holder for a table cell's widget (the row's selection colour shows through)."""
    w = QWidget()
    w.setObjectName("labellingCell")
    w.setAttribute(Qt.WidgetAttribute.WA_TranslucentBackground)
    w.setStyleSheet("#labellingCell { background: transparent; }")
    return w


class SheetViewer(QDialog):
    """A cluster's contact sheet at full size (scrolls when larger than the screen)."""

    def __init__(self, title: str, rgb: np.ndarray, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(title)
        pm = sheet_pixmap(rgb)
        if pm.width() < 700:   # small sheets (few or tiny images): enlarge, keeping the pixels crisp
            k = -(-700 // pm.width())
            pm = pm.scaled(pm.width() * k, pm.height() * k, Qt.AspectRatioMode.KeepAspectRatio,
                           Qt.TransformationMode.FastTransformation)
        self.image = QLabel()
        self.image.setPixmap(pm)
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea()
        scroll.setWidget(self.image)
        scroll.setWidgetResizable(True)
        lay = QVBoxLayout(self)
        lay.addWidget(scroll)
        hint = QLabel("Magenta outlines the cluster's pixels; everything else is dimmed.")
        hint.setEnabled(False)
        lay.addWidget(hint)
        self.resize(min(pm.width() + 40, 1500), min(pm.height() + 70, 950))


# ------------------------------------------------------------------ the dialog
class RegionLabellingDialog(QDialog):
    """Name a regions file's clusters and build its binary region tree (see the module doc).

    ``sheets`` maps cluster id -> contact sheet (uint8 RGB); ``shares`` (optional)
    cluster id -> fraction of pixels, shown beside each cluster.  ``save_path``
    is where Save writes (asked with a file dialog when None).  After a save,
    :meth:`result_regions` / ``saved_regions`` give the relabelled file.
    """

    saved = Signal(str)   # the path written

    def __init__(self, regions: RegionsFile, sheets: dict[int, np.ndarray] | ContactSheets | None = None,
                 parent=None, save_path: str | None = None, shares: dict[int, float] | None = None):
        super().__init__(parent)
        self.regions = regions
        # rendered on demand (ContactSheets) or given all at once (a dict)
        self.sheets = sheets if isinstance(sheets, ContactSheets) else {int(k): v for k, v in (sheets or {}).items()}
        self.shares = {int(k): float(v) for k, v in (shares or {}).items()}
        self.save_path = None if save_path is None else str(save_path)
        self.saved_regions: RegionsFile | None = None
        self.labels = RegionLabels(regions)      # the Qt-free document this dialog views and edits
        self.labels.undo_stack.subscribe(lambda ev: self._refresh())
        self._colour_of: dict[str, QColor] = {}
        self._combo_names: list[str] = []
        self._shown: dict[int, str] = {}           # the name each cluster row shows now
        self._chips: dict[int, QIcon] = {}         # colour (rgba) -> chip icon
        self._viewers: list[SheetViewer] = []
        self._building_tree = False
        self.setWindowTitle(f"Label regions — {regions.domain}")
        self.setSizeGripEnabled(True)
        self._build_ui()
        self.resize(1360, 860)
        self._refresh()

    # ============================================================ UI set-up
    def _build_ui(self) -> None:
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self._build_cluster_panel())
        splitter.addWidget(self._build_tree_panel())
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([860, 480])
        splitter.setChildrenCollapsible(False)

        self.problem_label = QLabel()
        self.problem_label.setWordWrap(True)
        self.problem_label.setTextFormat(Qt.TextFormat.RichText)
        self.problem_label.setMinimumHeight(44)
        self.problem_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        self.buttons = QDialogButtonBox()
        self.save_button = self.buttons.addButton("Save", QDialogButtonBox.ButtonRole.AcceptRole)
        self.save_button.setAutoDefault(False)   # Enter in a region name must not save and close
        self.save_button.setToolTip("Write the relabelled regions file (Ctrl+S)")
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.close_button.setAutoDefault(False)
        self.buttons.accepted.connect(self._on_save_clicked)
        self.buttons.rejected.connect(self.reject)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Save), self).activated.connect(self._on_save_clicked)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Undo), self).activated.connect(self.undo)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Redo), self).activated.connect(self.redo)

        bottom = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(self.problem_label)
        left.addWidget(self.status_label)
        bottom.addLayout(left, 1)
        bottom.addWidget(self.buttons, 0, Qt.AlignmentFlag.AlignBottom)

        lay = QVBoxLayout(self)
        lay.addWidget(splitter, 1)
        lay.addLayout(bottom)
        for b in self.findChildren(QPushButton):   # Enter in a region name must not press a button
            b.setAutoDefault(False)
            b.setDefault(False)

    def _build_cluster_panel(self) -> QWidget:
        box = QGroupBox("Clusters")
        lay = QVBoxLayout(box)
        intro = QLabel("Name the region each cluster belongs to (several clusters may share one). "
                       "Click a contact sheet to enlarge it; select rows to merge them into one region.")
        intro.setWordWrap(True)
        lay.addWidget(intro)

        bar = QHBoxLayout()
        self.merge_button = QPushButton("Merge into region…")
        self.merge_button.setToolTip("Give every selected cluster the same region name")
        self.merge_button.clicked.connect(self._on_merge_clicked)
        self.select_region_combo = QComboBox()
        self.select_region_combo.setToolTip("Select every cluster of a region")
        self.select_region_combo.setMinimumContentsLength(12)
        self.select_region_combo.setPlaceholderText("region…")
        self.select_region_combo.textActivated.connect(self._select_region)
        self.count_label = QLabel()
        bar.addWidget(self.merge_button)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Select region:"))
        bar.addWidget(self.select_region_combo)
        bar.addStretch(1)
        bar.addWidget(self.count_label)
        lay.addLayout(bar)

        self._share_col = 1 if self.shares else None
        headers = ["Cluster"] + (["Pixels"] if self.shares else []) + ["Contact sheet", "Region"]
        self._sheet_col = len(headers) - 2
        self._name_col = len(headers) - 1
        t = self.table = QTableWidget(self.regions.num_clusters, len(headers))
        t.setHorizontalHeaderLabels(headers)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.verticalHeader().setVisible(False)
        t.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        t.setAlternatingRowColors(True)
        t.setIconSize(QSize(14, 14))
        hh = t.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        if self._share_col is not None:
            hh.setSectionResizeMode(self._share_col, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(self._sheet_col, QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(self._name_col, QHeaderView.ResizeMode.Fixed)
        t.setColumnWidth(self._name_col, 190)
        t.itemSelectionChanged.connect(self._update_buttons)

        self.combos: dict[int, QComboBox] = {}
        self.thumbs: dict[int, QToolButton] = {}
        for k in range(self.regions.num_clusters):
            item = QTableWidgetItem(f"{k:>3}")
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            item.setData(NAME_ROLE, k)
            t.setItem(k, 0, item)
            if self._share_col is not None:
                s = QTableWidgetItem(f"{100 * self.shares.get(k, 0.0):.1f}%")
                s.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                s.setToolTip("Share of the sample images' pixels in this cluster")
                t.setItem(k, self._share_col, s)
            t.setCellWidget(k, self._sheet_col, self._make_thumb(k))
            t.setCellWidget(k, self._name_col, self._make_combo(k))
            t.setRowHeight(k, self._row_height(k))
        lay.addWidget(t, 1)
        return box

    def _row_height(self, k: int) -> int:
        th = self.thumbs[k]
        return max(th.iconSize().height() + 12, 40)

    def _make_thumb(self, k: int) -> QWidget:
        b = QToolButton()
        b.setAutoRaise(True)
        b.setCursor(Qt.CursorShape.PointingHandCursor)
        sheet = self.sheets.get(k)
        if sheet is None:
            b.setText("no contact sheet")
            b.setEnabled(False)
            b.setIconSize(QSize(0, 24))
        else:
            pm = sheet_pixmap(sheet)
            if pm.height() > BANNER_HEIGHT + 8:
                pm = pm.copy(0, BANNER_HEIGHT, pm.width(), pm.height() - BANNER_HEIGHT)
            scale = min(THUMB_W / pm.width(), THUMB_H / pm.height(), 1.0)
            pm = pm.scaled(max(1, round(pm.width() * scale)), max(1, round(pm.height() * scale)),
                           Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
            b.setIcon(QIcon(pm))
            b.setIconSize(pm.size())
            b.setToolTip(f"Cluster {k}: click to enlarge")
            b.clicked.connect(lambda _=False, k=k: self.show_sheet(k))
        self.thumbs[k] = b
        holder = _cell()
        hl = QHBoxLayout(holder)
        hl.setContentsMargins(4, 2, 4, 2)
        hl.addWidget(b)
        hl.addStretch(1)
        return holder

    def _make_combo(self, k: int) -> QWidget:
        c = QComboBox()
        c.setEditable(True)
        c.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        c.setToolTip("Pick a region or type a new name")
        c.textActivated.connect(lambda text, k=k: self._commit_later(k, text))
        c.lineEdit().editingFinished.connect(lambda k=k, c=c: self._commit_later(k, c.currentText()))
        self.combos[k] = c
        holder = _cell()
        hl = QHBoxLayout(holder)
        hl.setContentsMargins(6, 0, 6, 0)
        hl.addWidget(c)
        return holder

    def _build_tree_panel(self) -> QWidget:
        box = QGroupBox("Region tree")
        lay = QVBoxLayout(box)
        intro = QLabel("Leaves are the regions; every internal node joins exactly two children "
                       "(one FusionNet each). Double-click a node to rename it.")
        intro.setWordWrap(True)
        lay.addWidget(intro)

        presets = QHBoxLayout()
        presets.addWidget(QLabel("Paper tree:"))
        self.preset_buttons: dict[str, QPushButton] = {}
        for name in PAPER_TREES:
            b = QPushButton(name)
            b.setToolTip(f"Replace the tree with the paper's {name} hierarchy: {PAPER_TREES[name]}")
            b.clicked.connect(lambda _=False, n=name: self._guard(self.apply_preset, n))
            presets.addWidget(b)
            self.preset_buttons[name] = b
        presets.addStretch(1)
        lay.addLayout(presets)

        actions = QHBoxLayout()
        self.auto_button = QPushButton("Auto tree")
        self.auto_button.setToolTip("A balanced binary tree over the current region names")
        self.auto_button.clicked.connect(lambda: self._guard(self.auto_tree))
        self.group_button = QPushButton("Group…")
        self.group_button.setToolTip("Put the two selected nodes under a new parent")
        self.group_button.clicked.connect(self._on_group_clicked)
        self.ungroup_button = QPushButton("Ungroup")
        self.ungroup_button.setToolTip("Replace the selected internal node by its children")
        self.ungroup_button.clicked.connect(self._on_ungroup_clicked)
        self.sync_button = QPushButton("Sync with clusters")
        self.sync_button.setToolTip("Drop leaves no cluster uses; add regions the clusters use but the tree lacks")
        self.sync_button.clicked.connect(lambda: self._guard(self.sync_tree))
        for b in (self.auto_button, self.group_button, self.ungroup_button, self.sync_button):
            actions.addWidget(b)
        actions.addStretch(1)
        lay.addLayout(actions)

        tw = self.tree_widget = QTreeWidget()
        tw.setColumnCount(2)
        tw.setHeaderLabels(["Region", "Clusters"])
        tw.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        tw.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)
        tw.setAlternatingRowColors(True)
        tw.setUniformRowHeights(True)
        tw.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        tw.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        tw.header().setStretchLastSection(False)
        tw.itemChanged.connect(self._on_tree_item_changed)
        tw.itemSelectionChanged.connect(self._update_buttons)
        lay.addWidget(tw, 1)
        return box

    # ============================================================ queries
    @property
    def _clusters(self) -> dict[int, str]:
        return self.labels.clusters()

    @property
    def _tree(self) -> RegionNode | None:
        return self.labels.tree()

    def clusters(self) -> dict[int, str]:
        """The current cluster id -> region name labels (a copy)."""
        return self.labels.clusters()

    def tree(self) -> RegionNode | None:
        """The current tree (possibly not binary while problems remain)."""
        return self.labels.tree()

    def region_names(self) -> list[str]:
        """Region names in use: the tree's leaves in order, then names only clusters use."""
        return self.labels.region_names()

    def is_dirty(self) -> bool:
        return self.labels.is_modified()

    def problems(self) -> list[str]:
        """What keeps the labels and tree from making a valid regions file (empty when Save is allowed)."""
        return self.labels.problems()

    def is_valid(self) -> bool:
        return not self.problems()

    def result_regions(self) -> RegionsFile:
        """The regions file with the current labels and tree (ValueError while problems remain)."""
        return self.labels.result()

    # ============================================================ edits (RegionLabels, one undo entry each)
    def set_cluster_name(self, k: int, name: str) -> None:
        """Label cluster ``k`` with region ``name``."""
        self.labels.set_cluster_name(k, name)

    def merge(self, cluster_ids, name: str) -> None:
        """Label every cluster of ``cluster_ids`` with region ``name`` (see :meth:`RegionLabels.merge`)."""
        self.labels.merge(cluster_ids, name)

    def apply_preset(self, name: str) -> None:
        """Replace the tree with a paper hierarchy ("faces", "cars", "churches" or a domain name)."""
        self.labels.apply_preset(name)

    def auto_tree(self) -> None:
        """A balanced binary tree over the current region names."""
        self.labels.auto_tree()

    def group(self, a: str, b: str, parent_name: str | None = None) -> str:
        """Put nodes ``a`` and ``b`` under a new node; returns its name."""
        return self.labels.group(a, b, parent_name)

    def ungroup(self, name: str) -> None:
        """Replace internal node ``name`` by its children."""
        self.labels.ungroup(name)

    def rename_node(self, old: str, new: str) -> None:
        """Rename a tree node; renaming a leaf renames the region of its clusters too."""
        self.labels.rename_node(old, new)

    def sync_tree(self) -> None:
        """Drop leaves no cluster uses and add missing regions under the root."""
        self.labels.sync_tree()

    def undo(self) -> None:
        self.labels.undo()

    def redo(self) -> None:
        self.labels.redo()

    # ============================================================ saving
    def save(self, path: str) -> RegionsFile:
        """Write the relabelled regions file to ``path`` atomically; ValueError while problems remain."""
        result = self.result_regions()
        result.save(path)
        self.saved_regions = result
        self.save_path = str(path)
        self.labels.set_saved()
        self._refresh()
        self.status_label.setText(f"Saved {path}")
        self.saved.emit(str(path))
        return result

    def _on_save_clicked(self) -> None:
        problems = self.problems()
        if problems:
            self.status_label.setText(f"Cannot save yet: {problems[0]}")
            return
        path = self.save_path
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save regions file", f"{self.regions.domain}-regions.json",
                                                  "Regions files (*.json);;All files (*)")
            if not path:
                return
        try:
            self.save(path)
        except (OSError, ValueError) as e:
            QMessageBox.critical(self, "Could not save", f"Could not write {path}:\n{e}")
            return
        self.accept()

    def _ask_unsaved(self) -> str:
        """"save", "discard" or "cancel" (a message box; tests replace this)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Unsaved labels",
                          "The cluster labels or the region tree have changed. Save them?",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Cancel, self)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        return {QMessageBox.StandardButton.Save: "save",
                QMessageBox.StandardButton.Discard: "discard"}.get(QMessageBox.StandardButton(answer), "cancel")

    def reject(self) -> None:   # Close button, Esc and the window's close box all come here
        if self.labels.is_modified():
            answer = self._ask_unsaved()
            if answer == "cancel":
                return
            if answer == "save":
                self._on_save_clicked()     # closes the dialog when it saved
                return
        super().reject()

    # ============================================================ UI handlers
    def show_sheet(self, k: int) -> SheetViewer | None:
        """Open cluster ``k``'s contact sheet at full size (non-modal)."""
        sheet = self.sheets.get(int(k))
        if sheet is None:
            return None
        v = SheetViewer(f"Cluster {k} — {self._clusters[int(k)]}", sheet, self)
        v.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        v.destroyed.connect(lambda _=None, v=v: self._viewers.remove(v) if v in self._viewers else None)
        self._viewers.append(v)
        v.show()
        return v

    def selected_clusters(self) -> list[int]:
        return sorted({i.row() for i in self.table.selectionModel().selectedRows()})

    def selected_nodes(self) -> list[str]:
        return [i.data(0, NAME_ROLE) for i in self.tree_widget.selectedItems()]

    def _commit_later(self, k: int, text: str) -> None:
        # not inside the combo's own signal: committing rebuilds the combos' item lists
        QTimer.singleShot(0, self, lambda: self._commit(k, text))

    def _commit(self, k: int, text: str) -> None:
        if text.strip() == self._clusters.get(k):
            return
        try:
            self.set_cluster_name(k, text)
        except (ValueError, KeyError) as e:
            self.status_label.setText(str(e))
            self._refresh()

    def _on_merge_clicked(self) -> None:
        ids = self.selected_clusters()
        if not ids:
            return
        names = self.region_names()
        current = self._clusters[ids[0]]
        name, ok = QInputDialog.getItem(self, "Merge into region",
                                        f"Region for cluster{'s' if len(ids) > 1 else ''} "
                                        f"{', '.join(map(str, ids))}:", names,
                                        names.index(current) if current in names else 0, True)
        if ok:
            self._guard(self.merge, ids, name)

    def _select_region(self, name: str) -> None:
        self.table.clearSelection()
        mode = self.table.selectionMode()
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for k, v in self._clusters.items():
            if v == name:
                self.table.selectRow(k)
        self.table.setSelectionMode(mode)

    def _on_group_clicked(self) -> None:
        sel = self.selected_nodes()
        if len(sel) != 2:
            self.status_label.setText("Select exactly two nodes of the tree to group them.")
            return
        name, ok = QInputDialog.getText(self, "Group", f"Name of the new parent of '{sel[0]}' and '{sel[1]}':",
                                        text=self._suggest_parent_name(*sel))
        if ok:
            self._guard(self.group, sel[0], sel[1], name)

    def _on_ungroup_clicked(self) -> None:
        sel = self.selected_nodes()
        if len(sel) != 1:
            self.status_label.setText("Select one internal node to ungroup.")
            return
        self._guard(self.ungroup, sel[0])

    def _on_tree_item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        if self._building_tree or column != 0:
            return
        old, new = item.data(0, NAME_ROLE), item.text(0)
        QTimer.singleShot(0, self, lambda: self._guard(self.rename_node, old, new, refresh_on_error=True))

    def _guard(self, fn, *args, refresh_on_error: bool = False):
        """Run an edit from a button; show its error in the status line instead of raising."""
        try:
            out = fn(*args)
        except (ValueError, KeyError) as e:
            self.status_label.setText(f"<span style='color:{BAD_COLOUR}'>{html.escape(str(e))}</span>")
            if refresh_on_error:
                self._refresh()
            return None
        self.status_label.setText("")
        return out

    # ============================================================ internals
    def _find(self, name: str) -> RegionNode | None:
        t = self._tree
        return None if t is None else next((n for n in t.walk() if n.name == name), None)

    def _suggest_parent_name(self, a: str, b: str) -> str:
        return self.labels.free_name(f"{a}_{b}")

    def _colour(self, name: str) -> QColor:
        if name not in self._colour_of:
            i = len(self._colour_of)
            if i < len(PALETTE):
                r, g, b = (int(x) for x in PALETTE[i])
                self._colour_of[name] = QColor(r, g, b)
            else:
                self._colour_of[name] = QColor.fromHsv((i * 47) % 360, 150, 230)
        return self._colour_of[name]

    # ------------------------------------------------------------ refresh
    def _refresh(self) -> None:
        for name in self.region_names():
            self._colour(name)
        self._refresh_clusters()
        self._refresh_tree()
        problems = self.problems()
        if problems:
            shown = problems[:4]
            more = f"<br>… and {len(problems) - 4} more" if len(problems) > 4 else ""
            items = "<br>".join(f"• {html.escape(p)}" for p in shown)
            self.problem_label.setText(f"<span style='color:{BAD_COLOUR}'><b>{len(problems)} "
                                       f"problem{'s' if len(problems) > 1 else ''} before saving:</b><br>"
                                       f"{items}{more}</span>")
        else:
            leaves = [n.name for n in self._tree.walk() if n.is_leaf]
            self.problem_label.setText(f"<span style='color:{OK_COLOUR}'><b>✓ Ready to save:</b> "
                                       f"{len(self._clusters)} clusters in {len(leaves)} regions, "
                                       f"{len(leaves) - 1} internal nodes.</span>")
        self.save_button.setEnabled(not problems)
        self.save_button.setToolTip("Write the relabelled regions file (Ctrl+S)" if not problems
                                    else "Fix the problems listed on the left first")
        self.setWindowTitle(f"Label regions — {self.regions.domain}{' *' if self.labels.is_modified() else ''}")
        self._update_buttons()

    def _chip_of(self, name: str) -> QIcon:
        colour = self._colour(name)
        key = colour.rgba()
        if key not in self._chips:
            self._chips[key] = _chip(colour)
        return self._chips[key]

    def _refresh_clusters(self) -> None:
        names = self.region_names()
        if names != self._combo_names:
            self._combo_names = names
            self._shown.clear()                    # every combo's item list changes: redo every row
            for c in self.combos.values():
                c.blockSignals(True)
                c.clear()
                for n in names:
                    c.addItem(self._chip_of(n), n)
                c.blockSignals(False)
            self.select_region_combo.blockSignals(True)
            self.select_region_combo.clear()
            for n in names:
                self.select_region_combo.addItem(self._chip_of(n), n)
            self.select_region_combo.setCurrentIndex(-1)
            self.select_region_combo.blockSignals(False)
        index = {n: i for i, n in enumerate(names)}
        for k, c in self.combos.items():
            name = self._clusters[k]
            if self._shown.get(k) == name and c.currentText() == name:
                continue                           # rows that did not change (thousands of clusters)
            c.blockSignals(True)
            c.setCurrentIndex(index[name])
            c.setEditText(name)
            c.blockSignals(False)
            item = self.table.item(k, 0)
            item.setIcon(self._chip_of(name))
            item.setToolTip(f"Cluster {k}: {name}")
            self._shown[k] = name
        used = len(set(self._clusters.values()))
        self.count_label.setText(f"{len(self._clusters)} clusters · {used} region{'s' if used != 1 else ''}")

    def _refresh_tree(self) -> None:
        tw = self.tree_widget
        selected = set(self.selected_nodes())
        self._building_tree = True
        tw.clear()
        if self._tree is not None:
            used: dict[str, int] = {}
            for v in self._clusters.values():
                used[v] = used.get(v, 0) + 1
            names = [n.name for n in self._tree.walk()]
            bold = tw.font()
            bold.setBold(True)

            def add(n: RegionNode, parent) -> int:
                item = QTreeWidgetItem(parent)
                item.setText(0, n.name)
                item.setData(0, NAME_ROLE, n.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                issue = None
                if n.is_leaf:
                    count = used.get(n.name, 0)
                    item.setIcon(0, _chip(self._colour(n.name)))
                    if count == 0:
                        issue = f"leaf '{n.name}' has no cluster"
                else:
                    item.setFont(0, bold)
                    count = sum(add(c, item) for c in n.children)
                    if len(n.children) != 2:
                        issue = f"{len(n.children)} children; the tree must be binary"
                if names.count(n.name) > 1:
                    issue = f"the name '{n.name}' is used more than once"
                item.setText(1, str(count))
                item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                tip = "leaf region: double-click to rename it (its clusters follow)" if n.is_leaf \
                    else "internal node: double-click to rename"
                if issue:
                    red = QColor(BAD_COLOUR)
                    item.setForeground(0, red)
                    item.setForeground(1, red)
                    tip = f"⚠ {issue}\n{tip}"
                item.setToolTip(0, tip)
                if n.name in selected:
                    item.setSelected(True)
                return count

            add(self._tree, tw)
            tw.expandAll()
        self._building_tree = False

    def _update_buttons(self) -> None:
        self.merge_button.setEnabled(bool(self.selected_clusters()))
        sel = self.selected_nodes()
        self.group_button.setEnabled(len(sel) == 2)
        node = self._find(sel[0]) if len(sel) == 1 else None
        self.ungroup_button.setEnabled(node is not None and not node.is_leaf and node is not self._tree)
