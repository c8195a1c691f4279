"""``sfeditor models``: list, download, register, locate and remove the real model files (:mod:`sfeditor.model.registry`)."""
from __future__ import annotations

import argparse
import sys
import time


class _Progress:
    """A one-line stderr progress bar (redrawn in place on a terminal, every 10 % otherwise)."""

    def __init__(self, name: str, stream=None):
        self.name, self.stream = name, stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0, self.last, self.last_pct, self.stage, self.start_bytes = time.monotonic(), 0.0, -10, "", None

    def __call__(self, done: int, total: int, stage) -> None:
        stage = str(stage)
        if stage != self.stage:
            if self.stage == "downloading" and self.tty:
                self.stream.write("\n")
            self.stage = stage
            if stage != "downloading":
                self.stream.write(f"{self.name}: {stage}…\n")
                self.stream.flush()
                return
        if stage != "downloading":
            return
        if self.start_bytes is None:
            self.start_bytes = done
            if done:
                self.stream.write(f"{self.name}: resuming at {done / 1e6:.1f} MB\n")
        now = time.monotonic()
        pct = int(100 * done / total) if total else -1
        if self.tty:
            if now - self.last < 0.2 and done != total:
                return
        elif pct >= 0 and pct < self.last_pct + 10 and done != total:
            return
        elif pct < 0 and now - self.last < 5:
            return
        self.last, self.last_pct = now, pct
        rate = (done - self.start_bytes) / max(now - self.t0, 1e-6) / 1e6
        width = 30
        bar = ("#" * int(width * done / total)).ljust(width) if total else "?" * width
        text = (f"{self.name} [{bar}] {pct:3d}% {done / 1e6:.1f}/{total / 1e6:.1f} MB  {rate:.1f} MB/s" if total
                else f"{self.name} {done / 1e6:.1f} MB  {rate:.1f} MB/s")
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()


def _ask_licence(m) -> bool:
    print(f"{m.name}: {m.licence}\n{m.licence_text}", file=sys.stderr)
    try:
        return input("Accept this licence? [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cmd_models(args: argparse.Namespace) -> int:
    from .model import registry as M

    action = args.models_command or "list"
    if action == "list":
        reg = M.Registry()
        print(f"cache: {reg.root}")
        for row in M.status_rows(reg):
            rec = row["record"]
            state = "installed" if rec else ("downloadable" if row["url"] else "fetch by hand")
            print(f"\n{row['name']:<18} {row['kind']:<9} {row['domain']:<7} {state}")
            print(f"  {row['description']}; {row['size_text']}")
            print(f"  licence: {row['licence']}; source: {row['source']}")
            if rec:
                print(f"  file: {reg.root / rec['file']}")
                print(f"  SHA-256 of the {'download' if row['url'] else 'registered file'}: {rec['source_sha256']}")
            elif not row["url"] and row["how_to_get"]:
                print(f"  {row['how_to_get']}")
        return 0
    if action == "download":
        names = [n for n, m in M.KNOWN.items() if m.url] if args.name == "all" else [args.name]
        reg = M.Registry()
        for name in names:
            m = M.entry_for(name)
            if m.url and name not in reg.models and not reg.accepted(m.licence) and not args.accept_licence:
                if not sys.stdin.isatty():
                    raise M.LicenceNotAccepted(m)
                if not _ask_licence(m):
                    print(f"{name}: licence not accepted; nothing downloaded", file=sys.stderr)
                    return 1
                reg.accept(m.licence)
            already = name in reg.models
            rec = M.download(m, accept_licence=args.accept_licence, base_url=args.base_url,
                             progress=None if args.quiet else _Progress(name), keep_original=args.keep_original,
                             registry=reg)
            verb = "already installed (checksum verified)" if already else "installed"
            print(f"{name}: {verb}: {reg.root / rec['file']}")
            print(f"  SHA-256 of the download: {rec['source_sha256']} ({rec['source_size']} bytes)")
        return 0
    if action == "register":
        reg = M.Registry()
        rec = M.register(args.name, args.file, kind=args.kind, domain=args.domain,
                         progress=None if args.quiet else _Progress(args.name), registry=reg)
        print(f"{args.name}: registered ({rec['format']}): {reg.root / rec['file']}")
        print(f"  SHA-256 of {args.file}: {rec['source_sha256']}")
        return 0
    if action == "path":
        print(M.installed_path(args.name))
        return 0
    if action == "remove":
        if not M.remove(args.name):
            print(f"{args.name}: nothing installed", file=sys.stderr)
            return 1
        print(f"{args.name}: removed from the cache")
        return 0
    raise ValueError(f"unknown models command {action!r}")   # pragma: no cover


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list, download and register the real model files (StyleGAN2, FusionNets, e4e)")
    p.set_defaults(func=cmd_models, models_command=None)
    s = p.add_subparsers(dest="models_command")
    s.add_parser("list", help="the known files, what is installed, sizes, licences and sources")
    d = s.add_parser("download", help="fetch a file with a direct link into the cache (or 'all' of them)")
    d.add_argument("name", help="a model name from `sfeditor models list`, or 'all'")
    d.add_argument("--accept-licence", "--accept-license", action="store_true",
                   help="accept the file's licence (shown by `sfeditor models list`) without a prompt")
    d.add_argument("--base-url", help="download from this folder instead (a mirror); env SFEDITOR_MODELS_URL too")
    d.add_argument("--keep-original", action="store_true", help="keep the downloaded file beside its conversion")
    d.add_argument("-q", "--quiet", action="store_true")
    r = s.add_parser("register", help="validate and install a file you downloaded yourself")
    r.add_argument("name", help="a known name (e.g. e4e-ffhq, stylefusion-ffhq) or a new one with --kind/--domain")
    r.add_argument("file", help="the file (a weights JSON for FusionNet hierarchies)")
    r.add_argument("--kind", choices=["generator", "fusion", "encoder"])
    r.add_argument("--domain", help="e.g. ffhq, car, church")
    r.add_argument("-q", "--quiet", action="store_true")
    pa = s.add_parser("path", help="print the installed file of a model (its checksum verified)")
    pa.add_argument("name")
    rm = s.add_parser("remove", help="delete a model's files from the cache")
    rm.add_argument("name")
