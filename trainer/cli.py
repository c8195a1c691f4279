"""``sfeditor-train``: training jobs (toy generators, region oracles, ...), each resumable."""
from __future__ import annotations

import argparse
import sys

from sfeditor.validate import device_arg, float_in, int_in


def cmd_generator(args: argparse.Namespace) -> int:
    from .common import run_cancellable
    from .generator import GeneratorRecipe, train_generator

    recipe = GeneratorRecipe(domain=args.domain, ae_steps=args.ae_steps, mapping_steps=args.mapping_steps,
                             mix_steps=args.mix_steps, batch=args.batch, seed=args.seed, threads=args.threads,
                             device=args.device, bf16=args.bf16, region_weight=args.region_weight,
                             ae_adv_weight=args.ae_adv_weight, ae_adv_start=args.ae_adv_start,
                             init_from=args.init_from or "", seg_weight=args.seg_weight,
                             seg_critic=args.seg_critic or "", mapping_mode=args.mapping_mode,
                             swap_weight=args.swap_weight, swap_focus=args.swap_focus,
                             swap_anchor=args.swap_anchor, swap_leak=args.swap_leak,
                             channel_local=args.channel_local, channel_local_res=args.channel_local_res,
                             feat_weight=args.feat_weight, data_workers=args.data_workers,
                             mapping_fit=args.mapping_fit, mapping_project_steps=args.mapping_project_steps,
                             mapping_project_lr=args.mapping_project_lr,
                             mapping_components=args.mapping_components, mapping_rank=args.mapping_rank,
                             mapping_project_images=args.mapping_project_images,
                             ae_trainable=tuple(x.strip() for x in (args.ae_trainable or "").split(",") if x.strip()))
    if args.mapping_fit_images is not None:
        recipe.mapping_fit_images = args.mapping_fit_images
    if recipe.mapping_fit_images < 64:
        raise SystemExit(f"--mapping-fit-images must be >= 64 (whole batches of 64), not {recipe.mapping_fit_images}")
    if recipe.mapping_components < 1 or recipe.mapping_rank < 1:
        raise SystemExit("--mapping-components and --mapping-rank must be >= 1")
    if recipe.mapping_project_images < 64:
        raise SystemExit(f"--mapping-project-images must be >= 64, not {recipe.mapping_project_images}")
    if recipe.mapping_fit.startswith("mixture") and recipe.mapping_fit_images < 16 * recipe.mapping_components:
        raise SystemExit(f"--mapping-fit mixture with {recipe.mapping_components} components needs at least "
                         f"{16 * recipe.mapping_components} --mapping-fit-images")
    if recipe.mapping_project_steps < 1 or recipe.mapping_project_lr < 0:
        raise SystemExit("--mapping-project-steps must be >= 1 and --mapping-project-lr >= 0")
    if recipe.mapping_fit != "encoder" and recipe.mapping_mode != "gaussian":
        raise SystemExit(f"--mapping-fit {recipe.mapping_fit} fits the Gaussian mapping: it needs --mapping-mode gaussian")
    if recipe.data_workers < 1:
        raise SystemExit(f"--data-workers must be >= 1, not {recipe.data_workers}")
    if recipe.swap_weight < 0 or recipe.swap_focus < 0 or recipe.swap_leak < 0:
        raise SystemExit(f"--swap-weight, --swap-focus and --swap-leak must be >= 0, not {recipe.swap_weight}, "
                         f"{recipe.swap_focus}, {recipe.swap_leak}")
    if recipe.swap_leak > 0 and recipe.swap_weight <= 0:
        raise SystemExit("--swap-leak is a term of the region-swap loss: it needs --swap-weight > 0")
    if recipe.channel_local < 0 or recipe.channel_local_res < 4:
        raise SystemExit(f"--channel-local must be >= 0 and --channel-local-res >= 4, not {recipe.channel_local}, "
                         f"{recipe.channel_local_res}")
    if recipe.feat_weight < 0:
        raise SystemExit(f"--feat-weight must be >= 0, not {recipe.feat_weight}")
    if recipe.feat_weight > 0 and not recipe.seg_critic:
        raise SystemExit("--feat-weight needs --seg-critic (its features are the perceptual loss's)")
    if recipe.seg_weight > 0 and not recipe.seg_critic:
        raise SystemExit("--seg-weight needs --seg-critic (sfeditor-train oracle --domain D --seed 1 --out FILE)")
    if args.ae_lr is not None:
        recipe.ae_lr = args.ae_lr
    if args.steps_scale != 1.0:
        recipe.ae_steps = max(1, int(recipe.ae_steps * args.steps_scale))
        recipe.ae_adv_start = int(recipe.ae_adv_start * args.steps_scale)
        recipe.mapping_steps = max(1, int(recipe.mapping_steps * args.steps_scale))
        recipe.mix_steps = int(recipe.mix_steps * args.steps_scale)
    out = args.out or f"runs/generator-{args.domain}"
    path, rc = run_cancellable(lambda cancel: train_generator(recipe, out, resume=not args.restart, cancel=cancel,
                                                              from_phase=args.from_phase))
    if rc:
        return rc
    if args.install:
        from sfeditor.model.checkpoints import load_generator, save_generator
        from sfeditor.domains import get_domain

        G = load_generator(path, device="cpu")
        dest = get_domain(args.domain).generator_path
        save_generator(G, dest, meta={"domain": args.domain, "source_run": str(out)}, half=True)
        print(f"installed fp16 weights to {dest}")
    return 0


def cmd_oracle(args: argparse.Namespace) -> int:
    from .oracle import train_oracle

    from .common import Progress, run_cancellable

    out = args.out or f"resources/oracles/{args.domain}.pt"
    bar = Progress(args.steps, f"{args.domain} oracle")

    def progress(step, total, info):
        bar.update(step, **{k: v for k, v in (info or {}).items() if isinstance(v, (int, float))})
    metrics, rc = run_cancellable(lambda cancel: train_oracle(args.domain, out, steps=args.steps, batch=args.batch,
                                                              seed=args.seed, resume=not args.restart,
                                                              progress=progress, cancel=cancel))
    if metrics:
        print(f"\nwrote {out}: held-out pixel accuracy {metrics.get('pixel_accuracy', float('nan')):.4f}")
    return rc


def cmd_evaluate_generator(args: argparse.Namespace) -> int:
    import torch

    from sfeditor.model.checkpoints import load_generator
    from sfeditor.images.toy_encoder import load_toy_encoder

    from .evaluate_generator import evaluate_generator

    torch.set_num_threads(args.threads) if args.threads else None
    G = load_generator(args.model or args.domain, device="cpu")
    encoder = load_toy_encoder(args.encoder, G=G) if args.encoder else None
    out = args.out or f"runs/eval-generator-{args.domain}"
    m = evaluate_generator(G, args.domain, out, encoder=encoder, n_project=args.project,
                           project_steps=args.project_steps, n_samples=args.samples)
    print(f"wrote {out}/metrics.json and PNGs; coverage {m['coverage']['w_plus_psnr_db']:.2f} dB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sfeditor-train", description="sfeditor training jobs")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generator", help="train a toy-domain StyleGAN2 (autoencoder -> mapping -> mixing)")
    g.add_argument("--domain", required=True, choices=["toy-faces", "toy-cars"])
    g.add_argument("--out", help="run folder (default runs/generator-<domain>)")
    g.add_argument("--ae-steps", type=int, default=8000)
    g.add_argument("--mapping-steps", type=int, default=3000)
    g.add_argument("--mix-steps", type=int, default=1500)
    g.add_argument("--steps-scale", type=float_in(0, 1000, open_lo=True), default=1.0, help="multiply every phase's steps (quick trials)")
    g.add_argument("--batch", type=int_in(1, 4096), default=16)
    g.add_argument("--region-weight", type=float, default=1.0,
                   help="reconstruction weight of small regions' pixels (eyes, mouth; wheels), e.g. 4")
    g.add_argument("--ae-lr", type=float, default=None, help="autoencoder learning rate (default 0.0015)")
    g.add_argument("--ae-adv-weight", type=float, default=0.0,
                   help="weight of a patch-discriminator term on the reconstructions (sharper details), e.g. 0.1")
    g.add_argument("--ae-adv-start", type=int, default=0, help="autoencoder step from which it is used")
    g.add_argument("--seg-weight", type=float, default=0.0,
                   help="weight of a semantic loss: a frozen segmentation critic's cross-entropy on the "
                        "reconstructions against the renderer's labels, e.g. 0.2")
    g.add_argument("--ae-trainable", metavar="PREFIXES",
                   help="fine-tune only the generator parameters whose names start with one of these "
                        "comma-separated prefixes (the encoder frozen) in the autoencoder phase, e.g. "
                        "convs.7.conv.weight,convs.7.activate,to_rgbs.3.conv.weight,to_rgbs.3.bias: the image head "
                        "only, so the DeepPixels, the S space and the files built on them stay valid (the log says)")
    g.add_argument("--feat-weight", type=float, default=0.0,
                   help="weight of a perceptual loss on the reconstructions with the segmentation critic's "
                        "encoder features (needs --seg-critic), e.g. 0.2")
    g.add_argument("--seg-critic", help="the critic's weights: an oracle-architecture net trained with another "
                   "seed (sfeditor-train oracle --seed 1 --out FILE); the shipped oracle is refused")
    g.add_argument("--swap-weight", type=float, default=0.0,
                   help="weight of the region-swap loss: one group of style channels per region (and one for "
                        "the pose) must carry that region alone, e.g. 1 (builds the region-local channels "
                        "StyleFusion relies on)")
    g.add_argument("--swap-focus", type=float, default=0.0,
                   help="extra weight of the pixels a region swap changes (1 + F), so small regions' swaps "
                        "(eyes, mouth) count, e.g. 10")
    g.add_argument("--swap-anchor", action="store_true",
                   help="the pixels a region swap leaves alone must match A's own reconstruction (not the "
                        "render), so the swap loss measures only what a group leaks outside its region")
    g.add_argument("--swap-leak", type=float, default=0.0,
                   help="add this weight x the swaps' leak ratio (share of a swap's change, against A's own "
                        "reconstruction, outside the pixels it should change: the locality the evaluation "
                        "measures) to the region-swap loss, e.g. 0.2")
    g.add_argument("--channel-local", type=float, default=0.0,
                   help="weight of the channel-locality loss: each region group's style channels (as in "
                        "--swap-weight) keep their activations inside that region, so Eq. 8's fusion weights "
                        "see channels for small regions (eyes, mouth), e.g. 0.2")
    g.add_argument("--channel-local-res", type=int, default=16,
                   help="the channel-locality loss counts layers whose feature maps are at least this wide")
    g.add_argument("--mapping-mode", choices=["gaussian", "gan"], default="gaussian",
                   help="z -> w: regress onto a Gaussian fit of the encoder codes (default) or a latent GAN")
    g.add_argument("--mapping-fit", choices=["encoder", "projected", "projected-mean", "mixture",
                                                     "mixture-projected-mean"], default="encoder",
                   help="codes the Gaussian mapping is fitted to: the encoder's (default); the same renders "
                        "projected into W (sharper but less coherent samples); or projected-mean: their mean "
                        "with the encoder codes' covariance (sharper, coherent). Projection costs ~1.1 s per "
                        "step per 64 images on 2 cores. mixture: no regression; a Gaussian mixture over the "
                        "encoder codes replaces the mapping MLP (the shipped toy mappings, v4.2: --mapping-fit-images 32768; "
                        "the EM fit shows progress, stops on Ctrl-C and resumes); mixture-projected-mean: that "
                        "mixture moved by the mean move projection makes from the encoder's codes "
                        "(--mapping-project-images renders)")
    g.add_argument("--mapping-project-images", type=int, default=512,
                   help="--mapping-fit mixture-projected-mean: renders projected for the mean move (default 512)")
    g.add_argument("--mapping-components", type=int, default=64,
                   help="--mapping-fit mixture: number of Gaussians (default 64)")
    g.add_argument("--mapping-rank", type=int, default=64,
                   help="--mapping-fit mixture: principal directions kept per Gaussian (default 64)")
    g.add_argument("--mapping-fit-images", type=int, default=None,
                   help="renders the mapping's Gaussian is fitted to, in batches of 64 (default 4096; "
                        "with --mapping-fit projected e.g. 512)")
    g.add_argument("--mapping-project-steps", type=int, default=100,
                   help="--mapping-fit projected / projected-mean: Adam steps per batch of renders")
    g.add_argument("--mapping-project-lr", type=float, default=0.0,
                   help="--mapping-fit projected / projected-mean: its learning rate (default: the domain's inversion preset)")
    g.add_argument("--from-phase", choices=["mapping", "mix"],
                   help="rerun an existing run from this phase on (e.g. after changing the mapping recipe)")
    g.add_argument("--init-from", help="start from another generator run's weights (a run folder or checkpoint)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    g.add_argument("--device", default="auto", type=device_arg)
    g.add_argument("--data-workers", type=int, default=1,
                   help="processes that render the training batches (1 = one background thread); on a GPU "
                        "the renderer is the bottleneck: e.g. 4")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: on where the CPU/GPU runs bf16 natively, off where it is "
                        "emulated and slower)")
    g.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    g.add_argument("--install", action="store_true", help="copy the result (fp16) into resources/ when done")
    g.set_defaults(func=cmd_generator)

    e = sub.add_parser("evaluate-generator", help="coverage (W+ projection PSNR), oracle realism, sample grids")
    e.add_argument("--domain", required=True, choices=["toy-faces", "toy-cars"])
    e.add_argument("--model", help="generator file (default: the shipped domain)")
    e.add_argument("--encoder", help="toy encoder weights to start projections from")
    e.add_argument("--out")
    e.add_argument("--project", type=int, default=50, help="held-out images to project")
    e.add_argument("--project-steps", type=int, default=None,
                   help="projector steps per image (default: the domain's inversion preset, as in the editor)")
    e.add_argument("--samples", type=int, default=500)
    e.add_argument("--threads", type=int, default=0)
    e.set_defaults(func=cmd_evaluate_generator)

    o = sub.add_parser("oracle", help="train a toy domain's region oracle on renderer images")
    o.add_argument("--domain", required=True, choices=["toy-faces", "toy-cars"])
    o.add_argument("--out")
    o.add_argument("--steps", type=int, default=3000)
    o.add_argument("--batch", type=int_in(1, 4096), default=32)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--restart", action="store_true")
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
