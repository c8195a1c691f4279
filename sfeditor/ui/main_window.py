"""The sfeditor main window: node graph, live preview, inspector, edits, photos, files.

Every user intent becomes one :class:`sfeditor.editor.session.EditorSession` call (one
undo entry); the window re-renders through a newest-wins worker
(:class:`~sfeditor.ui.workers.PreviewBridge`) and runs long work (inversion,
heatmaps, GANSpace, model loading) as cancellable :class:`~sfeditor.ui.workers.Job`
objects with progress in the status bar.  No math lives here.
"""
from __future__ import annotations

import html
import os
import time
from pathlib import Path

import numpy as np
import torch
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QDockWidget, QFileDialog, QFormLayout, QHBoxLayout,
                               QInputDialog, QLabel, QLineEdit, QMainWindow, QMessageBox, QProgressBar, QPushButton,
                               QSplitter, QTabWidget, QToolBar, QComboBox, QWidget, QApplication)

from ..domains import SHIPPED
from ..editor.session import EditorSession, ModelBundle, SessionError, autosave_dir, load_bundle
from .edit_panel import EditPanel
from .inspector import InspectorPanel
from .node_graph import NodeGraphView
from .preview import PreviewWidget
from .theme import apply_theme
from .transfer_dialog import IMAGE_FILTER, TransferDialog
from .workers import Dispatcher, Job, PreviewBridge, gui_thread_gc

__all__ = ["MainWindow", "OpenModelDialog"]

COMPOSITION_FILTER = "Compositions (*.sfcomp.json *.json *.png);;All files (*)"
OPEN_FILTER = ("Compositions and photos (*.sfcomp.json *.json *.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;"
               "Compositions (*.sfcomp.json *.json *.png);;"
               "Photos (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)")
PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MAX_RECENT = 10
AUTOSAVE_MS = 30_000
HEATMAP_SAMPLES = 32
#: Models larger than this compute the heatmap overlay on drafts of this size, with fewer samples
#: (1024 px on 2 CPU cores: 16 samples in ~15 s instead of 8 full-size ones in ~26 s; bench/large_preview.py).
HEATMAP_RESOLUTION = 256
HEATMAP_SAMPLES_LARGE = 16


def _save_path(path) -> Path | None:
    """The file Ctrl+S writes for a composition read from ``path``: a PNG (an exported image with the
    composition inside) is never overwritten with JSON, so it gives no save path (Save asks for one)."""
    if path is None:
        return None
    p = Path(path)
    return None if p.suffix.lower() == ".png" else p


def _duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s} s" if s < 90 else f"{s // 60} min {s % 60:02d} s"


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    return f"CPU ({torch.get_num_threads()} threads)"


class OpenModelDialog(QDialog):
    """A generator checkpoint with an optional hierarchy and regions file."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Open model")
        form = QFormLayout(self)
        self.fields = {}
        for key, label, filt in (("generator", "Generator (.pt / .pkl)", "Checkpoints (*.pt *.pth *.pkl);;All (*)"),
                                 ("hierarchy", "Hierarchy (optional)", "Hierarchies (*.pt *.json);;All (*)"),
                                 ("regions", "Regions file (optional)", "Regions (*.json);;All (*)")):
            row = QHBoxLayout()
            edit = QLineEdit()
            btn = QPushButton("…")
            btn.setFixedWidth(32)
            btn.clicked.connect(lambda _=False, e=edit, f=filt, t=label: self._browse(e, f, t))
            row.addWidget(edit, 1)
            row.addWidget(btn)
            form.addRow(label, row)
            self.fields[key] = edit
        self.domain = QLineEdit()
        self.domain.setPlaceholderText("a name for the domain (default: the file's name)")
        form.addRow("Domain name", self.domain)
        bb = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        form.addRow(bb)

    def _browse(self, edit: QLineEdit, filt: str, title: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, title, "", filt)
        if path:
            edit.setText(path)

    def values(self) -> dict:
        v = {k: (e.text().strip() or None) for k, e in self.fields.items()}
        v["domain"] = self.domain.text().strip() or None
        return v


class MainWindow(QMainWindow):
    frameShown = Signal(int)          # stamp of the frame now on screen (tests, captures)

    def __init__(self, bundle: ModelBundle | None = None, *, domain: str = "toy-faces",
                 settings: QSettings | None = None, autosave_folder: str | os.PathLike | None = None,
                 device: str = "auto", dark: bool = True, check_recovery: bool = True):
        super().__init__()
        self.settings = settings if settings is not None else QSettings("sfeditor", "sfeditor")
        self.autosave_folder = Path(autosave_folder) if autosave_folder else autosave_dir()
        self.device_pref = device
        self.dark = dark
        self.session: EditorSession | None = None
        self.bridge: PreviewBridge | None = None
        self.jobs: dict[str, Job] = {}       # newest job of each kind
        self._running: set[Job] = set()      # every job whose thread may still run
        self._status_jobs: list[tuple[Job, str]] = []   # jobs shown in the status bar, newest last
        self._heatmap_shown: tuple | None = None        # (job, done, total) of the map on screen
        self.errors: list[str] = []
        self.last_domain_verdicts: list = []              # sfeditor.images.domain_check verdicts of the last inversion
        self.directions: dict[str, np.ndarray] = {}      # key -> direction ("pca:3", "file:/path.npy")
        self._direction_labels: dict[str, str] = {}      # file directions' list labels
        self._encoder: tuple | None = None                # (bundle, toy encoder or None) for inversions
        self.thumbnails: dict[str, np.ndarray] = {}
        self.last_result = None
        self.frames_shown = 0             # full frames (drafts not counted)
        self.drafts_shown = 0
        self._last_order = (0, 0)         # RenderResult.order of the frame on screen
        self._committed_frame: np.ndarray | None = None   # last frame without a previewed edit
        self._whole_frame: np.ndarray | None = None       # the previewed edit applied to every node
        self._before_frame: np.ndarray | None = None
        self._render_pending = False
        self._unsubscribe = None
        self._t_submit: dict[int, float] = {}

        gui_thread_gc()
        self.dispatcher = Dispatcher(self)    # worker threads hand results to the GUI thread through it
        self._build_ui()
        self._build_actions()
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setInterval(AUTOSAVE_MS)
        self._autosave_timer.timeout.connect(self.autosave)
        self._autosave_timer.start()
        self._overlay_timer = QTimer(self)
        self._overlay_timer.setSingleShot(True)
        self._overlay_timer.setInterval(120)
        self._overlay_timer.timeout.connect(self.refresh_overlay)

        if bundle is None:
            try:
                bundle = load_bundle(domain, device=device)
            except SessionError as e:
                self.show_error("Could not open the model", str(e))
        if bundle is not None:
            self.set_bundle(bundle)
        if check_recovery:
            QTimer.singleShot(0, self._offer_recovery)

    # ================================================================= UI
    def _build_ui(self) -> None:
        self.setWindowTitle("sfeditor")
        self.resize(1280, 800)
        self.setAcceptDrops(True)
        self.graph = NodeGraphView()
        self.preview = PreviewWidget()
        self.preview.set_dark(self.dark)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.graph)
        split.addWidget(self.preview)
        # the preview gets the larger share (issue 39: at 1280x800 it had ~340 px); the graph shows its
        # node names as readable captions when it is zoomed out to fit (node_graph.READABLE_PX)
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 5)
        split.setSizes([440, 550])
        self.preview.setMinimumWidth(300)
        self.setCentralWidget(split)
        self._split = split

        self.inspector = InspectorPanel()
        self.edit_panel = EditPanel()
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.model_info.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.model_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.inspector, "Node")
        self.tabs.addTab(self.edit_panel, "Edit")
        self.tabs.addTab(self.model_info, "Model")
        dock = QDockWidget("Inspector", self)
        dock.setObjectName("inspector-dock")
        dock.setWidget(self.tabs)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        dock.setMinimumWidth(300)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self._dock = dock
        self._laid_out = False

        sb = self.statusBar()
        self.device_label = QLabel("")
        self.frame_label = QLabel("frame —")
        self.frame_label.setMinimumWidth(250)
        self.job_label = QLabel("")
        self.job_bar = QProgressBar()
        self.job_bar.setMaximumWidth(300)
        self.job_bar.setMinimumWidth(200)
        self.job_bar.setVisible(False)
        self.job_cancel = QPushButton("Cancel")
        self.job_cancel.setVisible(False)
        self.job_cancel.clicked.connect(self.cancel_status_job)
        sb.addWidget(self.job_label, 1)
        sb.addPermanentWidget(self.job_bar)
        sb.addPermanentWidget(self.job_cancel)
        sb.addPermanentWidget(self.frame_label)
        sb.addPermanentWidget(self.device_label)

        g, ins, ed, pv = self.graph, self.inspector, self.edit_panel, self.preview
        g.selectionChangedNames.connect(self._selection_changed)
        g.rerollRequested.connect(lambda n: self._do(lambda s: s.reroll(n)))
        g.seedRequested.connect(self.ask_seed)
        g.lockRequested.connect(lambda n, v: self._do(lambda s: s.set_locked(n, v)))
        g.collapseRequested.connect(lambda n, v: self._do(lambda s: s.set_collapsed(n, v)))
        g.copyRequested.connect(lambda a, b: self._do(lambda s: s.copy_code(a, b)))
        g.clearCodeRequested.connect(lambda n: self._do(lambda s: s.clear_code(n)))
        g.photoRequested.connect(self.choose_photo_for)
        g.heatmapRequested.connect(self.show_heatmap_for)
        g.filesDropped.connect(self.open_paths)
        g.randomizeRequested.connect(lambda: self._do(lambda s: s.randomize_unlocked()))
        ins.seedChanged.connect(lambda n, v: self._do(lambda s: s.set_seed(n, v)))
        ins.rerollRequested.connect(lambda n: self._do(lambda s: s.reroll(n)))
        ins.lockRequested.connect(lambda n, v: self._do(lambda s: s.set_locked(n, v)))
        ins.collapseRequested.connect(lambda n, v: self._do(lambda s: s.set_collapsed(n, v)))
        ins.clearCodeRequested.connect(lambda n: self._do(lambda s: s.clear_code(n)))
        ins.heatmapRequested.connect(self.show_heatmap_for)
        ins.photoRequested.connect(self.choose_photo_for)
        ins.truncationChanged.connect(lambda v: self._do(lambda s: s.set_truncation(v)))
        ins.truncationReleased.connect(lambda: self.session and self.session.seal())
        ins.randomizeRequested.connect(lambda: self._do(lambda s: s.randomize_unlocked()))
        ed.computePcaRequested.connect(self.compute_pca)
        ed.loadDirectionRequested.connect(self.load_direction_dialog)
        ed.previewChanged.connect(self.request_render)
        ed.cancelPreviewRequested.connect(self.request_render)
        ed.applyRequested.connect(self.apply_edit)
        pv.overlayModeChanged.connect(lambda _m: self._overlay_timer.start())
        pv.heatmapModeChanged.connect(lambda _m: self._overlay_timer.start())
        pv.cancelRequested.connect(lambda: self.cancel_job("overlay"))
        pv.compareChanged.connect(lambda _on: self._update_compare())
        pv.filesDropped.connect(lambda paths: self.open_paths("", paths))
        # view options kept across launches (a bad stored value falls back to the default)
        for key, setter, sig in (("heatmap_scale", pv.set_heatmap_scale, pv.heatmapScaleChanged),
                                 ("magnification", pv.set_magnification, pv.magnificationChanged)):
            stored = self.settings.value(key, "")
            if stored:
                try:
                    setter(str(stored))
                except ValueError:
                    pass
            sig.connect(lambda v, k=key: self.settings.setValue(k, v))

    def _action(self, menu, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setStatusTip(tip)
        a.triggered.connect(lambda _checked=False: slot())
        menu.addAction(a)
        return a

    def _build_actions(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self._action(f, "&New composition", self.new_composition, QKeySequence.StandardKey.New)
        self._action(f, "&Open…", self.open_dialog, QKeySequence.StandardKey.Open,
                     "Open a composition (.sfcomp.json) or a PNG exported by sfeditor")
        self.recent_menu = f.addMenu("Open &recent")
        self._action(f, "&Save", self.save, QKeySequence.StandardKey.Save)
        self._action(f, "Save &as…", self.save_as, QKeySequence.StandardKey.SaveAs)
        self._action(f, "&Export PNG…", self.export_dialog, "Ctrl+E", "The image, with the composition embedded")
        f.addSeparator()
        self._action(f, "Open &model…", self.open_model_dialog, "Ctrl+Shift+O",
                     "A StyleGAN2 checkpoint with an optional hierarchy and regions file")
        self._action(f, "&Get models…", self.get_models_dialog, tip="Download or register the official StyleGAN2, "
                     "FusionNet and e4e files (sfeditor models)")                       # issue 40
        f.addSeparator()
        self._action(f, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        e = mb.addMenu("&Edit")
        self.undo_action = self._action(e, "&Undo", lambda: self._do(lambda s: s.undo()), QKeySequence.StandardKey.Undo)
        self.redo_action = self._action(e, "&Redo", lambda: self._do(lambda s: s.redo()), QKeySequence.StandardKey.Redo)
        e.addSeparator()
        self._action(e, "&Randomise all unlocked", lambda: self._do(lambda s: s.randomize_unlocked()),
                     "Ctrl+Shift+R")
        v = mb.addMenu("&View")
        self._action(v, "&Fit graph", self.graph.fit, "Ctrl+0")
        self.theme_action = self._action(v, "&Light theme", self.toggle_theme)
        self.theme_action.setCheckable(True)
        self.theme_action.setChecked(not self.dark)
        t = mb.addMenu("&Tools")
        self._action(t, "Invert &photo into all nodes…", lambda: self.choose_photo_for(""))
        self._action(t, "Photo &encoder…", self.choose_photo_encoder,
                     tip="The e4e encoder that starts photo inversions for this model's domain")   # issue 40
        self._action(t, "&Hair / region transfer…", self.transfer_dialog, "Ctrl+T")
        self._action(t, "&GANSpace directions", self.compute_pca)
        self._action(t, "Region &labelling tool…", self.labelling_tool)
        h = mb.addMenu("&Help")
        self._action(h, "&Keyboard shortcuts", self.show_shortcuts, QKeySequence.StandardKey.HelpContents)
        self._action(h, "&About sfeditor", self.show_about)

        tb = QToolBar("Main")
        tb.setObjectName("main-toolbar")
        tb.setMovable(False)
        self.addToolBar(tb)
        tb.addWidget(QLabel(" Domain "))
        self.domain_box = QComboBox()
        self.domain_box.setToolTip("Shipped toy domains, then models you opened recently "
                                   "(File ▸ Open model… for another checkpoint)")
        self.domain_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.domain_box.activated.connect(self._model_chosen)
        self._fill_model_box()
        tb.addWidget(self.domain_box)
        tb.addSeparator()
        tb.addAction(self.undo_action)
        tb.addAction(self.redo_action)
        tb.addSeparator()
        for text, slot in (("Randomise", lambda: self._do(lambda s: s.randomize_unlocked())),
                           ("Fit", self.graph.fit), ("Export PNG", self.export_dialog),
                           ("Hair transfer", self.transfer_dialog)):
            a = QAction(text, self)
            a.triggered.connect(lambda _c=False, fn=slot: fn())
            tb.addAction(a)
        self._refresh_recent()

    # ============================================================ model
    def set_bundle(self, bundle: ModelBundle, composition=None, path: Path | None = None) -> None:
        """Show ``bundle`` (closing the previous preview worker) with ``composition`` (read from ``path``,
        which stays the session's file) or a fresh one.  Callers ask before discarding unsaved work."""
        self.cancel_jobs()
        if self.bridge is not None:
            self.bridge.close()
            self.bridge.deleteLater()
        if self._unsubscribe:
            self._unsubscribe()
        old = self.session
        if old is not None:          # the old model's recovery file: its work was saved or given up
            old.discard_autosave(self.autosave_folder)
        self.session = EditorSession(bundle, session_id=old.session_id if old is not None else None)
        if composition is not None:
            try:
                for w in self.session.replace_composition(composition, _save_path(path)):
                    self.statusBar().showMessage(w, 8000)
            except SessionError as e:
                self.show_error("Composition", f"{e}; starting a new composition instead")
        self._unsubscribe = self.session.subscribe(self._changed)
        self.bridge = PreviewBridge(bundle.G, bundle.hierarchy, self.dispatcher, self)
        self._last_order = (0, 0)              # stamps restart with every worker
        self._draft_note_shown = False
        self._t_submit.clear()
        self.bridge.frameReady.connect(self._frame_ready)
        self.bridge.thumbnailReady.connect(self._thumbnail_ready)
        self.thumbnails.clear()
        self.directions.clear()
        self.edit_panel.set_directions([])
        self._committed_frame = self._before_frame = None
        self.graph.set_tree(self.session.composition.tree)
        for n in self.session.composition.internal_nodes:
            self.graph.set_net_available(n, bundle.hierarchy is None or bundle.has_net(n))
        self._sync_domain_box()
        self.device_label.setText(_device_text(bundle.device))
        self._update_model_info()
        for note in bundle.notes:
            self.statusBar().showMessage(note, 8000)
        self._changed(None)
        self.graph.select(self.session.composition.leaves[0] if self.session.composition.leaves else None)

    def _update_model_info(self) -> None:
        b = self.session.bundle
        rows = [f"<b>{b.domain}</b>", f"generator: {b.generator_source} ({b.G.size}×{b.G.size}, "
                f"w {b.G.style_dim}, S {b.G.layout.size} channels)",
                f"z → w: {b.sampler_text()}",
                f"fingerprint: {b.fingerprint[:19]}…",
                f"hierarchy: {b.hierarchy_path or 'none'}"
                + (f" ({len(b.hierarchy.nets)} nets)" if b.hierarchy is not None else ""),
                f"regions: {b.regions_path or 'none'}", f"device: {_device_text(b.device)}"]
        rows += [f"<i>{n}</i>" for n in b.notes]
        self.model_info.setText("<br>".join(rows))

    def switch_domain(self, domain: str) -> None:
        if self.session is not None and domain == self.session.bundle.domain:
            return
        self.load_model_async(domain=domain)

    def load_model_async(self, **kwargs) -> Job | None:
        """Open another model in a job; its composition (``composition=``, read from ``path=``) or a fresh
        one replaces the current one, so unsaved edits are confirmed first (None: the user cancelled)."""
        kwargs.setdefault("device", self.device_pref)
        comp = kwargs.pop("composition", None)
        path = kwargs.pop("path", None)
        spec = {k: kwargs.get(k) for k in ("domain", "generator", "hierarchy", "regions")}
        what = f"opening {Path(path).name}" if path else f"switching to {spec['domain'] or spec['generator']}"
        if not self._confirm_discard(what):
            self._sync_domain_box()
            return None
        mark = self._history_mark()

        def work(report, cancel):
            report(0, 1, {})
            return load_bundle(**kwargs)

        def done(bundle):
            # edits made while the model loaded were not covered by the answer above: ask again
            if self._history_mark() != mark and not self._confirm_discard(what):
                self._sync_domain_box()
                return
            if spec["generator"]:
                self._add_recent_model(spec)
            self.set_bundle(bundle, comp, path)

        return self.start_job("model", work, "Loading model…", done=done,
                              failed=lambda msg: (self.show_error("Could not open the model", msg),
                                                  self._sync_domain_box()))

    # -------------------------------------------------------- model picker
    def _recent_models(self) -> list[dict]:
        import json

        try:
            items = json.loads(self.settings.value("recent_models", "[]") or "[]")
        except (TypeError, ValueError):
            return []
        return [d for d in items if isinstance(d, dict) and d.get("generator")]

    def _add_recent_model(self, spec: dict) -> None:
        import json

        items = [spec] + [d for d in self._recent_models() if d.get("generator") != spec["generator"]
                          or d.get("hierarchy") != spec.get("hierarchy")]
        self.settings.setValue("recent_models", json.dumps(items[:MAX_RECENT]))
        self._fill_model_box()

    def _fill_model_box(self) -> None:
        """Shipped domains first, then recently opened checkpoints (name — file)."""
        box = self.domain_box
        box.blockSignals(True)
        box.clear()
        for name in SHIPPED:
            box.addItem(name, {"domain": name})
        recent = self._recent_models()
        if recent:
            box.insertSeparator(box.count())
        for d in recent:
            box.addItem(f"{d.get('domain') or Path(d['generator']).stem} — {Path(d['generator']).name}", d)
            box.setItemData(box.count() - 1, "\n".join(f"{k}: {v}" for k, v in d.items() if v),
                            Qt.ItemDataRole.ToolTipRole)
        box.blockSignals(False)
        self._size_domain_box()
        self._sync_domain_box()

    def _size_domain_box(self) -> None:
        """Wide enough for every entry's full name (the style's padding and arrow included)."""
        box = self.domain_box
        fm = box.fontMetrics()
        longest = max((fm.horizontalAdvance(box.itemText(i)) for i in range(box.count())), default=80)
        box.setMinimumWidth(min(longest, 420) + 56)

    def _model_chosen(self, index: int) -> None:
        spec = self.domain_box.itemData(index)
        if not isinstance(spec, dict):
            return
        if spec.get("generator"):
            if self.session is not None and self.session.bundle.generator_source == spec["generator"] \
                    and self.session.bundle.hierarchy_path == spec.get("hierarchy"):
                return
            self.load_model_async(**{k: v for k, v in spec.items() if v})
        else:
            self.switch_domain(spec["domain"])

    def _sync_domain_box(self) -> None:
        """Show the open model in the picker (added as an entry when it is not listed)."""
        if self.session is None:
            return
        b, box = self.session.bundle, self.domain_box
        for i in range(box.count()):
            d = box.itemData(i)
            if isinstance(d, dict) and ((d.get("generator") and d["generator"] == b.generator_source)
                                        or (not d.get("generator") and d.get("domain") == b.generator_source)):
                box.setCurrentIndex(i)
                return
        box.addItem(b.domain, {"domain": b.domain, "generator": b.generator_source})
        box.setCurrentIndex(box.count() - 1)
        self._size_domain_box()

    def open_model_dialog(self) -> None:
        d = OpenModelDialog(self)
        if d.exec() != QDialog.DialogCode.Accepted:
            return
        v = d.values()
        if not v["generator"]:
            self.show_error("Open model", "Choose a generator checkpoint.")
            return
        self.load_model_async(domain=v["domain"] or Path(v["generator"]).stem, generator=v["generator"],
                              hierarchy=v["hierarchy"], regions=v["regions"])

    # ============================================================ edits
    def _do(self, fn) -> bool:
        """Run one session intent; a refused edit becomes a message, never an exception."""
        if self.session is None:
            return False
        try:
            return bool(fn(self.session))
        except (SessionError, ValueError, KeyError) as e:
            self.show_error("Edit refused", str(e).strip("'\""))
            return False

    def _changed(self, event) -> None:
        comp = self.session.composition
        if event is not None and getattr(event, "dropped", 0):
            st = self.session.stack
            self.statusBar().showMessage(
                f"undo history full ({st.limit} steps): the oldest step can no longer be undone "
                f"({st.dropped} dropped so far; the composition stays marked modified)", 8000)
        self.graph.update_nodes(comp)
        self._refresh_inspector()
        self.undo_action.setEnabled(self.session.stack.can_undo())
        self.redo_action.setEnabled(self.session.stack.can_redo())
        # the text stays short (it is a toolbar button too); the tooltip says what would be undone
        self.undo_action.setToolTip(f"Undo: {self.session.stack.undo_text}" if self.session.stack.can_undo()
                                    else "Nothing to undo")
        self.redo_action.setToolTip(f"Redo: {self.session.stack.redo_text}" if self.session.stack.can_redo()
                                    else "Nothing to redo")
        self.setWindowTitle(f"{self.session.title()} — sfeditor")
        self._before_frame = self._committed_frame
        self.request_render()
        if self.preview.overlay_mode() != "none":
            self._overlay_timer.start()

    def request_render(self) -> None:
        """Coalesce: all edits made during one pass of the event loop give one request."""
        if not self._render_pending:
            self._render_pending = True
            QTimer.singleShot(0, self._submit_render)

    def _submit_render(self) -> None:
        self._render_pending = False
        if self.session is None or self.bridge is None or self.bridge.service.closed:
            return
        comp = self.session.composition
        if self.edit_panel.active():
            try:
                comp = self._edit_preview_composition()
                self.edit_panel.set_target_text("previewing; Apply to keep")
            except (SessionError, ValueError) as e:
                self.edit_panel.set_target_text(str(e))
        else:
            self._refresh_edit_target()          # Reset / strength 0: no "previewing" left behind
        stamp = self.bridge.submit(comp)
        self._t_submit[stamp] = time.perf_counter()
        self._whole_frame = None
        if self.edit_panel.active() and self.edit_panel.compare_whole.isChecked() \
                and not self.edit_panel.whole_image():
            self._render_whole_edit()

    def _render_whole_edit(self) -> None:
        """The same edit on every node (no region limit), rendered in a job for the compare view."""
        from ..editor.render_service import render_once

        try:
            args = dict(self._edit_args(), nodes=None)
            comp = self.session.preview_direction(**args)
        except (SessionError, ValueError):
            return
        b = self.session.bundle

        def work(report, cancel):
            return render_once(b.G, b.hierarchy, comp)

        def done(img):
            self._whole_frame = img
            self._update_compare()
        self.start_job("compare", work, "unrestricted edit", status=False, done=done)

    def _frame_ready(self, result) -> None:
        if self.sender() is not None and self.sender() is not self.bridge:
            return                             # a late frame of the previous model's worker (closed anyway)
        if result.order <= self._last_order:
            return
        self._last_order = result.order
        self.last_result = result
        if not result.ok:
            self.preview.set_message("render failed: " + result.error_text.strip().splitlines()[-1])
            self.frame_label.setText("frame: error")
            return
        if result.draft:
            # a low-resolution image of this very code; the full frame follows unless a newer edit wins
            h, w = result.image.shape[:2]
            f = max(1, (result.full_size or w) // w)
            self.preview.set_frame(result.image, (h * f, w * f))
            self.preview.set_message(result.note)
            self.frame_label.setText(f"draft {w} px {result.render_ms:.0f} ms · rendering {w * f} px…")
            self.drafts_shown += 1
            return
        self.preview.set_frame(result.image)
        self.preview.set_message(result.note)
        if not self.edit_panel.active():
            self._committed_frame = result.image
        self._update_compare()
        lat = (time.perf_counter() - self._t_submit.pop(result.stamp, time.perf_counter())) * 1000
        for k in [k for k in self._t_submit if k < result.stamp]:
            del self._t_submit[k]
        nodes = (", ".join(result.recomputed_nodes) if result.recomputed_nodes else "cached") \
            if result.hierarchy_used else "none (no hierarchy)"
        self.frame_label.setText(f"frame {result.render_ms:.0f} ms · latency {lat:.0f} ms · nets: {nodes}")
        self._show_draft_note()
        self.frames_shown += 1
        self.frameShown.emit(result.stamp)

    def _show_draft_note(self) -> None:
        """Once per model, after its first frame was checked: whether drafts are shown, and why."""
        note = self.bridge.service.draft_note
        if note and not self._draft_note_shown:
            self._draft_note_shown = True
            self.statusBar().showMessage(note, 10000)

    def _thumbnail_ready(self, name: str, img) -> None:
        if self.sender() is not None and self.sender() is not self.bridge:
            return
        self._show_draft_note()                 # thumbnails follow the first frame's check
        self.thumbnails[name] = img
        self.graph.set_thumbnail(name, img)
        if self.inspector.node() == name:
            self.inspector.set_thumbnail(img)

    def _selection_changed(self, names: list) -> None:
        self._refresh_inspector()
        self._refresh_edit_target()
        if self.preview.overlay_mode() == "heatmap":
            self._overlay_timer.start()

    def selected(self) -> list[str]:
        return self.graph.selected_nodes()

    def _refresh_inspector(self) -> None:
        if self.session is None:
            return
        sel = self.selected()
        name = sel[0] if sel else None
        s = self.session
        self.inspector.show_node(name, s.composition, has_net=(name is None or s.bundle.hierarchy is None
                                                               or s.bundle.has_net(name)),
                                 bypassed_by=s.bypassed_by(name) if name else None,
                                 thumbnail=self.thumbnails.get(name) if name else None,
                                 net_note=s.bundle.blend_note(name) if name else None)
        self._refresh_edit_target()

    def _refresh_edit_target(self) -> None:
        if self.edit_panel.whole_image():
            self.edit_panel.set_target_text("every node (unrestricted edit)")
        else:
            sel = self.selected()
            self.edit_panel.set_target_text(f"nodes: {', '.join(sel)} (and their subtrees)" if sel
                                            else "select nodes in the graph")

    def ask_seed(self, name: str) -> None:
        st = self.session.composition.state(name)
        v, ok = QInputDialog.getDouble(self, "Set seed", f"Seed for {name}", st.seed, 0, 2 ** 32 - 1, 0)
        if ok:
            self._do(lambda s: s.set_seed(name, int(v)))

    # ======================================================= latent edits
    def _current_direction(self):
        key = self.edit_panel.current_key()
        if key is None:
            raise SessionError("choose a direction")
        return self.directions[key]

    def _edit_args(self) -> dict:
        from ..images.directions import parse_layers

        nodes = None if self.edit_panel.whole_image() else self.selected()
        if nodes is not None and not nodes:
            raise SessionError("select the nodes to edit (or choose “Whole image”)")
        layers = parse_layers(self.edit_panel.layers_text() or None, self.session.bundle.G.n_latent)
        return {"direction": self._current_direction(), "strength": self.edit_panel.strength(),
                "nodes": nodes, "layers": layers}

    def _edit_preview_composition(self):
        return self.session.preview_direction(**self._edit_args())

    def apply_edit(self) -> None:
        try:
            args = self._edit_args()
        except (SessionError, ValueError) as e:
            self.show_error("Edit", str(e))
            return
        label = self.edit_panel.list.currentItem().text() if self.edit_panel.list.currentItem() else "edit"
        if self._do(lambda s: s.apply_direction(label=label, **args)):
            self.edit_panel.set_strength(0.0)

    def compute_pca(self) -> Job:
        from ..images.directions import pca_directions

        G = self.session.bundle.G

        def work(report, cancel):
            return pca_directions(G, n_components=min(20, G.style_dim), n_samples=10_000, progress=report,
                                  cancel=cancel)

        return self.start_job("pca", work, "GANSpace: PCA of sampled w…", done=self._pca_done,
                              failed=lambda m: self.show_error("GANSpace", m))

    def _pca_done(self, pca) -> None:
        entries = []
        for i in range(len(pca)):
            key = f"pca:{i}"
            self.directions[key] = pca.direction(i)
            entries.append((key, f"PC {i}  ({pca.explained_variance_ratio[i]:.1%} of variance)"))
        files = [(k, self._direction_labels[k]) for k in self.directions if k.startswith("file:")]
        self.edit_panel.set_directions(entries + files)
        self.tabs.setCurrentWidget(self.edit_panel)

    def load_direction_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a direction", "", "Directions (*.npy);;All files (*)")
        if path:
            self.load_direction(path)

    def load_direction(self, path: str) -> bool:
        from ..images.directions import DirectionError, load_direction

        try:
            d = load_direction(path, self.session.bundle.G)
        except (DirectionError, ValueError, OSError) as e:
            self.show_error("Direction file", str(e))
            return False
        key = f"file:{path}"
        self.directions[key] = d
        self._direction_labels[key] = Path(path).name
        self.edit_panel.add_direction(key, Path(path).name)
        self.tabs.setCurrentWidget(self.edit_panel)
        return True

    # ========================================================= overlays
    def show_heatmap_for(self, name: str) -> None:
        self.graph.select(name)
        self.preview.set_overlay_mode("heatmap")
        self.refresh_overlay()

    def refresh_overlay(self) -> None:
        """(Re)start the overlay job for the current mode, selection and composition."""
        self.cancel_job("overlay")
        mode = self.preview.overlay_mode()
        if self.session is None or mode == "none":
            self.preview.set_progress(0, 0)
            return
        if mode == "heatmap":
            self._start_heatmap()
        else:
            self._start_masks()

    def _start_heatmap(self) -> None:
        from ..editor.locality import locality_heatmap

        b, comp = self.session.bundle, self.session.composition.snapshot()
        sel = self.selected()
        node = sel[0] if sel else comp.tree.name
        base = self.preview.heatmap_mode()
        # a large model's map is computed on 256 px drafts (stretched over the frame), when its first
        # frame showed that they stand in for it (RenderService.low_resolution_ok)
        res = HEATMAP_RESOLUTION if b.G.size > HEATMAP_RESOLUTION \
            and self.bridge.service.low_resolution_ok(HEATMAP_RESOLUTION) is True else None
        samples = HEATMAP_SAMPLES if res is None else HEATMAP_SAMPLES_LARGE

        def work(report, cancel):
            return locality_heatmap(b.G, b.hierarchy, comp, node, base, samples=samples,
                                    batch=8 if b.G.size <= 128 else 1, cancel=cancel, max_resolution=res,
                                    region_model=b.region_model)

        def title(u) -> str:     # the union reading (sfeditor.editor.locality), when the model has a regions file
            text = f"{node}: mean |Δ| when its code is resampled"
            if u.locality == u.locality:
                text += (f" · locality {u.locality:.2f} (region of either image; base only "
                         f"{u.base_locality:.2f}) · change inside {u.region_change:.3f}")
            return text

        box: dict = {}

        def partial(u):
            job = box.get("job")
            if job is None or self.jobs.get("overlay") is not job or job.token.requested:
                return                          # a superseded or cancelled job's late map: not shown
            self._heatmap_shown = (job, u.done, u.total)
            self.preview.set_heatmap(u.values, title=title(u),
                                     status="" if u.done >= u.total else f"partial: {u.done}/{u.total} samples")
            self.preview.set_progress(u.done, u.total, f"{node}: {u.done}/{u.total}")
            if u.note:
                self.preview.set_message(u.note)

        def cancelled():
            shown = self._heatmap_shown
            if shown is None or shown[0] is not box.get("job") or shown[1] >= shown[2]:
                return
            newer = self.jobs.get("overlay") not in (None, box.get("job"))
            self.preview.set_heatmap_status("outdated: recomputing…" if newer else
                                            f"cancelled at {shown[1]}/{shown[2]} samples: partial")

        job = self.start_job("overlay", work, f"heatmap of {node}", status=False, partial=partial,
                             finished=lambda: (self.jobs.get("overlay") in (None, box.get("job"))
                                               and self.preview.set_progress(0, 0)),
                             failed=lambda m: self.preview.set_message(f"heatmap failed: {m}"))
        box["job"] = job
        job.cancelled.connect(cancelled)

    def _start_masks(self) -> None:
        b = self.session.bundle
        if b.region_model is None:
            self.preview.set_message("no regions file for this model: masks unavailable")
            return
        comp = self.session.composition.snapshot()

        def work(report, cancel):
            from ..editor.render_service import composition_labels

            return composition_labels(b.G, b.hierarchy, b.region_model, comp)

        self.start_job("overlay", work, "region masks", status=False,
                       done=lambda lab: self.preview.set_masks(lab, list(b.region_model.leaves)),
                       failed=lambda m: self.preview.set_message(f"masks failed: {m}"))

    def _update_compare(self) -> None:
        if self.edit_panel.active() and self._whole_frame is not None:
            self.preview.set_compare(self._whole_frame, "every node")
        elif self.edit_panel.active():
            self.preview.set_compare(self._committed_frame, "before edit")
        else:
            self.preview.set_compare(self._before_frame, "before")

    # ============================================================ photos
    def choose_photo_for(self, node: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"Photo for {node or 'all nodes'}", "", IMAGE_FILTER)
        if path:
            self.open_paths(node, [path])

    def open_paths(self, node: str, paths: list, dialog: bool = False) -> None:
        """Files dropped on a node ("" = the canvas / preview) or chosen in File ▸ Open (``dialog``): a
        composition (JSON or a PNG made by sfeditor) is opened (File ▸ Open) or restored as one undoable
        edit (a drop); any other image is inverted and assigned (the same path for both)."""
        for path in paths[:1]:
            p = Path(path)
            if p.suffix.lower() == ".json" or p.name.endswith(".sfcomp.json"):
                self.open_composition(p)
                return
            if p.suffix.lower() == ".png":
                try:
                    comp = EditorSession.read_composition(p)
                except SessionError:
                    comp = None
                if comp is not None:
                    if dialog:
                        self.open_composition(p)
                    else:
                        self.apply_composition(comp, p, as_edit=True)
                    return
            if p.suffix.lower() not in PHOTO_SUFFIXES:
                self.show_error("Unsupported file", f"{p.name}: not an image or a composition "
                                f"(images: {', '.join(sorted(PHOTO_SUFFIXES))})")
                return
            self.invert_photo(p, node)
        if len(paths) > 1:
            self.statusBar().showMessage(f"{len(paths) - 1} more file(s) ignored: drop one photo at a time", 6000)

    def _inversion_fn(self, path: Path):
        """A job function: read, align/crop and invert ``path`` -> an InversionResult whose
        ``domain_verdict`` (:func:`sfeditor.images.domain_check.judge_inversion`) says whether the photo
        looks like the model's domain."""
        from ..images.alignment import prepare_image
        from ..images.intake import read_image
        from ..images.inversion import InversionCache, InversionSettings, Projector

        b = self.session.bundle

        def work(report, cancel):
            img = read_image(path)
            prep = prepare_image(img, b.G.size, b.domain)
            if self._encoder is None or self._encoder[0] is not b:      # read once per model (and choice)
                self._encoder = (b, self._load_photo_encoder(b))
            proj = Projector(b.G, InversionSettings.for_generator(b.G, b.domain), encoder=self._encoder[1],
                             cache=InversionCache())
            res = proj.invert(prep.image, progress=report, cancel=cancel)
            from ..images.domain_check import judge_inversion
            from ..images.imageio import to_uint8

            with torch.no_grad():
                rec = to_uint8(res.render(b.G))[0]
            res.domain_verdict = judge_inversion(b.domain, prep.image, rec, res.psnr)
            return res
        return work

    def confirm_off_domain(self, what: str, messages: list[str]) -> bool:
        """Tell the user plainly that a photo does not look like the domain, before its code is used;
        True = use it anyway.  (Tests patch ``QMessageBox.warning``.)"""
        B = QMessageBox.StandardButton
        r = QMessageBox.warning(self, "Photo does not look like the domain",
                                "\n\n".join(messages) + f"\n\nUse it for {what} anyway?", B.Yes | B.No, B.No)
        return r == B.Yes

    def _judged(self, results: list, what: str) -> bool:
        """Record the verdicts of these inversions; ask before using an off-domain one."""
        verdicts = [getattr(r, "domain_verdict", None) for r in results if r is not None]
        verdicts = [v for v in verdicts if v is not None]
        if verdicts:
            self.last_domain_verdicts = verdicts
        bad = [v.message() for v in verdicts if not v.ok]
        if not bad:
            return True
        self.preview.set_message("photo does not look like the domain: " + verdicts[0].summary())
        if self.confirm_off_domain(what, bad):
            return True
        self.statusBar().showMessage(f"{what}: not used (the photo does not look like the domain)", 8000)
        return False

    def invert_photo(self, path: Path, node: str) -> Job:
        return self.start_job("invert", self._inversion_fn(path), f"Inverting {path.name}",
                              done=lambda res: self._photo_inverted(res, node, path),
                              failed=lambda m: self.show_error("Photo", f"{path.name}: {m}"))

    def _photo_inverted(self, res, node: str, path: Path) -> None:
        if not self._judged([res], f"{path.name} -> {node or 'all nodes'}"):
            return
        if self._do(lambda s: s.assign_photo(node or None, res.w_plus, f"photo {path.name}")):
            how = "cached" if res.from_cache else f"{res.seconds:.1f} s"
            v = getattr(res, "domain_verdict", None)
            judged = f"; {v.summary()}" if v is not None else ""
            self.statusBar().showMessage(f"{path.name}: inverted ({res.psnr:.1f} dB PSNR, {how}) "
                                         f"-> {node or 'all nodes'}{judged}", 8000)

    def transfer_dialog(self) -> None:
        leaves = [n for n in self.session.composition.node_names if n != self.session.composition.tree.name]
        d = TransferDialog(leaves, "hair", self, current_image=self.preview.frame())
        if d.exec() != QDialog.DialogCode.Accepted:
            return
        target, reference, region = d.choice()
        self.transfer(target, reference, region)

    def transfer(self, target: str | None, reference: str, region: str) -> Job:
        ref_fn = self._inversion_fn(Path(reference))
        tgt_fn = self._inversion_fn(Path(target)) if target else None

        def work(report, cancel):
            ref = ref_fn(lambda i, n, info: report(i, 2 * n if tgt_fn else n, info), cancel)
            tgt = tgt_fn(lambda i, n, info: report(n + i, 2 * n, info), cancel) if tgt_fn else None
            return ref, tgt

        return self.start_job("invert", work, f"Transfer {region}: inverting",
                              done=lambda r: self._judged(list(r), f"the {region} transfer") and self._do(
                                  lambda s: s.transfer_region(region, r[0].w_plus,
                                                              None if r[1] is None else r[1].w_plus,
                                                              label=f"transfer from {Path(reference).name}")),
                              failed=lambda m: self.show_error("Transfer", m))

    # ============================================================== jobs
    def start_job(self, kind: str, fn, text: str, status: bool = True, *, done=None, failed=None, partial=None,
                  finished=None) -> Job:
        """Start a job of ``kind`` (a newer job of the same kind cancels the older one).  The callbacks
        are connected before the thread starts, so a job that ends at once still reports."""
        self.cancel_job(kind)
        job = Job(fn, self.dispatcher, kind)   # no Qt parent: it lives until its thread ends
        self.jobs[kind] = job
        self._running.add(job)
        job.finished.connect(lambda: self._running.discard(job))
        for sig, cb in ((job.done, done), (job.failed, failed), (job.partial, partial), (job.finished, finished)):
            if cb is not None:
                sig.connect(cb)
        if status:
            self._status_jobs.append((job, text))
            self._show_status_job()
            job.progress.connect(lambda st, tot, info, j=job:
                                 j is self.status_job() and self._job_progress(st, tot, info))

        def finished():
            if self.jobs.get(kind) is job:
                del self.jobs[kind]
            if status:
                self._status_jobs = [(j, t) for j, t in self._status_jobs if j is not job]
                self._show_status_job()
        job.finished.connect(finished)
        if status:     # background overlays are cancelled on every edit: no message for those
            job.cancelled.connect(lambda: self.statusBar().showMessage(f"{text}: cancelled", 4000))
        return job.start()

    def status_job(self) -> Job | None:
        """The job the status bar shows (the newest running one); its Cancel cancels only this job."""
        return self._status_jobs[-1][0] if self._status_jobs else None

    def _show_status_job(self) -> None:
        job = self.status_job()
        if job is None:
            self.job_bar.setVisible(False)
            self.job_cancel.setVisible(False)
            self.job_label.setText("")
            return
        self.job_label.setText(self._status_jobs[-1][1])
        self.job_bar.setRange(0, 0)
        self.job_bar.setFormat("%p%")
        self.job_bar.setVisible(True)
        self.job_cancel.setVisible(True)
        self.job_cancel.setToolTip(f"Cancel: {self._status_jobs[-1][1]}")

    def cancel_status_job(self) -> None:
        """The status bar's Cancel: the job it shows, not the others (nor the overlays)."""
        job = self.status_job()
        if job is not None:
            job.cancel()

    def _job_progress(self, step: int, total: int, info: dict) -> None:
        if total > 0:
            self.job_bar.setRange(0, total)
            self.job_bar.setValue(step)
        parts = ["%v/%m" if total > 0 else ""]
        if "psnr" in info:
            parts.append(f"{info['psnr']:.1f} dB")
        if "eta_s" in info:
            parts.append(f"~{_duration(info['eta_s'])} left")
        self.job_bar.setFormat(" · ".join(p for p in parts if p) or "%p%")
        self.job_bar.setToolTip(self.job_bar.format().replace("%v", str(step)).replace("%m", str(total)))

    def cancel_job(self, kind: str) -> None:
        job = self.jobs.get(kind)
        if job is not None:
            job.cancel()

    def cancel_jobs(self) -> None:
        for job in list(self._running):
            job.cancel()

    def wait_for_jobs(self, timeout: float = 60.0) -> bool:
        """Block until running jobs end (tests, shutdown)."""
        end = time.time() + timeout
        for job in list(self._running):
            if not job.wait(max(0.0, end - time.time())):
                return False
        return True

    # ============================================================= files
    def new_composition(self) -> bool:
        """A fresh untitled composition, as one undoable step (asks first when there are unsaved edits)."""
        if self.session is None or not self._confirm_discard("starting a new composition"):
            return False
        comp = self.session.bundle.new_composition(self.session.rng.randrange(2 ** 31))
        return self._load_here(comp, None)

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open composition or photo", "", OPEN_FILTER)
        if path:
            self.open_paths("", [path], dialog=True)

    def open_composition(self, path: Path) -> bool:
        try:
            comp = EditorSession.read_composition(path)
        except SessionError as e:
            self.show_error("Open", str(e))
            return False
        if comp is None:
            self.show_error("Open", f"{Path(path).name}: this PNG carries no sfeditor composition")
            return False
        ok = self.apply_composition(comp, Path(path), as_edit=False)
        if ok:
            self._add_recent(str(path))
        return ok

    def _fits(self, comp) -> bool:
        s = self.session
        return s is not None and comp.tree.to_dict() == s.composition.tree.to_dict() \
            and comp.domain in ("", s.bundle.domain)

    def _load_here(self, comp, path: Path | None) -> bool:
        """Open ``comp`` in the current model as one undoable step that becomes the saved state."""
        try:
            warnings = self.session.load_composition(comp, _save_path(path),
                                                     f"open {path.name}" if path else "new composition")
        except SessionError as e:
            self.show_error("Composition", str(e))
            return False
        self._changed(None)
        for w in warnings:
            self.statusBar().showMessage(f"{path.name if path else 'composition'}: {w}", 8000)
        return True

    def apply_composition(self, comp, path: Path | None, as_edit: bool) -> bool:
        """Show ``comp``.  When it fits the current model: ``as_edit`` (a dropped PNG, a recovery) restores
        it as one undoable edit; otherwise (File ▸ Open) it becomes the open file, also as one undoable
        step, after asking about unsaved edits.  A composition of another shipped domain opens that
        model (asking first: the current history cannot follow it there) and keeps its file name."""
        s = self.session
        if self._fits(comp):
            if as_edit:
                try:
                    s.restore(comp, f"restore {path.name}" if path else "restore composition")
                except SessionError as e:
                    self.show_error("Composition", str(e))
                    return False
                return True
            if not self._confirm_discard(f"opening {path.name}" if path else "opening a composition"):
                return False
            return self._load_here(comp, path)
        if comp.domain in SHIPPED:
            return self.load_model_async(domain=comp.domain, composition=comp,
                                         path=None if as_edit else path) is not None
        self.show_error("Composition", f"{path.name if path else 'composition'}: made for the model "
                        f"“{comp.domain}”; open that model first (File ▸ Open model…)")
        return False

    def save(self) -> bool:
        if self.session is None:
            return False
        if self.session.path is None:
            return self.save_as()
        return self.save_to(self.session.path)

    def save_as(self) -> bool:
        path, _ = QFileDialog.getSaveFileName(self, "Save composition", "composition.sfcomp.json",
                                              "Compositions (*.sfcomp.json)")
        return bool(path) and self.save_to(Path(path))

    def save_to(self, path: Path) -> bool:
        try:
            self.session.save(path)
        except (OSError, SessionError) as e:
            self.show_error("Save", f"{path}: {e}")
            return False
        self._add_recent(str(path))
        self._changed(None)
        self.statusBar().showMessage(f"saved {path}", 4000)
        return True

    def export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export PNG", "sfeditor.png", "PNG images (*.png)")
        if path:
            self.export_png(Path(path))

    def export_png(self, path: Path) -> bool:
        if self.last_result is not None and self.last_result.draft and self.bridge is not None:
            # a draft is on screen: export the full frame, which the worker is rendering now
            QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
            try:
                self.bridge.wait_until_idle(120.0)
                self.dispatcher.drain()
            finally:
                QApplication.restoreOverrideCursor()
            if self.last_result is not None and self.last_result.draft:
                self.show_error("Export", "the full-resolution frame is not rendered yet; export again in a moment")
                return False
        frame = self.preview.frame()
        if frame is None or self.session is None:
            self.show_error("Export", "nothing rendered yet")
            return False
        try:
            self.session.export_png(path, frame)
        except (OSError, SessionError) as e:
            self.show_error("Export", f"{path}: {e}")
            return False
        self.statusBar().showMessage(f"exported {path} (drop it back on sfeditor to restore the composition)", 6000)
        return True

    def _recent(self) -> list[str]:
        v = self.settings.value("recent", [])
        if isinstance(v, str):
            v = [v]
        return [str(x) for x in (v or [])]

    def _add_recent(self, path: str) -> None:
        items = [path] + [p for p in self._recent() if p != path]
        self.settings.setValue("recent", items[:MAX_RECENT])
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        items = self._recent()
        for p in items:
            a = self.recent_menu.addAction(p)
            a.triggered.connect(lambda _c=False, path=p: self.open_composition(Path(path)))
        self.recent_menu.setEnabled(bool(items))

    # ========================================================== autosave
    def autosave(self) -> Path | None:
        if self.session is None or not self.session.dirty:
            return None
        try:
            return self.session.autosave(self.autosave_folder)
        except OSError as e:
            self.statusBar().showMessage(f"autosave failed: {e}", 6000)
            return None

    def _offer_recovery(self) -> None:
        files = [p for p in EditorSession.recovery_files(self.autosave_folder)
                 if self.session is None or p != self.session.autosave_path(self.autosave_folder)]
        if not files:
            return
        box = QMessageBox(QMessageBox.Icon.Question, "Recover unsaved work",
                          f"sfeditor did not exit cleanly. Restore the composition autosaved at "
                          f"{time.ctime(files[0].stat().st_mtime)}?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Ignore, self)
        box.finished.connect(lambda r: self._recovery_answer(box.standardButton(box.clickedButton()), files))
        box.open()

    def _recovery_answer(self, button, files: list[Path]) -> None:
        if button == QMessageBox.StandardButton.Yes:
            self.recover_from(files[0])
        if button in (QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Discard):
            for f in files:
                f.unlink(missing_ok=True)

    def recover_from(self, path: Path) -> bool:
        try:
            comp = EditorSession.read_composition(path)
        except SessionError as e:
            self.show_error("Recovery", str(e))
            return False
        return self.apply_composition(comp, path, as_edit=True)

    # =========================================================== dialogs
    def show_error(self, title: str, text: str) -> None:
        """A non-blocking message box; the text is also kept in :attr:`errors` and the status bar."""
        self.errors.append(f"{title}: {text}")
        self.statusBar().showMessage(f"{title}: {text}", 10000)
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self._last_box = box

    #: The graph's own keys and gestures (the menu shortcuts are read from the actions themselves).
    GRAPH_SHORTCUTS = (("Click", "select a node"), ("Ctrl+click", "add a node to the selection"),
                       ("Drag a node onto another", "copy its code"),
                       ("Drop a photo on a node", "invert the photo and assign its code"),
                       ("R", "re-roll the selected nodes"), ("L", "lock / unlock"), ("C", "collapse / expand"),
                       ("Del / Backspace", "back to the seed code"), ("Arrow keys", "move the selection"),
                       ("Esc", "clear the selection"), ("F", "fit the graph"), ("+ / −", "zoom"),
                       ("Double-click", "locality heatmap"))

    def shortcut_rows(self) -> list[tuple[str, str, str]]:
        """(section, keys, what) for the shortcut table: the graph's keys, then every menu action that
        has a shortcut (read from the actions, so the table cannot disagree with them)."""
        rows = [("Graph", k, w) for k, w in self.GRAPH_SHORTCUTS]
        for menu_action in self.menuBar().actions():
            menu = menu_action.menu()
            if menu is None:
                continue
            for a in menu.actions():
                keys = a.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
                if keys and not a.isSeparator():
                    rows.append((menu.title().replace("&", ""), keys, a.text().replace("&", "").rstrip("…")))
        return rows

    def show_shortcuts(self) -> QMessageBox:
        """The shortcut list as a table (Help ▸ Keyboard shortcuts)."""
        cells, last = [], None
        for section, keys, what in self.shortcut_rows():
            if section != last:
                cells.append(f"<tr><td colspan='2' style='padding-top:8px'><b>{html.escape(section)}</b></td></tr>")
                last = section
            cells.append(f"<tr><td nowrap style='padding-right:18px'><code>{html.escape(keys)}</code></td>"
                         f"<td nowrap>{html.escape(what)}</td></tr>")
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts",
                          "<table cellspacing='0' cellpadding='2'>" + "".join(cells) + "</table>",
                          QMessageBox.StandardButton.Close, self)
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self._shortcut_box = box
        return box

    def show_about(self) -> None:
        from .. import __version__

        QMessageBox.about(self, "About sfeditor", f"sfeditor {__version__}: an editor for StyleFusion "
                          "(Kafri et al., 2022): one latent code per semantic region, fused by a tree of FusionNets.")

    def toggle_theme(self) -> None:
        self.dark = not self.dark
        apply_theme(QApplication.instance(), self.dark)
        self.preview.set_dark(self.dark)
        self.settings.setValue("dark", self.dark)

    def labelling_tool(self) -> None:
        from ..regions.cluster_sheets import ContactSheets, cluster_samples
        from .labelling import RegionLabellingDialog

        b = self.session.bundle
        if b.regions is None:
            self.show_error("Region labelling", "this model has no regions file: run "
                            "`sfeditor-train regions --generator <checkpoint> --domain NAME` (K and the rest: "
                            "--recipe FILE) first, then open it with File ▸ Open model…")
            return

        def work(report, cancel):
            imgs, labels = cluster_samples(b.G, b.regions, n=12, truncation=b.truncation, progress=report,
                                           cancel=cancel)
            return ContactSheets(imgs, labels, b.regions)          # each sheet drawn when the dialog needs it

        def show(sheets):
            d = RegionLabellingDialog(b.regions, sheets, self)
            d.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            d.open()
            self._labelling = d

        self.start_job("sheets", work, "Rendering cluster contact sheets…", done=show,
                       failed=lambda m: self.show_error("Region labelling", m))

    # ====================================================== real models (issue 40)
    encoder_override: str | None = None      # `sfeditor gui --encoder FILE`: this run only

    def photo_encoder_key(self, b: ModelBundle | None = None) -> str:
        from ..model.registry import encoder_domain

        b = b or self.session.bundle
        return f"photo-encoder/{encoder_domain(b.domain, b.generator_source) or b.domain}"

    def photo_encoder_path(self, b: ModelBundle | None = None):
        """(path or None, where from): --encoder, else this domain's setting, else the e4e installed for it
        (``sfeditor models``), else the shipped toy encoder."""
        from ..images.encoders import photo_encoder_path

        b = b or self.session.bundle
        chosen = self.encoder_override or self.settings.value(self.photo_encoder_key(b), "", type=str) or None
        return photo_encoder_path(b.domain, b.generator_source, chosen)

    def _load_photo_encoder(self, b: ModelBundle):       # on the job's thread
        from ..images.encoders import load_encoder

        path, _how = self.photo_encoder_path(b)
        return load_encoder(path, G=b.G, map_location=b.device) if path is not None else None

    def set_photo_encoder(self, path: str | None) -> None:
        """Remember ``path`` as the photo encoder of the current model's domain (None: back to the default)."""
        key = self.photo_encoder_key()
        if path:
            self.settings.setValue(key, str(path))
        else:
            self.settings.remove(key)
        self._encoder = None                  # read again on the next photo
        found, how = self.photo_encoder_path()
        self.statusBar().showMessage(f"Photo encoder: {found.name if found else 'none (mean w start)'} ({how})", 6000)

    def choose_photo_encoder(self) -> None:
        current, how = self.photo_encoder_path()
        path, _ = QFileDialog.getOpenFileName(
            self, f"Photo encoder (now: {current.name if current else 'none'}, {how}); cancel keeps it",
            str(current.parent) if current else "", "Encoders (*.pt *.pth);;All files (*)")
        if path:
            self.set_photo_encoder(path)

    def get_models_dialog(self):
        from .models_dialog import ModelsDialog

        d = ModelsDialog(self, dispatcher=self.dispatcher)
        d.openRequested.connect(lambda spec: self.load_model_async(**spec))
        d.show()
        self._models_dialog = d
        return d

    # ============================================================= close
    def showEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        super().showEvent(event)
        if not self._laid_out:             # first show: the default layout for this window size
            self._laid_out = True
            QTimer.singleShot(0, self.default_layout)     # once the window has its size

    def default_layout(self) -> None:
        """Inspector as narrow as its content allows, the rest split 2:3 between graph and preview."""
        self.resizeDocks([self._dock], [max(self._dock.minimumWidth(), 310)], Qt.Orientation.Horizontal)
        total = sum(self._split.sizes()) or self.width()
        self._split.setSizes([round(total * 0.4), total - round(total * 0.4)])
        QTimer.singleShot(0, lambda: self.graph._auto_fit and self.graph.fit())

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        if not self._confirm_discard("closing"):
            event.ignore()
            return
        self.shutdown()
        event.accept()

    def ask_unsaved(self, action: str) -> str:
        """Ask what to do with unsaved edits before ``action``: "save", "discard" or "cancel".
        (The one place the window asks; tests replace the answer by patching ``QMessageBox.question``.)"""
        B = QMessageBox.StandardButton
        name = self.session.path.name if self.session is not None and self.session.path else "untitled"
        r = QMessageBox.question(self, "Unsaved changes",
                                 f"The composition “{name}” has unsaved changes. Save them before {action}?",
                                 B.Save | B.Discard | B.Cancel, B.Save)
        return {B.Save: "save", B.Discard: "discard"}.get(r, "cancel")

    def _confirm_discard(self, action: str = "closing") -> bool:
        """True when nothing unsaved would be lost, or the user saved or chose to discard it."""
        if self.session is None or not self.session.dirty:
            return True
        answer = self.ask_unsaved(action)
        if answer == "save":
            return self.save()
        return answer == "discard"

    def _history_mark(self) -> tuple:
        """Identifies the current point of the edit history (to notice edits made since a question)."""
        s = self.session
        if s is None:
            return (None,)
        st = s.stack
        return (id(s), id(st), st.dropped + len(st), id(st._done[-1]) if st._done else None, s.dirty)

    def shutdown(self) -> None:
        """Stop workers and remove this session's recovery file (a clean exit)."""
        self._autosave_timer.stop()
        self.cancel_jobs()
        self.wait_for_jobs(10.0)
        if self.bridge is not None:
            self.bridge.close()
        if self.session is not None:
            self.session.discard_autosave(self.autosave_folder)
