"""Does the editor's GUI thread stay responsive while it renders, computes heatmaps and inverts photos?

Opens the real main window (offscreen) on a shipped domain and, while a 5 ms
QTimer measures how late the GUI thread's event loop is, runs: a burst of 100
seed edits (each a render request), a locality heatmap, and a photo inversion.
Prints the event-loop stall (the GUI thread's longest / 99th-percentile gap
beyond the 5 ms tick), frames shown vs requested, and each phase's wall time.

    QT_QPA_PLATFORM=offscreen python bench/app_responsiveness.py [--domain toy-faces]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PySide6.QtCore import QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from sfeditor.images.imageio import save_png  # noqa: E402
from sfeditor.toy import render  # noqa: E402
from sfeditor.ui.main_window import MainWindow  # noqa: E402


class StallMeter:
    def __init__(self, tick_ms: int = 5):
        self.tick = tick_ms / 1000
        self.gaps: list[float] = []
        self.last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(tick_ms)
        self.timer.timeout.connect(self._beat)
        self.timer.start()

    def _beat(self):
        now = time.perf_counter()
        self.gaps.append(max(0.0, now - self.last - self.tick))
        self.last = now

    def reset(self):
        self.gaps.clear()
        self.last = time.perf_counter()

    def summary(self) -> tuple[float, float]:
        g = np.array(self.gaps or [0.0]) * 1000
        return float(g.max()), float(np.percentile(g, 99))


def spin(app, cond, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end and not cond():
        app.processEvents()
        time.sleep(0.001)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--domain", default="toy-faces")
    args = p.parse_args(argv)
    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp())
    os.environ["SFEDITOR_CACHE"] = str(tmp / "cache")
    win = MainWindow(domain=args.domain, settings=QSettings(str(tmp / "s.ini"), QSettings.Format.IniFormat),
                     autosave_folder=tmp, check_recovery=False)
    win.show()
    spin(app, lambda: win.frames_shown >= 1)
    meter = StallMeter()
    rows = []

    # 1: a burst of edits, as fast as a user could drag a seed spin box
    meter.reset()
    t = time.perf_counter()
    before = win.frames_shown
    leaf = win.session.composition.leaves[0]
    for i in range(100):
        win.inspector.seedChanged.emit(leaf, 5000 + i)
        spin(app, lambda: False, 0.01)
    spin(app, lambda: win.bridge.service.latest is not None and win.last_result is not None
         and win.last_result.stamp == win.bridge.service.latest.stamp and win.bridge.wait_until_idle(0.001))
    rows.append(("100 seed edits (10 ms apart)", time.perf_counter() - t, *meter.summary(),
                 f"{win.frames_shown - before} frames for 100 requests"))

    # 2: a locality heatmap of the selected node
    meter.reset()
    t = time.perf_counter()
    win.show_heatmap_for(leaf)
    spin(app, lambda: "overlay" not in win.jobs)
    rows.append(("locality heatmap (32 samples)", time.perf_counter() - t, *meter.summary(), ""))

    # 3: a photo inversion (held-out render of the domain)
    img, _ = render(args.domain, [10_000_123], win.session.bundle.G.size)
    save_png(tmp / "photo.png", img[0])
    meter.reset()
    t = time.perf_counter()
    win.open_paths("", [str(tmp / "photo.png")])
    spin(app, lambda: "invert" not in win.jobs)
    rows.append(("photo inversion", time.perf_counter() - t, *meter.summary(), ""))

    print(f"# {args.domain} on {win.session.bundle.device} ({torch.get_num_threads()} threads): "
          "GUI-thread stall = how late a 5 ms timer fires")
    print(f"{'phase':32s} {'wall s':>7s} {'max stall ms':>13s} {'p99 ms':>7s}  note")
    for name, wall, mx, p99, note in rows:
        print(f"{name:32s} {wall:7.2f} {mx:13.1f} {p99:7.1f}  {note}")
    win.session.stack.set_clean()
    win.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
