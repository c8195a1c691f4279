"""``sfeditor-train``: training jobs (toy generators, region oracles, ...), each resumable."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from .recipe import add_run_flags, flag_overrides

DOMAINS = ["toy-faces", "toy-cars"]


@dataclass
class OracleRecipe:
    """``sfeditor-train oracle``'s recipe (the training itself: :mod:`trainer.oracle`)."""

    domain: str = "toy-faces"
    steps: int = 3000
    batch: int = 32
    lr: float = 3e-3
    seed: int = 0
    threads: int = 1              # the oracle trains on the CPU (trainer.oracle)
    init: str | None = None       # warm start from this oracle file (e.g. the previous renderer version's)

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, not {self.domain!r}")
        if self.steps < 1 or self.batch < 1 or not self.lr > 0:
            raise ValueError("steps, batch and lr must be positive")


@dataclass
class EvaluateGeneratorRecipe:
    """``sfeditor-train evaluate-generator``'s measurement settings (the numbers: :mod:`trainer.evaluate_generator`)."""

    domain: str = ""                  # "" = give --domain
    project: int = 50                 # held-out images to project (coverage)
    project_steps: int | None = None  # projector steps per image (None: the domain's inversion preset, as the editor)
    samples: int = 500                # samples for realism and diversity
    threads: int = 0

    def __post_init__(self) -> None:
        if self.domain not in ("", *DOMAINS):
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, not {self.domain!r}")
        if self.project < 1 or self.samples < 1 or (self.project_steps is not None and self.project_steps < 1):
            raise ValueError("project, project_steps and samples must be >= 1")



def cmd_generator(args: argparse.Namespace) -> int:
    from .common import run_cancellable
    from .generator_loop import train_generator
    from .generator_recipe import GeneratorRecipe
    from .recipe import RecipeError, check_steps_scale, load_recipe

    recipe = load_recipe(args.recipe, GeneratorRecipe,
                         overrides={**flag_overrides(args), "bf16": args.bf16, "data_workers": args.data_workers})
    try:
        recipe = recipe.validate().scaled(check_steps_scale(args.steps_scale))
    except ValueError as e:
        raise RecipeError(f"{args.recipe or 'recipe defaults'}: {e}") from None
    out = args.out or f"runs/generator-{recipe.domain}"
    path, rc = run_cancellable(lambda cancel: train_generator(recipe, out, resume=not args.restart, cancel=cancel,
                                                              from_phase=args.from_phase))
    if rc:
        return rc
    if args.install:
        from sfeditor.model.checkpoints import load_generator, save_generator
        from sfeditor.domains import get_domain

        G = load_generator(path, device="cpu")
        dest = get_domain(recipe.domain).generator_path
        save_generator(G, dest, meta={"domain": recipe.domain, "source_run": str(out)}, half=True)
        print(f"installed fp16 weights to {dest}")
    return 0


def cmd_oracle(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from sfeditor.atomic import atomic_write_text

    from .common import Progress, run_cancellable
    from .oracle import train_oracle
    from .recipe import check_steps_scale, load_recipe, recipe_dict

    recipe = load_recipe(args.recipe, OracleRecipe, overrides=flag_overrides(args))
    scale = check_steps_scale(args.steps_scale)
    if scale != 1.0:
        recipe = replace(recipe, steps=max(1, int(recipe.steps * scale)))
    out = args.out or f"resources/oracles/{recipe.domain}.pt"
    atomic_write_text(f"{out}.options.json", json.dumps({"recipe": recipe_dict(recipe)}, indent=2) + "\n")
    bar = Progress(recipe.steps, f"{recipe.domain} oracle")

    def progress(step, total, info):
        bar.update(step, **{k: v for k, v in (info or {}).items() if isinstance(v, (int, float))})
    metrics, rc = run_cancellable(lambda cancel: train_oracle(
        recipe.domain, out, steps=recipe.steps, batch=recipe.batch, seed=recipe.seed, lr=recipe.lr,
        threads=recipe.threads or None, resume=not args.restart, progress=progress, cancel=cancel,
        init=recipe.init))
    if metrics:
        print(f"\nwrote {out}: held-out pixel accuracy {metrics.get('pixel_accuracy', float('nan')):.4f}")
    return rc


def cmd_evaluate_generator(args: argparse.Namespace) -> int:
    import torch

    from sfeditor.model.checkpoints import load_generator
    from sfeditor.images.toy_encoder import load_toy_encoder

    from .evaluate_generator import evaluate_generator
    from .recipe import load_recipe

    r = load_recipe(args.recipe, EvaluateGeneratorRecipe, overrides=flag_overrides(args, ("domain", "threads")))
    if not r.domain:
        raise ValueError("give --domain (or a recipe with a domain)")
    torch.set_num_threads(r.threads) if r.threads else None
    G = load_generator(args.model or r.domain, device="cpu")
    encoder = load_toy_encoder(args.encoder, G=G) if args.encoder else None
    out = args.out or f"runs/eval-generator-{r.domain}"
    m = evaluate_generator(G, r.domain, out, encoder=encoder, n_project=r.project,
                           project_steps=r.project_steps, n_samples=r.samples)
    print(f"wrote {out}/metrics.json and PNGs; coverage {m['coverage']['w_plus_psnr_db']:.2f} dB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sfeditor-train", description="sfeditor training jobs")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generator", help="train a toy-domain StyleGAN2 (autoencoder -> mapping -> mixing)",
                       description="Train a toy StyleGAN2 from a recipe (trainer/recipes/generator-*.json; "
                                   "keys: trainer/generator_recipe.py). The flags override the recipe.")
    add_run_flags(g, domains=DOMAINS, domain_required=False, out="run folder (default runs/generator-<domain>)")
    g.add_argument("--data-workers", type=int, help="processes rendering the batches (default: the recipe's)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: the recipe's, else where it is native)")
    g.add_argument("--from-phase", choices=["mapping", "mix"],
                   help="rerun an existing run from this phase on (e.g. after changing the mapping recipe)")
    g.add_argument("--install", action="store_true", help="copy the result (fp16) into resources/ when done")
    g.set_defaults(func=cmd_generator)

    e = sub.add_parser("evaluate-generator", help="coverage (W+ projection PSNR), oracle realism, sample grids",
                       description="Measure a generator; the measurement settings (images to project, projector "
                                   "steps, samples) are a recipe's (trainer/recipes/evaluate-generator.json; keys: "
                                   "EvaluateGeneratorRecipe in trainer/cli.py).")
    add_run_flags(e, domains=DOMAINS, domain_required=False, out="output folder (default runs/eval-generator-<domain>)",
                  steps=False, resume=False, device=False, what="measurement")
    e.add_argument("--model", help="generator file (default: the shipped domain)")
    e.add_argument("--encoder", help="toy encoder weights to start projections from")
    e.set_defaults(func=cmd_evaluate_generator)

    o = sub.add_parser("oracle", help="train a toy domain's region oracle on renderer images",
                       description="Train a region oracle (or a segmentation critic: oracle-critic-*.json) "
                                   "from a recipe; the flags override it.")
    add_run_flags(o, domains=DOMAINS, domain_required=False, device=False,
                  out="weights file (default resources/oracles/<domain>.pt)")
    o.set_defaults(func=cmd_oracle)

    from .encoder import add_parsers as _add_encoder_parsers   # encoder
    from .fusion import add_parsers as _add_fusion_parsers     # fusion, hierarchy
    from .fusion_ablation import add_parsers as _add_ablation_parsers   # ablation (trains variants, scores them)
    from .fusion_eval import add_parsers as _add_eval_parsers  # evaluate (reads only)
    from .regions import add_parsers as _add_region_parsers    # regions, regions-eval, regions-prune

    _add_region_parsers(sub)
    _add_fusion_parsers(sub)
    _add_eval_parsers(sub)
    _add_ablation_parsers(sub)
    _add_encoder_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:      # OSError: includes sfeditor.locks.LockedError (run folder in use)
        print(f"sfeditor-train {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
