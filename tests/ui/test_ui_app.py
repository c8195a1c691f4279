"""The main window end to end (pytest-qt, offscreen): render worker, graph intents, undo, files, photos,
overlays, edits, autosave.  Tiny random models keep it fast; one test opens the shipped toy domains."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings  # noqa: E402

from sfeditor.images.imageio import save_png, to_uint8  # noqa: E402
from sfeditor.editor.render_service import RenderRequest, render_request  # noqa: E402
from sfeditor.ui.main_window import MainWindow  # noqa: E402

WAIT = 30_000


def make_window(qtbot, tmp_path, bundle, **kw):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(bundle, settings=settings, autosave_folder=tmp_path / "autosave", check_recovery=False, **kw)
    qtbot.addWidget(win)
    win.session.rng = random.Random(0)
    win.ask_unsaved = lambda action: "discard"     # never block on a message box (tests of asking patch it)
    win.confirm_off_domain = lambda what, messages: True
    qtbot.waitUntil(lambda: win.frames_shown >= 1, timeout=WAIT)
    return win


def settle(qtbot, win):
    """Wait until the worker is idle and the newest frame is on screen."""
    qtbot.wait(1)                                   # let the coalescing timer submit
    assert win.bridge.wait_until_idle(30)
    qtbot.waitUntil(lambda: win.last_result is not None
                    and win.last_result.stamp == win.bridge.service.latest.stamp, timeout=WAIT)
    qtbot.wait(1)


def direct_render(win) -> np.ndarray:
    b = win.session.bundle
    req = RenderRequest(win.session.composition.snapshot(), 0)
    return render_request(b.G, b.hierarchy, req).image


@pytest.fixture
def win(qtbot, tmp_path, tiny_bundle):
    w = make_window(qtbot, tmp_path, tiny_bundle)
    yield w
    w.shutdown()


def test_first_frame_thumbnails_and_status(qtbot, win):
    settle(qtbot, win)
    assert np.array_equal(win.preview.frame(), direct_render(win))
    qtbot.waitUntil(lambda: len(win.thumbnails) == len(win.session.composition.node_names), timeout=WAIT)
    assert "ms" in win.frame_label.text() and win.device_label.text().startswith(("CPU", "GPU"))
    assert win.graph.node_names() == win.session.composition.node_names
    # the inspector says what the selected node's FusionNet does with its two inputs
    win.graph.select("left")
    qtbot.waitUntil(lambda: win.inspector.node() == "left", timeout=WAIT)
    note = win.inspector.net_info.text()
    assert note.startswith("FusionNet channels:") and " from a, " in note and "from b" in note
    assert note == win.session.bundle.blend_note("left")
    win.graph.select("a")
    qtbot.waitUntil(lambda: win.inspector.node() == "a", timeout=WAIT)
    assert win.inspector.net_info.text() == ""          # a leaf has no net


def test_graph_intents_are_undoable_and_rendered(qtbot, win):
    settle(qtbot, win)
    first = win.preview.frame().copy()
    seed_a = win.session.composition.state("a").seed
    win.graph.rerollRequested.emit("a")
    settle(qtbot, win)
    assert win.session.composition.state("a").seed != seed_a
    assert not np.array_equal(win.preview.frame(), first)
    assert np.array_equal(win.preview.frame(), direct_render(win))
    win.undo_action.trigger()
    settle(qtbot, win)
    assert np.array_equal(win.preview.frame(), first)
    win.graph.lockRequested.emit("b", True)
    win.graph.copyRequested.emit("c", "d")
    win.graph.collapseRequested.emit("left", True)
    settle(qtbot, win)
    comp = win.session.composition
    assert comp.state("b").locked and comp.state("d").seed == comp.state("c").seed and comp.state("left").collapsed
    assert np.array_equal(win.preview.frame(), direct_render(win))
    assert len(win.session.stack) == 3


def test_rapid_edits_end_on_the_final_frame(qtbot, win):
    """Stress: many edits in a burst; stale frames are dropped and the last frame shows the last state."""
    settle(qtbot, win)
    before = win.bridge.service.renders
    for i in range(60):
        win.inspector.seedChanged.emit("a", 1000 + i)
        if i % 7 == 0:
            qtbot.wait(2)
        win.inspector.truncationChanged.emit(0.3 + 0.01 * i)
    win.inspector.truncationReleased.emit()
    settle(qtbot, win)
    assert win.session.composition.state("a").seed == 1059
    assert np.array_equal(win.preview.frame(), direct_render(win))
    assert win.bridge.service.renders - before < 60          # coalesced / superseded
    assert win.session.stack.undo_text.startswith("set truncation")   # slider drag merged into one entry


def test_save_export_and_drop_png_restores(qtbot, win, tmp_path):
    settle(qtbot, win)
    win.save_to(tmp_path / "one.sfcomp.json")
    assert not win.session.dirty and str(tmp_path / "one.sfcomp.json") in win._recent()
    assert win.export_png(tmp_path / "one.png")
    saved = win.session.composition.snapshot()
    win.graph.randomizeRequested.emit()
    settle(qtbot, win)
    assert not win.session.composition.same_as(saved)
    win.graph.filesDropped.emit("", [str(tmp_path / "one.png")])
    settle(qtbot, win)
    assert {n: s.seed for n, s in win.session.composition.nodes.items()} == {n: s.seed for n, s in saved.nodes.items()}
    assert win.session.stack.undo_text.startswith("restore")    # restoring is undoable: nothing lost
    assert win.open_composition(tmp_path / "one.sfcomp.json")
    assert not win.session.dirty


def test_bad_files_give_messages_not_crashes(qtbot, win, tmp_path):
    settle(qtbot, win)
    n = len(win.errors)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.sfcomp.json").write_text('{"format": "sfeditor-composition", "version": 99}')
    win.graph.filesDropped.emit("a", [str(tmp_path / "notes.txt")])
    win.graph.filesDropped.emit("", [str(tmp_path / "bad.sfcomp.json")])
    win.graph.filesDropped.emit("a", [str(tmp_path / "junk.png")])      # photo path: inversion job fails cleanly
    qtbot.waitUntil(lambda: len(win.errors) >= n + 3, timeout=WAIT)
    text = "\n".join(win.errors[n:])
    assert "notes.txt" in text and "bad.sfcomp.json" in text and "junk.png" in text
    assert not win.load_direction(str(tmp_path / "notes.txt"))
    assert win.isVisible() or True     # still alive: the next edit works
    win.graph.rerollRequested.emit("a")
    settle(qtbot, win)


def test_photo_drop_inverts_and_assigns(qtbot, win, tmp_path):
    settle(qtbot, win)
    G = win.session.bundle.G
    with torch.no_grad():
        img = to_uint8(G.synthesis(G.styles(G.sample_w(1, seed=77, truncation=0.5))))[0]
    save_png(tmp_path / "photo.png", img)
    win.graph.filesDropped.emit("left", [str(tmp_path / "photo.png")])
    qtbot.waitUntil(lambda: win.session.composition.state("left").code is not None, timeout=60_000)
    comp = win.session.composition
    assert {n for n, s in comp.nodes.items() if s.code is not None} == {"left", "a", "b"}
    assert win.session.stack.undo_text.startswith("photo photo.png")


def test_locality_heatmap_overlay_is_progressive(qtbot, win):
    settle(qtbot, win)
    seen = []
    win.preview.set_heatmap = (lambda orig: (lambda values, **kw: (seen.append(values.copy()), orig(values, **kw))))(
        win.preview.set_heatmap)
    win.graph.heatmapRequested.emit("a")
    qtbot.waitUntil(lambda: len(seen) >= 4 and "overlay" not in win.jobs, timeout=WAIT)
    assert win.preview.overlay_mode() == "heatmap"
    assert seen[-1].shape == (16, 16) and seen[-1].max() > 0
    assert win.selected() == ["a"]


def test_direction_edit_preview_apply_and_scope(qtbot, win, tmp_path):
    settle(qtbot, win)
    G = win.session.bundle.G
    np.save(tmp_path / "smile.npy", np.random.default_rng(0).normal(size=(1, G.style_dim)).astype(np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    assert not win.load_direction(str(tmp_path / "bad.npy"))
    assert win.load_direction(str(tmp_path / "smile.npy"))
    win.graph.select("right")
    before = win.preview.frame().copy()
    win.edit_panel.set_strength(3.0)
    settle(qtbot, win)
    assert not np.array_equal(win.preview.frame(), before)          # live preview
    assert all(s.code is None for s in win.session.composition.nodes.values())  # nothing applied yet
    win.edit_panel.apply_btn.click()
    settle(qtbot, win)
    edited = {n for n, s in win.session.composition.nodes.items() if s.code is not None}
    assert edited == {"right", "c", "d"} and win.edit_panel.strength() == 0.0
    assert np.array_equal(win.preview.frame(), direct_render(win))


def test_ganspace_directions_listed(qtbot, win):
    win.compute_pca()
    qtbot.waitUntil(lambda: win.edit_panel.list.count() == 16, timeout=WAIT)   # min(20, w_dim)
    assert win.edit_panel.list.item(0).text().startswith("PC 0")


def test_autosave_and_recovery(qtbot, tmp_path, tiny_bundle):
    w1 = make_window(qtbot, tmp_path, tiny_bundle)
    w1.graph.rerollRequested.emit("c")
    path = w1.autosave()
    assert path is not None and path.exists()
    state = w1.session.composition.snapshot()
    # a crash: the recovery file stays; the next window restores it as an undoable edit
    w2 = make_window(qtbot, tmp_path, tiny_bundle)
    assert w2.recover_from(path)
    assert w2.session.composition.state("c").seed == state.state("c").seed
    w1.shutdown()
    assert not path.exists()                     # a clean exit removes its own recovery file
    w2.shutdown()


@pytest.mark.slow
def test_shipped_domains_masks_and_switch(qtbot, tmp_path):
    win = make_window(qtbot, tmp_path, None, domain="toy-faces")
    assert win.session.bundle.domain == "toy-faces"
    assert "hair" in win.graph.node_names()
    assert "mixture of 64 Gaussians" in win.model_info.text()
    win.preview.set_overlay_mode("masks")
    qtbot.waitUntil(lambda: "overlay" not in win.jobs and win.preview.overlay_mode() == "masks", timeout=WAIT)
    assert win.export_png(tmp_path / "faces.png")
    faces_seeds = {n: st.seed for n, st in win.session.composition.nodes.items()}
    win.labelling_tool()                              # contact sheets rendered in a job, then the dialog
    qtbot.waitUntil(lambda: getattr(win, "_labelling", None) is not None, timeout=WAIT)
    assert win._labelling.problems() == []
    win._labelling._ask_unsaved = lambda: "discard"
    win._labelling.close()
    win.switch_domain("toy-cars")
    qtbot.waitUntil(lambda: win.session.bundle.domain == "toy-cars", timeout=WAIT)
    qtbot.waitUntil(lambda: win.frames_shown >= 2, timeout=WAIT)
    assert "wheels" in win.graph.node_names()
    # a toy-faces PNG dropped on the toy-cars editor reopens toy-faces with that composition
    win.graph.filesDropped.emit("", [str(tmp_path / "faces.png")])
    qtbot.waitUntil(lambda: win.session.bundle.domain == "toy-faces", timeout=WAIT)
    assert {n: st.seed for n, st in win.session.composition.nodes.items()} == faces_seeds
    win.shutdown()


def test_cli_gui_parser():
    from sfeditor.cli import build_parser

    args = build_parser().parse_args(["gui", "--domain", "toy-cars", "x.sfcomp.json"])
    assert args.domain == "toy-cars" and args.file == "x.sfcomp.json" and args.func.__name__ == "cmd_gui"


def _photo(G, seed, path):
    with torch.no_grad():
        save_png(path, to_uint8(G.synthesis(G.styles(G.sample_w(1, seed=seed, truncation=0.5))))[0])
    return str(path)


def test_hair_transfer_flow(qtbot, win, tmp_path):
    """Target and reference photos inverted; the region's nodes get the reference, the rest the target."""
    settle(qtbot, win)
    G = win.session.bundle.G
    target, ref = _photo(G, 1, tmp_path / "target.png"), _photo(G, 2, tmp_path / "ref.png")
    win.transfer(target, ref, "right")
    qtbot.waitUntil(lambda: win.session.stack.undo_text is not None
                    and win.session.stack.undo_text.startswith("transfer"), timeout=60_000)
    comp = win.session.composition
    inside = {n: comp.state(n).code for n in ("right", "c", "d")}
    outside = {n: comp.state(n).code for n in ("all", "left", "a", "b")}
    assert all(c is not None for c in (*inside.values(), *outside.values()))
    assert all(torch.equal(c, inside["right"]) for c in inside.values())
    assert all(torch.equal(c, outside["all"]) for c in outside.values())
    assert not torch.equal(inside["right"], outside["all"])
    settle(qtbot, win)
    assert np.array_equal(win.preview.frame(), direct_render(win))


def test_cancel_inversion_changes_nothing(qtbot, win, tmp_path):
    settle(qtbot, win)
    path = _photo(win.session.bundle.G, 3, tmp_path / "p.png")
    job = win.invert_photo(Path(path), "a")
    job.cancel()
    qtbot.waitUntil(lambda: not job.is_running(), timeout=WAIT)
    qtbot.wait(20)
    assert win.session.composition.state("a").code is None and len(win.session.stack) == 0


def test_compare_view_shows_the_frame_before_the_last_edit(qtbot, win):
    settle(qtbot, win)
    first = win.preview.frame().copy()
    win.graph.rerollRequested.emit("a")
    settle(qtbot, win)
    win.preview.set_compare_enabled(True)
    qtbot.wait(1)
    assert np.array_equal(win.preview.compare_image(), first)


def test_open_model_from_files_and_bad_model(qtbot, win, tmp_path, tiny_bundle):
    from sfeditor.model.checkpoints import save_generator

    save_generator(tiny_bundle.G, tmp_path / "g.pt")
    tiny_bundle.hierarchy.save(tmp_path / "h.pt")
    job = win.load_model_async(domain="mine", generator=str(tmp_path / "g.pt"), hierarchy=str(tmp_path / "h.pt"))
    qtbot.waitUntil(lambda: not job.is_running() and win.session.bundle.domain == "mine", timeout=WAIT)
    assert win.session.bundle.hierarchy is not None and win.domain_box.currentText() == "mine — g.pt"
    # the picker remembers it: shipped domains first, then recent models (also in a new window)
    texts = [win.domain_box.itemText(i) for i in range(win.domain_box.count())]
    assert texts[:2] == ["toy-faces", "toy-cars"] and "mine — g.pt" in texts
    assert win._recent_models()[0]["generator"] == str(tmp_path / "g.pt")
    n = len(win.errors)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    win.load_model_async(domain="bad", generator=str(tmp_path / "bad.pt"))
    qtbot.waitUntil(lambda: len(win.errors) > n, timeout=WAIT)
    assert "bad.pt" in win.errors[-1] and win.session.bundle.domain == "mine"   # the open model stays


def test_labelling_tool_without_regions_explains(qtbot, win):
    n = len(win.errors)
    win.labelling_tool()
    assert len(win.errors) == n + 1 and "sfeditor-train regions" in win.errors[-1]


def test_sfeditor_without_subcommand_opens_the_window(monkeypatch):
    import sfeditor.ui.app as app
    from sfeditor.cli import main

    seen = {}
    monkeypatch.setattr(app, "run_app", lambda args: seen.setdefault("args", args) and 0)
    assert main([]) == 0
    assert seen["args"].command == "gui" and seen["args"].domain is None


def test_edit_compare_with_the_unrestricted_edit(qtbot, win, tmp_path):
    settle(qtbot, win)
    G = win.session.bundle.G
    np.save(tmp_path / "d.npy", np.random.default_rng(1).normal(size=G.style_dim).astype(np.float32))
    assert win.load_direction(str(tmp_path / "d.npy"))
    win.graph.select("a")
    win.edit_panel.compare_whole.setChecked(True)
    win.preview.set_compare_enabled(True)
    win.edit_panel.set_strength(4.0)
    qtbot.waitUntil(lambda: win._whole_frame is not None, timeout=WAIT)
    settle(qtbot, win)
    whole = win.session.preview_direction(win.directions[win.edit_panel.current_key()], 4.0, None)
    b = win.session.bundle
    want = render_request(b.G, b.hierarchy, RenderRequest(whole, 0)).image
    assert np.array_equal(win.preview.compare_image(), want)
    assert not np.array_equal(want, win.preview.frame())       # region-limited differs from unrestricted


def test_no_display_gives_a_clear_message():
    from sfeditor.ui.app import display_problem

    assert "no display" in display_problem({}, "linux")
    assert display_problem({"DISPLAY": ":0"}, "linux") is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert display_problem({}, "darwin") is None and display_problem({}, "win32") is None
