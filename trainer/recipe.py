"""Recipe files: every experiment knob of a ``sfeditor-train`` command, in one JSON or TOML file.

A recipe is a flat table whose keys are the fields of the command's recipe dataclass(es)
(:class:`trainer.generator_recipe.GeneratorRecipe`, :class:`trainer.fusion.FusionRecipe`, ...).
Loading validates it: an unknown key is refused by name, every value is checked against its
field's type (an int where a float is asked is fine, a string is not), and every message names
the file.  Keys a recipe leaves out keep the dataclass defaults.  The shipped recipes live in
``trainer/recipes/`` and reproduce the shipped artifacts (``docs/notes/recipes.md``); a run
records the recipe it ran in its ``options.json``.

A few command-line flags (domain, output, device, threads, steps scale, resume) override a
recipe's values: what users change day to day.  The rest, the seed included, is the recipe's: a
variant is a new recipe file (copy a shipped one and change it), so every run's settings are one
file that its ``options.json`` repeats.
"""
from __future__ import annotations

import dataclasses
import math
import json
import types
import typing
from pathlib import Path
from typing import Any

from sfeditor.validate import device_arg, float_in, int_in

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the problem."""


def shipped_recipe(name: str) -> Path:
    """``trainer/recipes/<name>`` (``.json`` or ``.toml`` added when ``name`` has no suffix)."""
    p = RECIPES_DIR / name
    if p.suffix in (".json", ".toml"):
        return p
    for suffix in (".json", ".toml"):           # appended: "generator-toy-faces-v4.2" has a dot of its own
        if (RECIPES_DIR / f"{name}{suffix}").is_file():
            return RECIPES_DIR / f"{name}{suffix}"
    return RECIPES_DIR / f"{name}.json"


def resolve_recipe_path(path: str | Path) -> Path:
    """A path as given, or the name of a shipped recipe (``generator-toy-faces-v4.2``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = shipped_recipe(str(path))
    if shipped.is_file() and not p.parent.name:
        return shipped
    raise RecipeError(f"{path}: no such recipe file (nor a shipped recipe in {RECIPES_DIR})")


def read_recipe_file(path: str | Path) -> dict:
    """The table in a ``.json`` or ``.toml`` recipe file (a top-level ``"comment"`` key is ignored)."""
    p = resolve_recipe_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{p}: cannot read the recipe ({e})") from None
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:         # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise RecipeError(f"{p}: not a valid {'TOML' if p.suffix == '.toml' else 'JSON'} recipe ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a recipe is a table of settings, not a {type(data).__name__}")
    data.pop("comment", None)
    return data


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check(value: Any, hint, where: str) -> Any:
    """``value`` converted to the field type ``hint`` (lists to tuples, JSON's string keys kept),
    or RecipeError naming ``where``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _check(value, opt, where)
            except RecipeError as e:
                errors.append(e)
        raise RecipeError(f"{where} must be {' or '.join(_type_name(o) for o in options)}, not {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise RecipeError(f"{where} must be a finite number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string, not {value!r}")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a table, not {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2:
            return {k: _check(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
        return dict(value)
    if hint in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where} must be a list, not {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise RecipeError(f"{where} must have {len(args)} items, not {len(value)}")
            items = [_check(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        elif args:
            items = [_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            items = list(value)
        return tuple(items) if (hint is tuple or origin is tuple) else items
    raise RecipeError(f"{where}: unsupported field type {hint!r}")   # pragma: no cover (a schema bug)


def fields_of(cls) -> dict[str, Any]:
    """Field name -> resolved type hint of a recipe dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_keys(data: dict, allowed: set[str], source: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecipeError(f"{source}: unknown recipe key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(repr(k) for k in unknown)} (known: {', '.join(sorted(allowed))})")


def _check_range(name: str, value: Any, where: str) -> None:
    """Ranges every recipe shares by field name: batch sizes and ``*_every`` intervals >= 1, step
    counts >= 0, the learning rate > 0 (other ``*_lr`` >= 0, 0 meaning the default)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if (name == "batch" or name.endswith("_batch") or name.endswith("_every")) and value < 1:
        raise RecipeError(f"{where} must be at least 1, not {value!r}")
    if (name == "steps" or name.endswith("_steps")) and value < 0:
        raise RecipeError(f"{where} must not be negative, not {value!r}")
    if name == "lr" and not value > 0:
        raise RecipeError(f"{where} must be a positive learning rate, not {value!r}")
    if name.endswith("_lr") and value < 0:       # 0: the command's default rate
        raise RecipeError(f"{where} must not be negative, not {value!r}")


def build(cls, data: dict, source: str, **overrides):
    """An instance of the dataclass ``cls`` from the table ``data`` (already key-checked against it)
    with ``overrides`` (flags; None = not given) on top; values type-checked, ``__post_init__``
    errors reported with ``source``."""
    types_ = fields_of(cls)
    values = {k: _check(v, types_[k], f"{source}: {k}") for k, v in data.items() if k in types_}
    values.update({k: v for k, v in overrides.items() if v is not None})
    for k, v in values.items():
        _check_range(k, v, f"{source}: {k}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{source}: {e}") from None


def load_recipe(path: str | Path | None, *classes, overrides: dict | None = None):
    """Read the recipe at ``path`` (None: every default) into one instance of each dataclass in
    ``classes`` (a flat table: each key goes to the class that has it; a key none has is refused).
    ``overrides`` (field -> value, None = keep) are applied to every class that has the field.
    Returns one instance, or a tuple of them when several classes are given."""
    data = read_recipe_file(path) if path is not None else {}
    source = str(resolve_recipe_path(path)) if path is not None else "recipe defaults"
    allowed = set().union(*(fields_of(c) for c in classes))
    check_keys(data, allowed, source)
    out = []
    for cls in classes:
        names = fields_of(cls)
        mine = {k: v for k, v in (overrides or {}).items() if k in names}
        out.append(build(cls, {k: v for k, v in data.items() if k in names}, source, **mine))
    return out[0] if len(out) == 1 else tuple(out)


def recipe_dict(obj) -> dict:
    """A recipe dataclass as a JSON-safe table (what ``options.json`` records; loads back the same)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def add_recipe_flag(p, what: str = "") -> None:
    p.add_argument("--recipe", metavar="FILE", help=f"recipe file (JSON/TOML; trainer/recipes/) with every "
                   f"{what or 'training'} setting; flags below override it")


__all__ = ["RecipeError", "RECIPES_DIR", "shipped_recipe", "resolve_recipe_path", "read_recipe_file",
           "load_recipe", "build", "check_keys", "fields_of", "recipe_dict", "add_recipe_flag"]


# ------------------------------------------------------------------ CLI
def add_run_flags(p, *, domains=None, domain_required: bool = True, out: str = "", steps: bool = True,
                  resume: bool = True, device: bool = True, threads: bool = True, what: str = "") -> None:
    """The day-to-day flags every training command shares; each overrides its recipe's value."""
    add_recipe_flag(p, what)
    p.add_argument("--domain", required=domain_required, choices=domains,
                   help=None if domain_required else "domain (default: the recipe's)")
    if out:
        p.add_argument("--out", help=out)
    if device:
        p.add_argument("--device", type=device_arg, help="cpu, cuda, auto (default: the recipe's)")
    if threads:
        p.add_argument("--threads", type=int_in(0, 1024), help="torch CPU threads (default: the recipe's; 0 = torch's)")
    if steps:
        p.add_argument("--steps-scale", type=float_in(0, 1000, open_lo=True), default=1.0,
                       help="multiply the recipe's steps (quick trials), e.g. 0.01")
    if resume:
        p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint (default: resume)")


def flag_overrides(args, names=("domain", "device", "threads", "seed")) -> dict:
    """The run flags the user gave (``None`` = not given), by recipe field name."""
    return {n: getattr(args, n, None) for n in names}


def apply_recipe(args, cls, names=("domain", "device", "threads", "seed")):
    """Load ``args.recipe`` (None: the defaults) into ``cls`` with the given flags on top, and set
    every recipe field on ``args`` (so a command's body reads its settings from one place).
    Returns the recipe."""
    recipe = load_recipe(getattr(args, "recipe", None), cls, overrides=flag_overrides(args, names))
    for k, v in dataclasses.asdict(recipe).items():
        setattr(args, k, v)
    return recipe


def check_steps_scale(scale: float) -> float:
    if not (scale > 0) or scale != scale or scale == float("inf"):
        raise RecipeError(f"--steps-scale must be a positive number, not {scale}")
    return scale


__all__ += ["add_run_flags", "flag_overrides", "apply_recipe", "check_steps_scale"]
