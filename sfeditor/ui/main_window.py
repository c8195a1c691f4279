"""The sfeditor main window: node graph, live preview, inspector, edits, photos, files.

Every user intent becomes one :class:`sfeditor.editor.session.EditorSession` call (one
undo entry); the window re-renders through a newest-wins worker
(:class:`~sfeditor.ui.workers.PreviewBridge`) and runs long work (inversion,
heatmaps, GANSpace, model loading) as cancellable :class:`~sfeditor.ui.workers.Job`
objects with progress in the status bar.  No math lives here.

This module builds the window (docks, menus, toolbar) and handles the model and edits; its other
parts are mixins, one module each: overlays (``window_overlays``), photos (``window_photos``), jobs
(``window_jobs``), files and autosave (``window_files``), real models (``window_models``).
"""
from __future__ import annotations

import html
import os
import time
from pathlib import Path

import numpy as np
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
from .workers import Dispatcher, Job, PreviewBridge, gui_thread_gc

from .window_common import MAX_RECENT, AUTOSAVE_MS, _save_path, _device_text
from .window_overlays import OverlaysMixin
from .window_photos import PhotosMixin
from .window_jobs import JobsMixin
from .window_files import FilesMixin
from .window_models import ModelsMixin

__all__ = ["MainWindow", "OpenModelDialog"]
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


class MainWindow(OverlaysMixin, PhotosMixin, JobsMixin, FilesMixin, ModelsMixin, QMainWindow):
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
