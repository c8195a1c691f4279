"""*File ▸ Get models…*: the official model files (:mod:`sfeditor.model.registry`) in a table, with download
(licence first, progress, cancel, resume), registration of a file fetched by hand, removal, and
"Open in editor" for an installed generator.  All checking and conversion happens in the core on a
worker thread; this view only shows it.
"""
from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QFileDialog, QHBoxLayout, QLabel, QMessageBox,
                               QProgressDialog, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..model import registry as M
from .workers import Dispatcher, Job

__all__ = ["ModelsDialog"]

COLUMNS = ("Name", "Kind", "Domain", "Status", "Size", "Licence", "Source")


class ModelsDialog(QDialog):
    """The known and installed model files; downloads run on a worker thread with a cancellable progress dialog."""

    openRequested = Signal(object)        # {"generator", "hierarchy", "domain"} for MainWindow.load_model_async
    jobEnded = Signal(str)                # "done", "failed" or "cancelled" (tests, scripts)

    def __init__(self, parent: QWidget | None = None, *, dispatcher: Dispatcher | None = None,
                 base_url: str | None = None):
        super().__init__(parent)
        self.setWindowTitle("Get models")
        self.resize(960, 460)
        self.dispatcher = dispatcher or Dispatcher(self)
        self.base_url = base_url
        self.job: Job | None = None
        self.progress: QProgressDialog | None = None
        self.last_error: str | None = None
        self.rows: list[dict] = []

        lay = QVBoxLayout(self)
        self.where = QLabel()
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.where)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        lay.addWidget(self.table, 1)
        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.details)
        self.status = QLabel()
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        row = QHBoxLayout()
        self.download_button = QPushButton("&Download")
        self.register_button = QPushButton("&Register file…")
        self.open_button = QPushButton("&Open in editor")
        self.remove_button = QPushButton("Re&move")
        close = QPushButton("Close")
        for b in (self.download_button, self.register_button, self.open_button, self.remove_button):
            row.addWidget(b)
        row.addStretch(1)
        row.addWidget(close)
        lay.addLayout(row)
        self.download_button.clicked.connect(lambda: self.download(self.selected()))
        self.register_button.clicked.connect(self._browse_register)
        self.open_button.clicked.connect(lambda: self.open_selected())
        self.remove_button.clicked.connect(lambda: self.remove(self.selected()))
        close.clicked.connect(self.close)
        self.refresh()

    # ------------------------------------------------------------ table
    def refresh(self) -> None:
        keep = self.selected()
        try:
            reg = M.Registry()
            self.rows = M.status_rows(reg)
            self.where.setText(f"Files go to <code>{reg.root}</code> (set SFEDITOR_CACHE to move it).")
        except M.ModelError as e:
            self.rows = []
            self._error(str(e))
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            state = "installed" if r["installed"] else ("download" if r["url"] else "fetch by hand")
            for j, text in enumerate((r["name"], r["kind"], r["domain"], state, r["size_text"], r["licence"],
                                      r["source"])):
                item = QTableWidgetItem(text)
                item.setToolTip(r["description"])
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        if keep:
            self.select(keep)
        self._selection_changed()

    def select(self, name: str) -> None:
        for i, r in enumerate(self.rows):
            if r["name"] == name:
                self.table.selectRow(i)
                return

    def selected(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.rows[rows[0].row()]["name"] if rows and rows[0].row() < len(self.rows) else None

    def _row(self, name: str | None) -> dict | None:
        return next((r for r in self.rows if r["name"] == name), None)

    def _selection_changed(self) -> None:
        r = self._row(self.selected())
        busy = self.job is not None and self.job.is_running()
        self.download_button.setEnabled(bool(r and r["url"] and not r["installed"]) and not busy)
        self.register_button.setEnabled(bool(r and not r["installed"]) and not busy)
        self.open_button.setEnabled(bool(r and r["installed"] and r["kind"] == "generator"))
        self.remove_button.setEnabled(bool(r and r["installed"]) and not busy)
        if r is None:
            self.details.setText("Select a file.")
            return
        lines = [f"<b>{r['name']}</b>: {r['description']}. Licence: {r['licence']}. Source: {r['source']}"]
        rec = r["record"]
        if rec:
            lines.append(f"Installed as {rec['file']} ({rec['format']}). SHA-256 of the "
                         f"{'download' if r['url'] else 'registered file'}: <code>{rec['source_sha256']}</code>")
        elif r["url"]:
            lines.append(f"Direct download: {r['url']}")
        else:
            lines.append(r["how_to_get"] + " (or use Register file… here)")
        self.details.setText("<br>".join(lines))

    # ----------------------------------------------------------- actions
    def ask_licence(self, m: M.KnownModel) -> bool:
        """Show the licence; True if the user accepts it."""
        box = QMessageBox(QMessageBox.Icon.Question, f"Licence of {m.name}",
                          f"{m.licence}\n\n{m.licence_text}\n\nAccept this licence and download?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        return box.exec() == QMessageBox.StandardButton.Yes

    def download(self, name: str | None) -> Job | None:
        """Start downloading ``name`` (after the licence); None if nothing was started."""
        r = self._row(name)
        if r is None or not r["url"]:
            self._error(f"{name}: {r['how_to_get']}" if r else "Select a file to download.")
            return None
        m = M.KNOWN[name]
        reg = M.Registry()
        if not reg.accepted(m.licence):
            if not self.ask_licence(m):
                self.status.setText(f"{name}: licence not accepted; nothing downloaded.")
                return None
            reg.accept(m.licence)
        base = self.base_url

        def work(report, cancel):
            return M.download(m, base_url=base, progress=report, cancel=cancel)
        return self._start(work, f"Downloading {name}", name)

    def _browse_register(self) -> None:
        name = self.selected()
        if not name:
            return
        path, _ = QFileDialog.getOpenFileName(self, f"File for {name}", "",
                                              "Model files (*.pt *.pth *.pkl *.json);;All files (*)")
        if path:
            self.register(name, path)

    def register(self, name: str, path: str) -> Job:
        """Validate (and convert / copy) a file the user fetched, on a worker thread."""
        return self._start(lambda report, cancel: M.register(name, path, progress=report, cancel=cancel),
                           f"Checking {name}", name)

    def remove(self, name: str | None) -> None:
        if name and M.remove(name):
            self.status.setText(f"{name}: removed from the cache.")
        self.refresh()

    def open_selected(self) -> None:
        name = self.selected()
        try:
            spec = M.open_spec(name)
        except M.ModelError as e:
            self._error(str(e))
            return
        self.openRequested.emit(spec)

    # -------------------------------------------------------------- jobs
    def _start(self, work, text: str, name: str) -> Job:
        self.last_error = None
        self.job = job = Job(work, self.dispatcher, "models")
        self.progress = dlg = QProgressDialog(text, "Cancel", 0, 0, self)
        dlg.setWindowTitle("Get models")
        dlg.setMinimumDuration(0)
        dlg.setAutoClose(False)
        dlg.setAutoReset(False)
        dlg.canceled.connect(job.cancel)
        job.progress.connect(lambda done, total, info: self._progress(text, done, total, info))
        job.done.connect(lambda rec: self._ended("done", f"{name}: installed. SHA-256 of the "
                                                         f"{'download' if M.KNOWN.get(name) and M.KNOWN[name].url else 'file'}: "
                                                         f"{rec['source_sha256']}"))
        job.failed.connect(lambda msg: self._ended("failed", msg))
        job.cancelled.connect(lambda: self._ended("cancelled", f"{name}: cancelled; a download resumes where it "
                                                                f"stopped when you start it again."))
        self._selection_changed()
        dlg.show()
        return job.start()

    def _progress(self, text: str, done: int, total: int, info: dict) -> None:
        dlg = self.progress
        if dlg is None:
            return
        stage = info.get("stage", "")
        if stage == "downloading" and total > 0:
            dlg.setRange(0, 1000)
            dlg.setValue(min(1000, int(1000 * done / total)))
            dlg.setLabelText(f"{text}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")
        else:
            dlg.setRange(0, 0)
            dlg.setLabelText(f"{text}: {stage}…" if stage else text)

    def _ended(self, how: str, message: str) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress.deleteLater()
            self.progress = None
        if how == "failed":
            self._error(message)
        else:
            self.status.setText(message)
        self.refresh()
        self.jobEnded.emit(how)

    def _error(self, message: str) -> None:
        self.last_error = message
        self.status.setText(f"<span style='color:#d9534f'>{html.escape(message)}</span>")

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        if self.job is not None and self.job.is_running():
            self.job.cancel()           # the .part stays: the next download resumes it
        super().closeEvent(event)
