"""One-off, re-runnable restructuring of the flat core into subpackages (issue 37).

Moves modules with ``git mv`` and rewrites every reference: relative and absolute imports,
dotted names in strings (monkeypatch targets, docs) and file paths. Idempotent: modules
already moved are skipped. Run from the repository root: ``python tools/restructure.py``.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# old dotted module -> new dotted module
MOVES = {
    # the StyleGAN2 model and its S space
    "sfeditor.generator": "sfeditor.model.generator",
    "sfeditor.style_code": "sfeditor.model.style_code",
    "sfeditor.checkpoints": "sfeditor.model.checkpoints",
    "sfeditor.safe_pickle": "sfeditor.model.safe_pickle",
    "sfeditor.safe_torch": "sfeditor.model.safe_torch",
    "sfeditor.upfirdn": "sfeditor.model.upfirdn",
    "sfeditor.latent_prior": "sfeditor.model.latent_prior",
    "sfeditor.truncation": "sfeditor.model.truncation",
    "sfeditor.models": "sfeditor.model.registry",
    # regions: DeepPixels, clustering, masks, M and w_R, regions files
    "sfeditor.clustering": "sfeditor.regions.clustering",
    "sfeditor.masks": "sfeditor.regions.masks",
    "sfeditor.correlation": "sfeditor.regions.correlation",
    "sfeditor.regions": "sfeditor.regions.regions_file",
    "sfeditor.cluster_sheets": "sfeditor.regions.cluster_sheets",
    # fusion: LatentBlender, FusionNet, hierarchy
    "sfeditor.latent_blender": "sfeditor.fusion.latent_blender",
    "sfeditor.fusion_net": "sfeditor.fusion.fusion_net",
    "sfeditor.hierarchy": "sfeditor.fusion.hierarchy",
    "sfeditor.blend_stats": "sfeditor.fusion.blend_stats",
    "sfeditor.swap_fidelity": "sfeditor.fusion.swap_fidelity",
    # images: intake, alignment, inversion, encoders, directions, editing
    "sfeditor.image_intake": "sfeditor.images.intake",
    "sfeditor.imageio": "sfeditor.images.imageio",
    "sfeditor.alignment": "sfeditor.images.alignment",
    "sfeditor.inversion": "sfeditor.images.inversion",
    "sfeditor.e4e": "sfeditor.images.e4e",
    "sfeditor.toy_encoder": "sfeditor.images.toy_encoder",
    "sfeditor.directions": "sfeditor.images.directions",
    "sfeditor.editing": "sfeditor.images.editing",
    "sfeditor.domain_check": "sfeditor.images.domain_check",
    # the editor's Qt-free document, commands, session and rendering
    "sfeditor.composition": "sfeditor.editor.composition",
    "sfeditor.commands": "sfeditor.editor.commands",
    "sfeditor.session": "sfeditor.editor.session",
    "sfeditor.render_service": "sfeditor.editor.render_service",
    "sfeditor.locality": "sfeditor.editor.locality",
    # training-only code
    "sfeditor.losses": "trainer.losses",
    "sfeditor.fusion_config": "trainer.fusion_config",
    "sfeditor.region_eval": "trainer.region_eval",
    "sfeditor.centroid_pruning": "trainer.centroid_pruning",
}

PACKAGES = ["sfeditor.model", "sfeditor.regions", "sfeditor.fusion", "sfeditor.images", "sfeditor.editor"]
PACKAGE_DOCS = {
    "sfeditor.model": "The StyleGAN2 generator, its S space (paper Sec. 3) and safe checkpoint loading.",
    "sfeditor.regions": "Semantic regions (paper Sec. 4.2): DeepPixels, clustering, masks, M and w_R, regions files.",
    "sfeditor.fusion": "Fusion (paper Sec. 4.3, 4.5): LatentBlender, FusionNet and the hierarchy of FusionNets.",
    "sfeditor.images": "Real images (paper Sec. 6): intake, alignment, inversion, encoders, directions, editing.",
    "sfeditor.editor": "The editor's Qt-free model: compositions, undoable commands, session, rendering, heatmaps.",
}

# tests/<file> -> tests/<subdir>/<file>
TEST_DIRS = {
    "model": ["test_generator", "test_checkpoints", "test_models",
              "test_fullsize_smoke"],
    "regions": ["test_regions", "test_masks", "test_correlation", "test_cluster_sheets"],
    "fusion": ["test_fusion", "test_blend_stats", "test_swap_fidelity"],
    "images": ["test_image_intake", "test_alignment", "test_inversion", "test_directions", "test_editing",
               "test_cli_images", "test_domain_check"],
    "editor": ["test_composition", "test_commands", "test_session", "test_render_service", "test_draft_render",
               "test_locality_union"],
    "toy": ["test_toy_render", "test_oracle"],
    "trainer": ["test_fusion_train", "test_latent_prior", "test_generator_recipe", "test_mapping_fit", "test_centroid_pruning",
                "test_regions_cli", "test_recipes", "test_ablation"],
    "ui": ["test_ui_app", "test_ui_binding", "test_ui_draft", "test_ui_labelling", "test_ui_node_graph",
           "test_ui_preview", "test_ui_models", "test_ui_trust"],
}

TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".json"}
SKIP_DIRS = {".git", ".venv", "__pycache__", "build", "dist", "docs/experiments"}


def mod_path(dotted: str) -> Path:
    return ROOT / (dotted.replace(".", "/") + ".py")


def git(*args):
    subprocess.run(["git", *args], cwd=ROOT, check=True)


def text_files():
    for p in ROOT.rglob("*"):
        rel = p.relative_to(ROOT).as_posix()
        if any(rel == d or rel.startswith(d + "/") for d in SKIP_DIRS) or "/__pycache__/" in rel:
            continue
        if p.is_file() and p.suffix in TEXT_SUFFIXES and p.name != "restructure.py":
            yield p


def package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1])
    return ".".join(parts[:-1])


def resolve_relative(pkg: str, dots: str, rest: str) -> str:
    base = pkg.split(".")
    up = len(dots) - 1
    base = base[: len(base) - up] if up else base
    return ".".join(base + ([rest] if rest else []))


def relativize(pkg: str, target: str) -> str:
    """``from X import`` text for absolute ``target`` seen from package ``pkg``."""
    p, t = pkg.split("."), target.split(".")
    if p[0] != t[0]:
        return target
    n = 0
    while n < min(len(p), len(t)) and p[n] == t[n]:
        n += 1
    return "." * (len(p) - n + 1) + ".".join(t[n:])


TREE_NAMES = {"RegionNode", "node", "PAPER_TREES", "DOMAIN_TREES", "paper_tree", "leaves", "find_node",
              "region_of", "internal_nodes", "validate_tree"}
OLD_LEAVES = {k.rsplit(".", 1)[1] for k in MOVES}
NEW_PREFIXES = sorted(set(MOVES.values()) | set(PACKAGES), key=len, reverse=True)


def already_new(name: str) -> bool:
    """True for a dotted name that already points into the new layout (re-runs are idempotent)."""
    return any(name == n or name.startswith(n + ".") for n in NEW_PREFIXES)


def exists(dotted: str) -> bool:
    p = ROOT / dotted.replace(".", "/")
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def new_module(old: str) -> str:
    """Map a dotted name (module or module.attr) through MOVES, longest prefix first."""
    if already_new(old):
        return old
    for k in sorted(MOVES, key=len, reverse=True):
        if old == k or old.startswith(k + "."):
            return MOVES[k] + old[len(k):]
    return old


FROM_RE = re.compile(r"^(\s*)from\s+(\.+)([\w\.]*)\s+import\s+(.*)$")
ABS_FROM_RE = re.compile(r"^(\s*)from\s+((?:sfeditor|trainer)(?:\.\w+)*)\s+import\s+(.*)$")


def rewrite_imports(text: str, old_pkg: str, new_pkg: str, moved_modules: set[str], just_moved: bool) -> str:
    out = []
    for line in text.split("\n"):
        m = FROM_RE.match(line)
        if m:
            ind, dots, rest, names = m.groups()
            first = names.split(",")[0].strip("( ").split(" ")[0]
            here = resolve_relative(new_pkg, dots, rest)
            if just_moved or not (exists(here) if rest else exists(f"{here}.{first}") or first not in OLD_LEAVES):
                target = resolve_relative(old_pkg, dots, rest)     # written for the file's old place
            else:
                target = here
            line = _emit(ind, target, names, new_pkg, moved_modules, relative=True)
        else:
            m = ABS_FROM_RE.match(line)
            if m:
                ind, target, names = m.groups()
                line = _emit(ind, target, names, new_pkg, moved_modules, relative=False)
        out.append(line)
    return "\n".join(out)


def _emit(ind, target, names, new_pkg, moved_modules, relative):
    simple = [n.strip() for n in names.split(",")] if "(" not in names and "\\" not in names else None
    # "from pkg import module": the imported name may itself be a moved module
    if simple and all(re.fullmatch(r"\w+( as \w+)?", n) for n in simple):
        subs = [f"{target}.{n.split()[0]}" for n in simple]
        if any(s in MOVES for s in subs):
            if len(simple) == 1:
                nm = MOVES[subs[0]]
                parent, leaf = nm.rsplit(".", 1)
                alias = simple[0].split()[1:]
                name = leaf + (f" as {alias[1]}" if alias else (f" as {simple[0]}" if leaf != simple[0] else ""))
                return f"{ind}from {_fmt(parent, new_pkg, relative)} import {name}"
            raise SystemExit(f"split this import by hand: from {target} import {names}")
    nt = new_module(target)
    if nt == "sfeditor.regions.regions_file" and simple:
        # the region tree left the regions file for sfeditor/regions/tree.py
        t = [n for n in simple if n.split()[0] in TREE_NAMES]
        r = [n for n in simple if n.split()[0] not in TREE_NAMES]
        if t:
            lines = [f"{ind}from {_fmt(nt, new_pkg, relative)} import {', '.join(r)}"] if r else []
            lines.append(f"{ind}from {_fmt('sfeditor.regions.tree', new_pkg, relative)} import {', '.join(t)}")
            return "\n".join(lines)
    return f"{ind}from {_fmt(nt, new_pkg, relative)} import {names}"


def _fmt(target, new_pkg, relative):
    if relative and target.split(".")[0] == new_pkg.split(".")[0]:
        return relativize(new_pkg, target)
    return target


DOTTED_RE = None


def _sub_dotted(m) -> str:
    """Rewrite an old dotted name unless the text goes on into the new layout (``sfeditor.regions.tree``)."""
    rest = re.match(r"(\.\w+)*", m.string[m.end():]).group(0)
    if already_new(m.group(1) + rest) and rest:
        return m.group(1)
    return MOVES[m.group(1)]


def rewrite_strings(text: str) -> str:
    global DOTTED_RE
    if DOTTED_RE is None:
        names = sorted(MOVES, key=len, reverse=True)
        DOTTED_RE = re.compile(r"(?<![\w\.])(" + "|".join(re.escape(n) for n in names) + r")(?!\w)")
        paths = {k.replace(".", "/") + ".py": v.replace(".", "/") + ".py" for k, v in MOVES.items()}
        rewrite_strings.paths = paths
        rewrite_strings.path_re = re.compile(r"(?<![\w/])(" + "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True)) + r")")
    out = []
    for line in text.split("\n"):
        if not (FROM_RE.match(line) or ABS_FROM_RE.match(line)):   # imports were rewritten already
            line = DOTTED_RE.sub(_sub_dotted, line)
            line = rewrite_strings.path_re.sub(lambda m: rewrite_strings.paths[m.group(1)], line)
        out.append(line)
    return "\n".join(out)


def main():
    moved = {}
    # 1. packages
    for pkg in PACKAGES:
        init = mod_path(pkg + ".__init__")
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text(f'"""{PACKAGE_DOCS[pkg]}"""\n')
            git("add", str(init.relative_to(ROOT)))
    # 2. the regions module must leave before sfeditor/regions/ is a package: handled by moving it first
    order = sorted(MOVES, key=lambda k: k != "sfeditor.regions")
    for old in order:
        new = MOVES[old]
        src = ROOT / (old.replace(".", "/") + ".py")
        if old == "sfeditor.regions":
            src = ROOT / "sfeditor" / "regions.py"
        if not src.exists():
            continue
        dst = mod_path(new)
        dst.parent.mkdir(parents=True, exist_ok=True)
        git("mv", str(src.relative_to(ROOT)), str(dst.relative_to(ROOT)))
        moved[old] = new
    # 3. rewrite imports in every python file (its old package decides what relative imports meant)
    inv = {v: k for k, v in MOVES.items()}
    for p in text_files():
        text = p.read_text()
        orig = text
        if p.suffix == ".py":
            dotted_new = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            old_dotted = inv.get(dotted_new, dotted_new)
            old_pkg = old_dotted.rsplit(".", 1)[0] if not p.name == "__init__.py" else old_dotted.rsplit(".", 1)[0]
            new_pkg = package_of(p)
            if p.name == "__init__.py":
                old_pkg = new_pkg = dotted_new.rsplit(".", 1)[0]
            text = rewrite_imports(text, old_pkg, new_pkg, set(moved), dotted_new in moved.values())
        text = rewrite_strings(text)
        if text != orig:
            p.write_text(text)
    # 4. tests mirror the source tree
    for sub, names in TEST_DIRS.items():
        for n in names:
            src = ROOT / "tests" / f"{n}.py"
            if src.exists():
                (ROOT / "tests" / sub).mkdir(exist_ok=True)
                git("mv", str(src.relative_to(ROOT)), f"tests/{sub}/{n}.py")
    left = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    if left:
        print("tests left at tests/ (add them to TEST_DIRS):", ", ".join(left))
    stray = sorted(p.name for p in (ROOT / "sfeditor").glob("*.py")
                   if p.stem not in {"__init__", "atomic", "cli", "cli_images", "domains", "jobs", "validate", "cli_models", "integrity", "locks", "device", "identity", "metrics", "tree"})
    if stray:
        print("modules left at sfeditor/ (decide where they live):", ", ".join(stray))
    print(f"moved {len(moved)} modules")


if __name__ == "__main__":
    sys.exit(main())
