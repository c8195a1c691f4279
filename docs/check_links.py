"""Check the repository's Markdown: every relative link and image resolves, and every script or image
path the docs name in code (``bench/…``, ``experiments/…``, ``docs/…``) exists.

    python docs/check_links.py            # prints the problems, exits 1 if there are any
"""
from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", ".venv", "runs", "node_modules", "__pycache__", ".pytest_cache"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
NAMED_PATH = re.compile(r"(?<![\w/.(])((?:bench|experiments|docs)/[A-Za-z0-9_.\-/]+\.(?:py|png|md))")


def markdown_files(root: str = ROOT) -> list[str]:
    out = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        out += [os.path.join(here, f) for f in sorted(files) if f.endswith(".md")]
    return out


def problems(root: str = ROOT) -> list[str]:
    """One line per broken link or missing named path, as ``file: what``."""
    found = []
    for path in markdown_files(root):
        rel = os.path.relpath(path, root)
        text = open(path, encoding="utf-8").read()
        for m in LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue                                   # URLs and in-page anchors
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target.split("#")[0]))
            if not os.path.exists(resolved):
                found.append(f"{rel}: broken link {target}")
        if rel.startswith(os.path.join("docs", "notes")):
            continue                                       # notes record moves: they name old paths on purpose
        for m in NAMED_PATH.finditer(text):
            named = m.group(1)
            if "toy-D-" in named or "/D-" in named:         # a pattern over the domains, not a file
                continue
            if not os.path.exists(os.path.join(root, named)):
                found.append(f"{rel}: names a missing path {named}")
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"{len(markdown_files())} Markdown files, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
