"""Issue 39: the editor never discards unsaved work without asking (domain switch, File ▸ Open, New,
Quit, dropping a composition of another domain), Cancel keeps the state AND the undo history, every load
is one undoable step, the undo cap is reported and undoing past it stays modified, and a clean exit
removes the recovery file even after a model change.  Real widgets; only the message box's answer is
patched (``QMessageBox.question``), so a test fails if a path discards without going through it."""
from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QFileDialog, QMessageBox  # noqa: E402

from sfeditor.editor.session import EditorSession, load_bundle
from sfeditor.ui.main_window import MainWindow  # noqa: E402

WAIT = 60_000
B = QMessageBox.StandardButton
pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(scope="module")
def cars_bundle():
    return load_bundle("toy-cars", device="cpu")


class Answers:
    """Stands in for the user at ``QMessageBox.question``: records each question, gives ``answer``."""

    def __init__(self):
        self.answer = B.Cancel
        self.asked: list[str] = []

    def __call__(self, parent, title, text, *args, **kw):
        self.asked.append(text)
        return self.answer


@pytest.fixture
def answers(monkeypatch):
    a = Answers()
    monkeypatch.setattr(QMessageBox, "question", a)
    return a


@pytest.fixture
def win(qtbot, tmp_path, tiny_bundle, answers):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(tiny_bundle, settings=settings, autosave_folder=tmp_path / "autosave", check_recovery=False)
    qtbot.addWidget(w)
    w.session.rng = random.Random(0)
    qtbot.waitUntil(lambda: w.frames_shown >= 1, timeout=WAIT)
    yield w
    answers.answer = B.Discard                  # teardown closes the window: never block
    w.shutdown()


def edit_twice(win):
    win.graph.rerollRequested.emit("a")
    win.graph.rerollRequested.emit("b")
    assert win.session.dirty and len(win.session.stack) == 2
    return win.session.composition.snapshot()


def assert_kept(win, state, session, depth=2):
    """Cancel kept everything: same session, same composition, same undo history (and it still undoes)."""
    assert win.session is session and win.session.composition.same_as(state)
    assert len(win.session.stack) == depth and win.session.dirty
    assert "*" in win.windowTitle()
    assert win.session.undo() and not win.session.composition.same_as(state)
    assert win.session.redo() and win.session.composition.same_as(state)


def test_domain_switch_asks_and_cancel_keeps_state_and_history(qtbot, win, answers, cars_bundle):
    state, session = edit_twice(win), win.session
    box = win.domain_box
    before = box.currentText()
    answers.answer = B.Cancel
    box.activated.emit(box.findText("toy-cars"))             # the toolbar's domain drop-down
    assert len(answers.asked) == 1 and "switching to toy-cars" in answers.asked[0]
    assert "model" not in win.jobs and box.currentText() == before
    assert_kept(win, state, session)
    answers.answer = B.Discard
    box.activated.emit(box.findText("toy-cars"))
    assert len(answers.asked) == 2
    qtbot.waitUntil(lambda: win.session.bundle.domain == "toy-cars", timeout=WAIT)
    assert not win.session.dirty


def test_file_open_asks_and_is_one_undoable_step(qtbot, win, answers, tmp_path, monkeypatch):
    saved_path = tmp_path / "kept.sfcomp.json"
    win.save_to(saved_path)
    saved = win.session.composition.snapshot()
    state, session = edit_twice(win), win.session
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(saved_path), ""))
    answers.answer = B.Cancel
    win.open_dialog()
    assert len(answers.asked) == 1 and "opening kept.sfcomp.json" in answers.asked[0]
    assert_kept(win, state, session)
    answers.answer = B.Discard
    win.open_dialog()
    assert len(answers.asked) == 2
    assert win.session.composition.same_as(saved) and not win.session.dirty
    assert win.session.path == saved_path and win.windowTitle().startswith("kept.sfcomp.json —")
    assert len(win.session.stack) == 3                        # the open is one step on top of the edits
    assert win.session.undo() and win.session.composition.same_as(state) and win.session.dirty


def test_file_open_save_answer_saves_first(qtbot, win, answers, tmp_path, monkeypatch):
    win.save_to(tmp_path / "mine.sfcomp.json")
    other = tmp_path / "other.sfcomp.json"
    win.session.composition.save(other)
    state = edit_twice(win)
    answers.answer = B.Save
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(other), ""))
    win.open_dialog()
    assert len(answers.asked) == 1
    assert EditorSession.read_composition(tmp_path / "mine.sfcomp.json").same_as(state)   # saved, then opened
    assert win.session.path == other


def test_new_asks_and_is_undoable(qtbot, win, answers):
    state, session = edit_twice(win), win.session
    answers.answer = B.Cancel
    assert not win.new_composition()
    assert len(answers.asked) == 1 and "new composition" in answers.asked[0]
    assert_kept(win, state, session)
    answers.answer = B.Discard
    assert win.new_composition()
    assert not win.session.composition.same_as(state) and not win.session.dirty and win.session.path is None
    assert win.session.undo() and win.session.composition.same_as(state)


def test_quit_asks_and_cancel_keeps_the_window(qtbot, win, answers, tmp_path):
    state, session = edit_twice(win), win.session
    win.autosave()
    answers.answer = B.Cancel
    assert not win.close()
    assert len(answers.asked) == 1 and "closing" in answers.asked[0]
    assert_kept(win, state, session)
    assert EditorSession.recovery_files(tmp_path / "autosave")          # still there: not a clean exit
    answers.answer = B.Discard
    assert win.close()
    assert EditorSession.recovery_files(tmp_path / "autosave") == []    # a clean exit removes it


def test_clean_window_switches_without_asking(qtbot, win, answers):
    win.new_composition()
    win.switch_domain("toy-cars")
    assert answers.asked == []
    qtbot.waitUntil(lambda: win.session.bundle.domain == "toy-cars", timeout=WAIT)


def test_drop_of_another_domains_png_asks_and_json_keeps_its_path(qtbot, win, answers, tmp_path, cars_bundle):
    cars = EditorSession(cars_bundle)
    png = cars.export_png(tmp_path / "car.png", np.zeros((8, 8, 3), np.uint8))
    js = tmp_path / "car.sfcomp.json"
    cars.composition.save(js)
    state, session = edit_twice(win), win.session
    answers.answer = B.Cancel
    win.graph.filesDropped.emit("", [str(png)])
    assert len(answers.asked) == 1 and "switching to toy-cars" in answers.asked[0]
    assert "model" not in win.jobs
    assert_kept(win, state, session)
    answers.answer = B.Discard
    win.open_composition(js)
    qtbot.waitUntil(lambda: win.session.bundle.domain == "toy-cars", timeout=WAIT)
    assert win.session.composition.same_as(cars.composition)
    assert win.session.path == js and win.windowTitle().startswith("car.sfcomp.json —")     # name kept
    # a composition PNG of the current domain is one undoable step (no question: nothing is lost)
    win.graph.rerollRequested.emit(win.session.composition.leaves[0])
    n, depth = len(answers.asked), len(win.session.stack)
    win.graph.filesDropped.emit("", [str(png)])
    assert len(answers.asked) == n and len(win.session.stack) == depth + 1
    assert win.session.composition.same_as(cars.composition)
    assert win.session.stack.undo_text == "restore car.png"
    assert win.session.undo() and not win.session.composition.same_as(cars.composition)


def test_undo_cap_is_reported_and_past_it_stays_modified(qtbot, win, answers, tmp_path):
    win.session.stack.limit = 5
    start = win.session.composition.snapshot()
    assert not win.session.dirty
    for i in range(7):
        win.inspector.seedChanged.emit("a", 1000 + i)
    assert "undo history full (5 steps)" in win.statusBar().currentMessage()
    while win.session.undo():
        pass
    assert not win.session.composition.same_as(start)
    assert win.session.dirty and "*" in win.windowTitle()
    assert win.autosave() is not None                    # still autosaved
    answers.answer = B.Cancel
    assert not win.close() and len(answers.asked) == 1  # and quitting asks


def test_recovery_file_removed_after_a_model_change(qtbot, win, answers, tmp_path, tiny_bundle):
    from sfeditor.model.checkpoints import save_generator

    save_generator(tiny_bundle.G, tmp_path / "g.pt")
    edit_twice(win)
    assert win.autosave() is not None
    answers.answer = B.Discard
    job = win.load_model_async(domain="mine", generator=str(tmp_path / "g.pt"))
    qtbot.waitUntil(lambda: not job.is_running() and win.session.bundle.domain == "mine", timeout=WAIT)
    assert EditorSession.recovery_files(tmp_path / "autosave") == []     # the discarded work's file went
    win.graph.rerollRequested.emit(win.session.composition.leaves[0])
    assert win.autosave() is not None
    win.shutdown()
    assert EditorSession.recovery_files(tmp_path / "autosave") == []


def test_edits_during_a_model_load_are_asked_about_again(qtbot, win, answers, tmp_path, tiny_bundle):
    from sfeditor.model.checkpoints import save_generator

    save_generator(tiny_bundle.G, tmp_path / "g.pt")
    edit_twice(win)
    answers.answer = B.Discard
    job = win.load_model_async(domain="mine", generator=str(tmp_path / "g.pt"))
    win.graph.rerollRequested.emit("c")                  # made while the model loads
    state = win.session.composition.snapshot()
    answers.answer = B.Cancel
    qtbot.waitUntil(lambda: not job.is_running() and len(answers.asked) == 2, timeout=WAIT)
    assert win.session.bundle.domain == "tiny" and win.session.composition.same_as(state)
