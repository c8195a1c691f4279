"""``sfeditor`` command line: the desktop window (no subcommand, or ``sfeditor gui``) and headless subcommands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


MAX_OUTPUT_BYTES = 4 << 30  # pixels one render command may hold in memory
MAX_SEEDS = 10_000        # images per command: more is a typo (0-1000000000), not a render job


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (at most :data:`MAX_SEEDS`)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                if len(seeds) + hi - lo + 1 > MAX_SEEDS:
                    raise argparse.ArgumentTypeError(f"seed list {text!r} names more than {MAX_SEEDS} images; "
                                                     f"render them in several commands")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad seed list {text!r}: use e.g. '0-7,12'") from None
    if not seeds:
        raise argparse.ArgumentTypeError("empty seed list")
    if len(seeds) > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"seed list {text!r} names more than {MAX_SEEDS} images")
    if any(s < 0 or s >= 2 ** 32 for s in seeds):
        raise argparse.ArgumentTypeError("seeds must be in [0, 2**32)")
    return seeds


def cmd_render(args: argparse.Namespace) -> int:
    import torch

    from .model.checkpoints import load_generator
    from .model.device import pick_device
    from .domains import SHIPPED
    from .images.imageio import make_grid, save_image, save_png, to_uint8
    from .model.style_code import StyleCode
    from .validate import image_extension

    out = Path(args.out)
    grid = not (args.separate or out.suffix == "")
    if grid:
        image_extension(out)          # an unknown extension is an error before anything is rendered
    device = pick_device(args.device)
    from .model.registry import resolve_model

    G = load_generator(resolve_model(args.model), device=device)
    n_images = (len(args.seeds or []) if (args.seeds or not args.codes) else 0) or (0 if args.codes else 8)
    need = n_images * G.size * G.size * 3 * (args.scale ** 2 if grid else 1)
    if need > MAX_OUTPUT_BYTES:
        raise ValueError(f"{n_images} images of {G.size}x{G.size} pixels"
                         f"{f' at --scale {args.scale}' if grid and args.scale > 1 else ''} need "
                         f"{need / 2 ** 30:.1f} GiB; render fewer per command (at most "
                         f"{MAX_OUTPUT_BYTES / 2 ** 30:.0f} GiB)")
    psi = args.truncation
    if psi is None and (args.seeds or not args.codes):
        from .model.truncation import truncation_for

        psi, why = truncation_for(args.model, args.model)
        print(f"truncation psi = {psi:g} ({why}; --truncation to change)", file=sys.stderr)
    codes, names = [], []
    with torch.no_grad():
        for path in args.codes or []:
            code = StyleCode.load(path)
            if code.layout.dims != G.layout.dims:
                raise ValueError(f"{path}: code was made for a different generator (|S| {code.layout.size} "
                                 f"vs {G.layout.size})")
            codes.append(code.to(device))
            names += [f"{Path(path).stem}_{i}" for i in range(len(code))]
        if args.seeds or not codes:
            seeds = args.seeds or list(range(8))
            for seed in seeds:
                codes.append(G.styles(G.sample_w(1, seed=seed, truncation=psi)))
                names.append(f"seed{seed:06d}")
        images = []
        code = StyleCode.cat(codes)
        for i in range(0, len(code), args.batch):
            images.append(to_uint8(G.synthesis(code[i:i + args.batch], noise_mode=args.noise_mode)))
    import numpy as np

    images = np.concatenate(images)
    if not grid:
        out.mkdir(parents=True, exist_ok=True)
        for name, img in zip(names, images):
            save_png(out / f"{name}.png", img)
        print(f"wrote {len(images)} images to {out}/")
    else:
        save_image(out, make_grid(images, cols=args.cols, scale=args.scale))
        print(f"wrote {len(images)} images as a grid to {out}")
    if args.save_codes:
        code.detach().to("cpu").save(args.save_codes)
        print(f"saved {len(code)} style codes to {args.save_codes}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .model.checkpoints import read_checkpoint, resolve_source

    from .model.registry import resolve_model

    path = resolve_source(resolve_model(args.model))
    data = read_checkpoint(path)
    cfg = data.config
    from .model.style_code import StyleLayout

    layout = StyleLayout.for_channels(cfg.channels)
    print(f"file:        {path}")
    print(f"format:      {data.format}")
    print(f"resolution:  {cfg.size}x{cfg.size}")
    print(f"w_dim:       {cfg.style_dim}   mapping layers: {cfg.n_mlp}")
    print(f"channels:    {', '.join(f'{r}:{c}' for r, c in sorted(cfg.channels.items()))}")
    print(f"S space:     {len(layout.conv_dims)} conv + {len(layout.rgb_dims)} rgb layers, "
          f"|S| = {layout.conv_size} + {layout.size - layout.conv_size} = {layout.size}")
    print(f"w+ entries:  {layout.n_latent}")
    print(f"mean w:      {'stored' if data.w_avg is not None else 'not stored (computed from 4096 z on load)'}")
    if data.prior is not None:
        print(f"z -> w:      mixture prior, {data.prior.n_components} Gaussians of rank {data.prior.rank} "
              f"(the mapping MLP is not used; truncation pulls toward each sample's own component)")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from .ui.app import run_app

    return run_app(args)


def build_parser() -> argparse.ArgumentParser:
    from .validate import MAX_SCALE, device_arg, float_in, int_in

    p = argparse.ArgumentParser(prog="sfeditor", description="StyleFusion editor. Without a subcommand: opens the desktop window.")
    p.add_argument("--version", action="version", version=f"sfeditor {__import__('sfeditor').__version__}")
    sub = p.add_subparsers(dest="command")

    r = sub.add_parser("render", help="render seeds or saved style codes to PNG")
    r.add_argument("--model", "-m", default="toy-faces", help="checkpoint path or shipped domain (default toy-faces)")
    r.add_argument("--seeds", "-s", type=parse_seeds, help="seed list, e.g. '0-7,12' (default 0-7)")
    r.add_argument("--codes", nargs="*", help="saved style-code files (.pt) to render")
    r.add_argument("--truncation", "-t", type=float_in(-10, 10),
                   help="psi (default: the domain's, paper A.6; 1.0 for files)")
    r.add_argument("--out", "-o", default="render.png",
                   help="grid picture (format from the extension: .png, .jpg, .webp, .bmp, .tif), or a folder for "
                        "one PNG per image")
    r.add_argument("--separate", action="store_true", help="one PNG per image (out is a folder)")
    r.add_argument("--cols", type=int_in(1, MAX_SEEDS), help="grid columns")
    r.add_argument("--scale", type=int_in(1, MAX_SCALE), default=1, help="nearest-neighbour upscale of the grid")
    r.add_argument("--batch", type=int_in(1, 4096), default=8)
    r.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    r.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda, cuda:1, ...")
    r.add_argument("--save-codes", help="also save the rendered style codes to this file")
    r.set_defaults(func=cmd_render)

    from .ui.app import add_gui_arguments

    g = sub.add_parser("gui", help="open the desktop editor (the default without a subcommand)")
    add_gui_arguments(g)
    g.set_defaults(func=cmd_gui)

    i = sub.add_parser("info", help="describe a checkpoint (format, architecture, S layout)")
    i.add_argument("model", help="checkpoint path or shipped domain")
    i.set_defaults(func=cmd_info)

    from .cli_images import add_parsers as _add_image_parsers   # invert, edit, transfer

    _add_image_parsers(sub)

    from .cli_models import add_parser as _add_models_parser   # models

    _add_models_parser(sub)
    return p


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:2000]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["gui", *(argv or [])]) if argv else parser.parse_args(["gui"])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"sfeditor {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RecursionError:
        print(f"sfeditor {args.command}: error: an input file is nested too deeply to be real", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"sfeditor {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
