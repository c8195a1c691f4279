"""Files: open, save, export, recent files, autosave and recovery (never losing work).

A part of :class:`sfeditor.ui.main_window.MainWindow` (a mixin: its methods use the window's widgets
and session); views only, the work itself is in the core."""
from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QMessageBox, QApplication

from ..domains import SHIPPED
from ..editor.session import EditorSession, SessionError
from .window_common import OPEN_FILTER, MAX_RECENT, _save_path


class FilesMixin:
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
