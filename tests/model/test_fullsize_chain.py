"""Full-size chain smoke test (issue 40 item 3): every user-facing step on a real config-f architecture.

LSUN churches 256 config-f (30 M parameters, 13 conv + 7 rgb S layers, 14 w+ entries) with random
weights, written as NVIDIA's TensorFlow pickle (what ``sfeditor models download stylegan2-church``
fetches) and an e4e-format encoder for it (full IR-SE-50 key layout, 14 styles), then the chain a user
runs, each through the real command line's ``main()`` in this process with tiny settings:

``sfeditor models register`` (generator and e4e) -> ``sfeditor info`` -> ``sfeditor render`` ->
``sfeditor-train regions`` (K = 2: the Ward tree's root and two clusters) -> ``sfeditor-train fusion``
(the root node, one step in each of stages 1 / 2 / 3) -> ``sfeditor-train evaluate`` (2 random-base edits
per code) -> ``sfeditor invert`` (2 photos, 2 steps from the e4e's guess) -> ``sfeditor transfer`` -> the editor window
opening the model with its hierarchy and regions as ``sfeditor gui --generator stylegan2-church
--hierarchy H --regions R`` does, and showing a frame.

Checked: every output exists and is real (image sizes, not constant, files load back), and memory:
each step's peak resident memory (``VmHWM``, reset before the step through ``/proc/self/clear_refs``)
stays within :data:`STEP_LIMIT_GB`, and the whole process within :data:`PEAK_LIMIT_GB` (the issue's bound
for the 1024 model, which also holds when the 1024 test ran first in this process).  Nothing is timed.
The same chain at 1024 / 512 / 256 with one process per step: ``bench/fullsize_chain.py`` (numbers in
BENCHMARKS.md, "Full-size chain (issue 40)").  ``SFEDITOR_SKIP_FULLSIZE=1`` skips it.
"""
from __future__ import annotations

import json
import os
import random
import re
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ckpt_writers import random_generator, tiny_e4e_checkpoint, write_tf_pkl

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("SFEDITOR_SKIP_FULLSIZE", "") not in ("", "0"),
                                 reason="SFEDITOR_SKIP_FULLSIZE is set")]

SIZE = 256
#: the issue's bound for the 1024 model on the CPU; the whole pytest process must stay under it
PEAK_LIMIT_GB = 8.0
#: any one step of the 256 px chain: measured 1.2-2.3 GB in this process, and 3.2 GB for `fusion` (a stage-3
#: step renders three 256 px images with gradients at batch 1); one process per step: BENCHMARKS.md,
#: "Full-size chain (issue 40)"
STEP_LIMIT_GB = 5.0
#: 0.0001 x (5000, 10000, 10000): one step in each of stages 1, 2, 3
STEPS_SCALE = 0.0001


def _peak_gb() -> float:
    """This process's peak resident memory (ru_maxrss; since the last reset of :class:`StepPeaks`)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1 << 30) * (1 if sys.platform == "darwin" else 1024)


class StepPeaks:
    """Peak resident memory per step: ``VmHWM`` reset before each step (Linux >= 4.0), else None.

    The reset also resets ``ru_maxrss``, so :meth:`process_peak` keeps what came before each step."""

    def __init__(self):
        self.peaks: dict[str, float | None] = {}
        self.seconds: dict[str, float] = {}         # reported (``-s``), never asserted
        self._before = 0.0                          # the highest peak seen outside the steps

    def process_peak(self) -> float:
        """This process's peak so far: before, during and between the steps."""
        return max([self._before, _peak_gb(), *(v for v in self.peaks.values() if v is not None)])

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _hwm_gb() -> float:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / (1 << 20)

    def run(self, name: str, fn, *args, **kwargs):
        self._before = max(self._before, _peak_gb())
        ok = self._reset()
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = time.perf_counter() - t0
            self.peaks[name] = self._hwm_gb() if ok else None
            print(f"[chain] {name}: {self.seconds[name]:.1f} s, peak {self.peaks[name] or float('nan'):.2f} GB",
                  file=sys.__stderr__)


def _image(path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, path
    return img


def _real(img: np.ndarray, shape) -> None:
    assert img.shape == shape and float(img.std()) > 1.0, (img.shape, float(img.std()))


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A private model cache and one torch thread for the test (restored after)."""
    from sfeditor.model import registry as M

    monkeypatch.setenv("SFEDITOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SFEDITOR_AUTOSAVE", str(tmp_path / "autosave"))
    monkeypatch.delenv(M.BASE_URL_ENV, raising=False)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


def _recipe(tmp_path: Path, name: str, **keys) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(keys, indent=1))
    return str(path)


def test_church_256_whole_chain(world, qtbot, capsys):
    from sfeditor.cli import main as sfeditor
    from sfeditor.fusion.hierarchy import load_hierarchy
    from sfeditor.model import registry as M
    from sfeditor.model.style_code import StyleCode
    from sfeditor.regions.regions_file import load_regions
    from trainer.cli import main as train

    tmp = world
    peaks = StepPeaks()
    threads = ["--threads", "1"]

    # -- the files a user downloads / fetches by hand, in their official formats
    G = random_generator(5, size=SIZE)
    write_tf_pkl(G, tmp / "stylegan2-church-config-f.pkl")
    del G
    tiny_e4e_checkpoint(tmp / "e4e_church_encode.pt", n_styles=14, resolution=SIZE)
    assert peaks.run("register", sfeditor, ["models", "register", "stylegan2-church",
                                            str(tmp / "stylegan2-church-config-f.pkl"), "-q"]) == 0
    assert peaks.run("register e4e", sfeditor, ["models", "register", "e4e-church",
                                                str(tmp / "e4e_church_encode.pt"), "-q"]) == 0
    gen = str(M.installed_path("stylegan2-church"))
    capsys.readouterr()

    # -- sfeditor info
    assert peaks.run("info", sfeditor, ["info", "stylegan2-church"]) == 0
    info = capsys.readouterr().out
    assert "resolution:  256x256" in info and "13 conv + 7 rgb layers, |S| = 5760 + 2944 = 8704" in info
    assert "w+ entries:  14" in info

    # -- sfeditor render
    assert peaks.run("render", sfeditor, ["render", "-m", "stylegan2-church", "-s", "3,4", "--separate",
                                          "-o", str(tmp / "render"), "--device", "cpu",
                                          "--save-codes", str(tmp / "codes.pt")]) == 0
    assert "truncation psi = 0.5 (paper A.6 for church" in capsys.readouterr().err
    for seed in (3, 4):
        _real(_image(tmp / "render" / f"seed{seed:06d}.png"), (SIZE, SIZE, 3))
    assert StyleCode.load(tmp / "codes.pt").layout.n_latent == 14

    # -- sfeditor-train regions (small K)
    regions_recipe = _recipe(tmp, "regions", domain="church", clusters=2, samples=4, pixels=400, size=32,
                             pca=16, batch=2, sheet_images=2, device="cpu")
    assert peaks.run("regions", train, ["regions", "--recipe", regions_recipe, "--generator", gen,
                                        "--out", str(tmp / "regions"), *threads]) == 0
    regions_path = tmp / "regions" / "regions.json"
    regions = load_regions(regions_path)
    assert regions.num_clusters == 2 and sorted(regions.leaves) == ["cluster_0", "cluster_1"]
    assert regions.tree.name == "all"
    assert (tmp / "regions" / "clusters.png").is_file() and len(list((tmp / "regions" / "clusters").glob("*.png"))) == 2
    capsys.readouterr()

    # -- sfeditor-train fusion: the root node, a step or two per stage
    fusion_recipe = _recipe(tmp, "fusion", domain="church", node="all", steps_scale=STEPS_SCALE, batch=1,
                            sample_every=1000, sample_count=1, checkpoint_every=1000, device="cpu", bf16=False)
    hier = tmp / "hierarchy.pt"
    assert peaks.run("fusion", train, ["fusion", "--recipe", fusion_recipe, "--generator", gen,
                                       "--regions", str(regions_path), "--out", str(tmp / "fusion-all"),
                                       "--hierarchy", str(hier), *threads]) == 0
    stats = [json.loads(line) for line in (tmp / "fusion-all" / "stats.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in stats] == [(1, 1), (2, 1), (3, 1)]
    assert all(np.isfinite(r["loss"]) and not r["skipped"] for r in stats)
    h = load_hierarchy(hier)
    assert sorted(h.nets) == ["all"] and h.layout.dims == StyleCode.load(tmp / "codes.pt").layout.dims
    assert (tmp / "fusion-all" / "net.pt").is_file()
    samples = sorted((tmp / "fusion-all" / "samples").glob("*.png"))    # each stage's last step
    assert len(samples) == 3 and all(float(_image(p).std()) > 1.0 for p in samples)
    capsys.readouterr()

    # -- sfeditor-train evaluate: a few edits
    eval_recipe = _recipe(tmp, "evaluate", samples=2, batch=2, seed=0, judge="clusters", modes=["random"])
    assert peaks.run("evaluate", train, ["evaluate", "--recipe", eval_recipe, "--domain", "church",
                                         "--generator", gen, "--regions", str(regions_path),
                                         "--hierarchy", str(hier), "--out", str(tmp / "eval"),
                                         "--device", "cpu", "--no-bf16", *threads]) == 0
    metrics = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert metrics["judge"] == "clusters" and metrics["hierarchy"]["nets"] == ["all"]
    assert "cluster_0" in (tmp / "eval" / "report.md").read_text()
    assert float(_image(tmp / "eval" / "heatmaps-random.png").std()) > 1.0
    capsys.readouterr()

    # -- sfeditor invert: a few steps from the e4e installed for churches
    photos = [tmp / "render" / "seed000003.png", tmp / "render" / "seed000004.png"]
    assert peaks.run("invert", sfeditor, ["invert", *map(str, photos), "-m", "stylegan2-church", "--steps", "2",
                                          "--out", str(tmp / "inv"), "--device", "cpu", "--no-cache",
                                          "--no-bf16"]) == 0
    err = capsys.readouterr().err
    assert "initial guesses from the encoder" in err and "installed for church" in err
    for stem in ("seed000003", "seed000004"):
        _real(_image(tmp / "inv" / f"{stem}.png"), (SIZE, SIZE, 3))
        assert StyleCode.load(tmp / "inv" / f"{stem}.pt").layout.n_latent == 14
        assert (tmp / "inv" / f"{stem}-wplus.pt").is_file()

    # -- sfeditor transfer: cluster_1 of the second inversion onto the first
    out = tmp / "transfer.png"
    assert peaks.run("transfer", sfeditor, ["transfer", str(tmp / "inv" / "seed000003-wplus.pt"),
                                            str(tmp / "inv" / "seed000004-wplus.pt"), "-m", "stylegan2-church",
                                            "--hierarchy", str(hier), "--region", "cluster_1", "-o", str(out),
                                            "--compare", "--device", "cpu", "--no-cache", "-q"]) == 0
    _real(_image(out), (SIZE, SIZE, 3))
    assert _image(tmp / "transfer-compare.png").shape[1] >= 3 * SIZE

    # -- the editor: `sfeditor gui --generator stylegan2-church --hierarchy H --regions R`
    peaks.run("editor", _editor, qtbot, tmp, hier, regions_path)

    over = {k: v for k, v in peaks.peaks.items() if v is not None and v > STEP_LIMIT_GB}
    assert not over, f"steps over {STEP_LIMIT_GB} GB: {over} (all: {peaks.peaks})"
    assert peaks.process_peak() <= PEAK_LIMIT_GB


def _editor(qtbot, tmp: Path, hier: Path, regions_path: Path) -> None:
    import argparse

    from PySide6.QtCore import QSettings

    from sfeditor.editor.session import load_bundle
    from sfeditor.ui.app import _installed_generator, add_gui_arguments
    from sfeditor.ui.main_window import MainWindow

    p = argparse.ArgumentParser()
    add_gui_arguments(p)
    args = p.parse_args(["--generator", "stylegan2-church", "--hierarchy", str(hier), "--regions", str(regions_path),
                         "--device", "cpu"])
    _installed_generator(args)                              # the installed model's file and domain
    assert args.domain == "church"
    bundle = load_bundle(args.domain, generator=args.generator, hierarchy=args.hierarchy, regions=args.regions,
                         device=args.device)
    assert bundle.truncation == 0.5 and sorted(bundle.hierarchy.nets) == ["all"]
    win = MainWindow(bundle, settings=QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat),
                     autosave_folder=tmp / "autosave", check_recovery=False)
    qtbot.addWidget(win)
    win.session.rng = random.Random(0)
    win.ask_unsaved = lambda action: "discard"
    try:
        qtbot.waitUntil(lambda: win.frames_shown >= 1, timeout=180_000)
        result = win.last_result
        assert result.ok and result.hierarchy_used and not result.draft
        frame = win.preview.frame()
        assert frame.shape == (SIZE, SIZE, 3) and float(frame.std()) > 1.0
        assert {"all", "cluster_0", "cluster_1"} <= set(win.session.composition.node_names)
    finally:
        win.shutdown()
