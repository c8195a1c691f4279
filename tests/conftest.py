"""Every Qt test runs headless unless the caller chose a platform (``QT_QPA_PLATFORM``).

``no_leaks``: a test using it fails when it leaves a visible top-level widget or a running
sfeditor worker thread (jobs, render services, QThreads) behind.  Request it before ``qtbot``
(or through ``pytestmark = pytest.mark.usefixtures("no_leaks")``) so its check runs after
pytest-qt has closed the test's widgets.
"""
import os
import sys
import threading
from pathlib import Path

import pytest

# shared test helpers (tiny generators, checkpoint writers) live in tests/ beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

#: how long a worker may take to notice its cancel token after the window shut down (generous: busy CPUs)
THREAD_GRACE_S = 60.0


def _workers() -> set:
    return {t for t in threading.enumerate() if t.name.startswith("sfeditor-") and t.is_alive()}


def _qthreads_running(app) -> list:
    from PySide6.QtCore import QThread

    return [t for t in app.findChildren(QThread) if t.isRunning()] if app is not None else []


@pytest.fixture
def no_leaks():
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    shown_before = {id(w) for w in app.topLevelWidgets() if w.isVisible()} if app is not None else set()
    threads_before = _workers()
    yield
    app = QApplication.instance()
    problems = []
    if app is not None:
        app.processEvents()
        left = [w for w in app.topLevelWidgets() if w.isVisible() and id(w) not in shown_before]
        problems += [f"top-level widget left open: {type(w).__name__} {w.windowTitle()!r}" for w in left]
        for w in left:
            w.hide()
        problems += [f"QThread still running: {t!r}" for t in _qthreads_running(app)]
    for t in _workers() - threads_before:
        t.join(THREAD_GRACE_S)
        if t.is_alive():
            problems.append(f"worker thread still running: {t.name}")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(autouse=True)
def _no_unanswered_message_box(monkeypatch):
    """A test that opens a QMessageBox it did not answer fails (instead of hanging on a modal dialog
    offscreen, or crashing when the box outlives its window). Tests answer one by patching
    ``QMessageBox.warning`` & co., ``QMessageBox.exec`` or the window's ``ask_*`` hooks themselves."""
    widgets = sys.modules.get("PySide6.QtWidgets")
    if widgets is None:
        yield
        return
    box, calls = widgets.QMessageBox, []

    def unanswered(kind):
        def ask(parent, title, text, *args, **kwargs):
            calls.append(f"{kind} {title!r}")
            return box.StandardButton.Cancel
        return staticmethod(ask)

    for kind in ("warning", "question", "critical", "information"):
        monkeypatch.setattr(box, kind, unanswered(kind))

    def exec_(self, *args):
        calls.append(f"message box {self.windowTitle()!r}")
        return int(box.StandardButton.Cancel.value)
    monkeypatch.setattr(box, "exec", exec_)
    yield
    if calls:
        pytest.fail("the test left a message box unanswered: " + "; ".join(calls))
