"""The Sec. 7 ablation (``sfeditor-train ablation``): train the variants of one node, then score them.

For one internal node (toy-cars' ``all``: car vs background) one FusionNet per variant:
full, No Global (LB_align disabled), No Stage 1, No Stage 2, No Stage 3
(:data:`trainer.fusion.ABLATIONS`), one run folder each (``DIR/VARIANT``; training draw
seed S > 0 in ``DIR/seed-S/VARIANT``).  ``--train`` trains (or resumes) the missing
variants first (No Stage 3 first; the full model then takes its stages 1-2 from it),
with the stage-3 settings given (a stage-3 sweep); without it only finished runs are
scored.  Scoring is :mod:`trainer.fusion_eval`'s (read-only): locality, PSNR outside and
region change of a change of either child, paired differences to the full model,
over draws with ``--seeds``, and Fig. 16's grids.

Output folder: ``ablation.md``, ``ablation-fig16a.png``, ``ablation-fig16b.png``,
``metrics.json``, ``report.md``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
import json
from pathlib import Path

from sfeditor.atomic import atomic_write_text
from sfeditor.fusion.blend_stats import sampled_blend_stats
from sfeditor.model.device import choose_bf16
from sfeditor.fusion.fusion_net import FusionNet
from sfeditor.images.imageio import save_png

from .fusion_eval import ScoringRecipe
from sfeditor.validate import float_in
from .fusion import ABLATIONS, FusionRecipe, has_stage3, train_node
from .fusion_eval import (ABLATION_TITLES, ablation_draws, ablation_draws_markdown, ablation_figure,
                          ablation_markdown, ablation_rows, ablation_run_dir, add_judge_args, blend_table,
                          eval_context, load_node_net)

__all__ = ["cmd_ablation", "add_parsers", "variant_nets"]


def variant_nets(args: argparse.Namespace, ctx, root: Path, seed: int) -> dict[str, FusionNet]:
    """The variants of one training draw: trained (or resumed) first with ``--train``, else the finished
    runs found; the main run of the node stands in for the full model of draw 0."""
    nets = {}
    use_bf16 = choose_bf16(args.bf16, ctx.device)[0]
    # No Stage 3 first: the full model then starts its stage 3 from it (its stages 1-2 are the same)
    order = sorted(ABLATIONS, key=lambda v: v != "no_stage3") if args.train else ABLATIONS
    for variant in order:
        run = ablation_run_dir(root, variant, seed)
        if args.train:
            recipe = FusionRecipe(domain=args.domain, node=args.node, ablation=variant, hidden=args.hidden,
                                  coarse_layers=args.coarse_layers, stage3_target=args.stage3_target, align_reg3=args.align_reg_stage3,
                                  local_scale=args.local_scale, local_lambdas=dict(args.local_lambdas),
                                  steps_scale=args.steps_scale, generator=args.generator or "",
                                  regions=args.regions or "", device=args.device, bf16=use_bf16,
                                  threads=args.threads, seed=seed)
            branch = (ablation_run_dir(root, "no_stage3", seed)
                      if variant == "full" and has_stage3(recipe, ctx.regions.tree) else None)
            nets[variant] = train_node(recipe, run, G=ctx.G, regions=ctx.regions, stage3_from=branch)
        elif (run / "net.pt").exists():
            nets[variant] = load_node_net(run / "net.pt").to(ctx.device)
        elif variant == "full" and seed == 0 and Path(f"runs/fusion-{args.domain}/{args.node}/net.pt").exists():
            # the main run of the node is the full model (`sfeditor-train fusion` without --ablation)
            nets[variant] = load_node_net(Path(f"runs/fusion-{args.domain}/{args.node}/net.pt")).to(ctx.device)
    return {v: nets[v] for v in ABLATIONS if v in nets}     # the table's order


@dataclass
class AblationRecipe(ScoringRecipe):
    """``sfeditor-train ablation``'s recipe: the scoring settings and how the variants are (or were) trained."""

    hidden: int = 0                   # FusionNet MLP width (0: the paper's 3x the widest S layer)
    coarse_layers: int = 5            # LB_align layers (A.4)
    stage3_target: str = "inputs"     # stage 3's L_fusion against the inputs (Eq. 7 as written) or the aligned codes
    align_reg_stage3: float | None = None   # stage 3's lambda_alignReg (None: A.2's 1)
    local_scale: float = 1.0          # multiplies A.2's lambda_local
    local_lambdas: dict[str, float] = field(default_factory=dict)   # child -> lambda_local, before local_scale

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage3_target not in ("inputs", "aligned"):
            raise ValueError(f"stage3_target must be inputs or aligned, not {self.stage3_target!r}")
        if self.hidden < 0 or self.coarse_layers < 1 or not self.local_scale >= 0:
            raise ValueError("hidden >= 0, coarse_layers >= 1 and local_scale >= 0, please")


def cmd_ablation(args: argparse.Namespace) -> int:
    from .recipe import apply_recipe

    apply_recipe(args, AblationRecipe, names=())
    ctx = eval_context(args, "ablation-eval")
    G, judge, out, truncation, amp = ctx.G, ctx.judge, ctx.out, ctx.truncation, ctx.amp
    node = args.node
    root = Path(args.dir or f"runs/fusion-{args.domain}-ablation")
    seeds = list(dict.fromkeys(args.seeds or [0]))    # training draws, in order, no repeats
    report = [f"# StyleFusion Sec. 7 ablation: {args.domain}\n",
              f"judge: {judge.kind}; truncation {truncation}; {args.samples} edits per code; seed {args.seed}\n"]
    metrics: dict = {"domain": args.domain, "judge": judge.kind, "samples": args.samples, "seed": args.seed}
    nets = variant_nets(args, ctx, root, seeds[0])
    if nets:
        rows = ablation_rows(G, nets, ctx.regions.tree, node, judge, args.samples, args.batch, truncation,
                             args.seed, amp)
        kids = list(next(iter(rows.values())).keys())
        table = ablation_markdown(rows, kids)
        if len(seeds) > 1:
            table = f"Training draw seed {seeds[0]} (the figures and blend table are this draw's):\n\n" + table
        vstats = {v: sampled_blend_stats(net, G, min(args.samples, 64), truncation, args.seed,
                                         align=v != "no_global") for v, net in nets.items()}
        metrics["ablation_blend"] = {k: v.to_dict() for k, v in vstats.items()}
        table += ("\nBlend coefficients of each variant:\n\n"
                  + blend_table({ABLATION_TITLES.get(v, v): st for v, st in vstats.items()},
                                {ABLATION_TITLES.get(v, v): kids for v in vstats}, label="variant"))
        figures = []
        for changed, letter in ((kids[1], "a"), (kids[0], "b")):
            save_png(out / f"ablation-fig16{letter}.png",
                     ablation_figure(G, nets, ctx.regions.tree, node, changed, truncation=truncation,
                                     seed=args.seed, amp=amp))
            figures.append(f"`ablation-fig16{letter}.png` ({changed} changes)")
        table += f"\nImages as in Fig. 16: {', '.join(figures)}.\n"
        metrics["ablation"] = {"node": node, "runs": str(root), "seed": seeds[0], "rows": rows}
        missing = {seeds[0]: [v for v in ABLATIONS if v not in nets]}
        if len(seeds) > 1:
            draw_rows = {seeds[0]: rows}
            for seed in seeds[1:]:
                more = variant_nets(args, ctx, root, seed)
                missing[seed] = [v for v in ABLATIONS if v not in more]
                if "full" in more:
                    draw_rows[seed] = ablation_rows(G, more, ctx.regions.tree, node, judge, args.samples,
                                                    args.batch, truncation, args.seed, amp)
            metrics["ablation"]["draws"] = {str(k): v for k, v in draw_rows.items()}
            if len(draw_rows) > 1 and "full" in rows:
                summary = ablation_draws(draw_rows, kids)
                metrics["ablation"]["over_draws"] = summary
                table = ("### Over training draws\n\n" + ablation_draws_markdown(summary, kids)
                         + "\n### One draw\n\n" + table)
            else:
                table = ("Over training draws: fewer than two draws with a full model; "
                         f"runs per draw under {root} (seed S > 0 in seed-S/).\n\n" + table)
        atomic_write_text(out / "ablation.md", f"# Sec. 7 ablation: {args.domain}, node {node}\n\n{table}")
        report += [f"\n## Ablation (Sec. 7), node `{node}`, runs in `{root}`\n\n",
                   "Change one child's code (random base); locality and preservation as in "
                   "`sfeditor-train evaluate`'s old reading (the base image's region).\n\n", table]
        for seed, miss in missing.items():
            if miss:
                report.append(f"\nnot trained yet{f' (draw seed {seed})' if len(seeds) > 1 else ''}: "
                              f"{', '.join(miss)}\n")
    else:
        report.append(f"\n## Ablation\n\nno finished variant runs in {root} (add --train)\n")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=float) + "\n")
    atomic_write_text(out / "report.md", "".join(report))
    print(f"wrote {out / 'report.md'}")
    return 0


def add_parsers(sub) -> None:
    """Register ``ablation``."""
    a = sub.add_parser("ablation", help="Sec. 7 ablation of one node: train (--train) or load the variants "
                                        "(full, No Global, No Stage 1/2/3), score them, Fig. 16")
    add_judge_args(a)
    a.add_argument("--node", default="all", help="internal node whose variants are compared (default all)")
    a.add_argument("--dir", help="variant runs (default runs/fusion-<domain>-ablation/<variant>)")
    a.add_argument("--out", help="output folder (default runs/fusion-ablation-eval-<domain>)")
    a.add_argument("--train", action="store_true", help="train (or resume) the missing variants first")
    a.add_argument("--steps-scale", type=float_in(0, 1000, open_lo=True), default=1.0,
                   help="multiply every stage's steps of the variants")
    a.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="training draws of every variant (default: one, seed 0, in DIR/VARIANT; seed S > 0 in "
                        "DIR/seed-S/VARIANT): the table adds each variant's difference to the full model per draw "
                        "and its standard error over draws")
    a.set_defaults(func=cmd_ablation)
