"""Start the desktop editor: ``sfeditor`` (no subcommand), ``sfeditor gui [options]`` or ``python main.py``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["run_app", "add_gui_arguments", "display_problem"]


def add_gui_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="a composition (.sfcomp.json) or a PNG exported by sfeditor to open")
    p.add_argument("--domain", default=None, help="shipped domain to start with (default toy-faces, or the file's)")
    p.add_argument("--generator", help="a StyleGAN2 checkpoint instead of a shipped domain, or the name of one "
                                       "installed with `sfeditor models` (its FusionNets come with it)")
    p.add_argument("--hierarchy", help="FusionNet hierarchy for --generator (own .pt or official weights JSON)")
    p.add_argument("--regions", help="regions file for --generator")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--light", action="store_true", help="light theme")
    p.add_argument("--no-recovery", action="store_true", help="do not offer to restore autosaved work")
    p.add_argument("--encoder", help="photo encoder for this run (an e4e/pSp checkpoint or a toy encoder); default: "
                                     "the editor's setting, else the e4e installed for the domain")


def _installed_generator(args: argparse.Namespace) -> None:
    """``--generator stylegan2-ffhq`` (an installed model's name): its file, domain and FusionNets (issue 40)."""
    if not args.generator or Path(args.generator).exists():
        return
    from ..model.registry import KNOWN, Registry, open_spec

    if args.generator in KNOWN or args.generator in Registry().models:
        spec = open_spec(args.generator)
        args.generator = spec["generator"]
        args.hierarchy = args.hierarchy or spec["hierarchy"]
        args.domain = args.domain or spec["domain"]


def display_problem(env=None, platform: str | None = None) -> str | None:
    """A clear message when no window can be opened (Qt would abort), else None."""
    import os

    env = os.environ if env is None else env
    platform = platform or sys.platform
    if not platform.startswith("linux") or env.get("QT_QPA_PLATFORM"):
        return None
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return ("no display found (DISPLAY / WAYLAND_DISPLAY are not set). Run it on a desktop session, "
            "through a virtual display (`xvfb-run sfeditor`), or use the headless commands "
            "(`sfeditor render | invert | edit | transfer`).")


def run_app(args: argparse.Namespace | None = None, argv: list[str] | None = None) -> int:
    """Create the QApplication and the main window; returns the exit code."""
    if args is None:
        p = argparse.ArgumentParser(prog="sfeditor gui")
        add_gui_arguments(p)
        args = p.parse_args(argv)
    problem = display_problem()
    if problem:
        print(f"sfeditor: {problem}", file=sys.stderr)
        return 2
    from ..editor.session import EditorSession, SessionError, load_bundle
    from ..validate import check_device

    try:
        check_device(args.device)
    except ValueError as e:
        print(f"sfeditor: {e}", file=sys.stderr)
        return 2
    domain = args.domain
    comp = None
    if args.file:   # read before any window opens: /dev/zero, a FIFO or a folder is a one-line error, exit 2
        try:
            comp = EditorSession.read_composition(args.file)
        except SessionError as e:
            print(f"sfeditor: {e}", file=sys.stderr)
            return 2
        if comp is not None and domain is None and not args.generator:
            domain = comp.domain or None

    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow
    from .theme import apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("sfeditor")
    app.setOrganizationName("sfeditor")
    apply_theme(app, dark=not args.light)
    bundle = None
    if args.generator:
        try:
            bundle = load_bundle(domain or Path(args.generator).stem, generator=args.generator,
                                 hierarchy=args.hierarchy, regions=args.regions, device=args.device)
        except SessionError as e:
            print(f"sfeditor: {e}", file=sys.stderr)
            return 2
    win = MainWindow(bundle, domain=domain or "toy-faces", device=args.device, dark=not args.light,
                     check_recovery=not args.no_recovery)
    win.encoder_override = args.encoder or None
    if comp is not None:
        win.apply_composition(comp, Path(args.file), as_edit=False)
    win.show()
    code = app.exec()
    return int(code)
