"""Screenshots of the real window for the README: run under a display (e.g. Xvfb :99).

    Xvfb :99 -screen 0 1280x800x24 -nolisten tcp &
    DISPLAY=:99 python docs/make_screenshots.py docs/images
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from sfeditor.ui.main_window import MainWindow
from sfeditor.ui.theme import apply_theme


def wait(app, cond, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        app.processEvents()
        if cond():
            return True
        time.sleep(0.02)
    return False


def shot(app, win, path: Path) -> None:
    wait(app, lambda: False, 0.5)
    screen = app.primaryScreen()
    pm = screen.grabWindow(0, win.x(), win.y(), win.frameGeometry().width(), win.frameGeometry().height())
    pm.save(str(path))
    print("wrote", path)


def main(out: str = "docs/images") -> int:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    app = QApplication(sys.argv[:1])
    apply_theme(app, True)
    tmp = Path(tempfile.mkdtemp())
    settings = QSettings(str(tmp / "s.ini"), QSettings.Format.IniFormat)
    win = MainWindow(domain="toy-faces", settings=settings, autosave_folder=tmp, check_recovery=False)
    win.setGeometry(0, 0, 1280, 800)
    win.show()
    wait(app, lambda: win.frames_shown >= 1)
    win.graph.select("hair")
    wait(app, lambda: len(win.thumbnails) == len(win.session.composition.node_names))
    win.graph.fit()
    shot(app, win, out_dir / "app-faces.png")
    win.show_heatmap_for("hair")
    wait(app, lambda: "overlay" not in win.jobs, 120)
    shot(app, win, out_dir / "app-faces-heatmap.png")
    win.preview.set_overlay_mode("none")
    # a region-limited GANSpace edit of the face, compared with the same edit on every node (Fig. 14)
    win.compute_pca()
    wait(app, lambda: win.edit_panel.list.count() > 0, 120)
    win.graph.select("face")
    win.edit_panel.select_key("pca:1")
    win.edit_panel.compare_whole.setChecked(True)
    win.preview.set_compare_enabled(True)
    win.edit_panel.set_strength(3.0)
    wait(app, lambda: win._whole_frame is not None, 60)
    win.tabs.setCurrentWidget(win.edit_panel)
    shot(app, win, out_dir / "app-faces-edit.png")
    win.edit_panel.set_strength(0.0)
    win.preview.set_compare_enabled(False)
    win.tabs.setCurrentWidget(win.inspector)
    win.switch_domain("toy-cars")
    wait(app, lambda: win.session.bundle.domain == "toy-cars" and win.frames_shown >= 2)
    wait(app, lambda: len(win.thumbnails) == len(win.session.composition.node_names))
    win.graph.select("wheels")
    win.preview.set_overlay_mode("masks")
    wait(app, lambda: "overlay" not in win.jobs, 60)
    win.graph.fit()
    shot(app, win, out_dir / "app-cars-masks.png")
    win.session.stack.set_clean()
    win.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
