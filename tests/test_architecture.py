"""Import rules of the code base, read from the source with ``ast`` (issue 37).

* the core (``sfeditor`` outside ``sfeditor.ui``) never imports Qt, pyqtgraph or the UI;
  the one exception is the command line's ``gui`` entry point starting the app;
* the core never imports ``trainer``; ``trainer`` never imports ``sfeditor.ui`` or Qt;
* no import cycles between modules, counting imports inside functions too (a function-level
  import must not hide a cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QT = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "qdarkstyle", "pytestqt")
#: (importer, imported) pairs allowed to break a rule, with the reason
ALLOWED = {
    ("sfeditor.cli", "sfeditor.ui.app"): "`sfeditor gui` starts the desktop app",
}


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("sfeditor", "trainer"):
        for p in sorted((ROOT / top).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names a module imports (project modules resolved to the module itself)."""
    is_pkg = path.name == "__init__.py"
    pkg = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.add(sub if sub in MODULES else mod)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _violations(importers, forbidden) -> list[str]:
    bad = []
    for name, imps in GRAPH.items():
        if not importers(name):
            continue
        for imp in sorted(imps):
            if forbidden(imp) and (name, imp) not in ALLOWED:
                bad.append(f"{name} imports {imp}")
    return bad


def _is_core(name: str) -> bool:
    return name.startswith("sfeditor") and not name.startswith("sfeditor.ui")


def _is_qt(imp: str) -> bool:
    return imp.split(".")[0] in QT or imp.startswith("sfeditor.ui")


def test_the_core_never_imports_qt_or_the_ui():
    assert _violations(_is_core, _is_qt) == []


def test_the_core_never_imports_the_trainer():
    assert _violations(_is_core, lambda imp: imp.split(".")[0] == "trainer") == []


def test_the_trainer_never_imports_the_ui_or_qt():
    assert _violations(lambda n: n.startswith("trainer"), _is_qt) == []


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), over project modules.

    A package's ``__init__`` re-exporting its children is not an edge back to the package:
    children importing ``from . import x`` resolve to the sibling module itself."""
    edges = {n: sorted(i for i in imps if i in MODULES and i != n) for n, imps in GRAPH.items()}
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles() == []


def test_the_rules_see_a_violation(tmp_path, monkeypatch):
    """The checks can fail: a core module importing PySide6 and a two-module cycle are found."""
    GRAPH_copy = dict(GRAPH)
    monkeypatch.setitem(GRAPH, "sfeditor.model.generator", GRAPH_copy["sfeditor.model.generator"] | {"PySide6.QtCore"})
    assert _violations(_is_core, _is_qt) == ["sfeditor.model.generator imports PySide6.QtCore"]
    monkeypatch.setitem(GRAPH, "sfeditor.model.style_code",
                        GRAPH_copy["sfeditor.model.style_code"] | {"sfeditor.model.generator"})
    assert any({"sfeditor.model.generator", "sfeditor.model.style_code"} <= set(c) for c in _cycles())
