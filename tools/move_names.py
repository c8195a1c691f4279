"""Rewrite ``from M import a, b`` where some names moved to another module (re-runnable)."""
import ast, pathlib, sys

# (old module, name) -> new module
MOVED = {}
for n in ["generator_fingerprint", "synthesis_fingerprint", "deep_pixel_fingerprint", "outside_deep_pixels",
          "fits_fingerprints", "generator_identity", "_weights_hash", "_mapping_entry"]:
    MOVED[("sfeditor.regions.regions_file", n)] = "sfeditor.model.identity"
for n in ["generator_fingerprint", "module_fingerprint", "_FP_CACHE"]:
    MOVED[("sfeditor.images.inversion", n)] = "sfeditor.model.identity"
for n in ["pick_device", "bf16_is_fast", "choose_bf16"]:
    MOVED[("sfeditor.model.checkpoints", n)] = "sfeditor.model.device"
MOVED[("sfeditor.images.inversion", "psnr")] = "sfeditor.images.metrics"
MOVED[("trainer.generator", "psnr")] = "sfeditor.images.metrics"


def absolute(path, node):
    parts = list(path.with_suffix("").parts)
    pkg = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    if node.level:
        base = pkg[: len(pkg) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))
    return node.module


def rel(path, target):
    parts = list(path.with_suffix("").parts)
    pkg = parts[:-1]
    t = target.split(".")
    if pkg[0] != t[0]:
        return target
    n = 0
    while n < min(len(pkg), len(t)) and pkg[n] == t[n]:
        n += 1
    return "." * (len(pkg) - n + 1) + ".".join(t[n:])


for f in pathlib.Path(".").rglob("*.py"):
    if ".venv" in f.parts or f.parts[0] == "tools":
        continue
    src = f.read_text()
    tree = ast.parse(src)
    lines = src.split("\n")
    edits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.module and not node.level:
            continue
        mod = absolute(f, node)
        names = [(a.name, a.asname) for a in node.names]
        if not any((mod, a) in MOVED for a, _ in names):
            continue
        groups = {}
        for a, al in names:
            groups.setdefault(MOVED.get((mod, a), mod), []).append(a + (f" as {al}" if al else ""))
        first = lines[node.lineno - 1]
        ind = first[: len(first) - len(first.lstrip())]
        use_rel = node.level > 0
        new = [f"{ind}from {rel(f, m) if use_rel else m} import {', '.join(ns)}" for m, ns in groups.items()]
        edits.append((node.lineno, node.end_lineno, new))
    for a, b, new in sorted(edits, reverse=True):
        lines[a - 1:b] = new
    if edits:
        f.write_text("\n".join(lines))
        print("rewrote", f)
