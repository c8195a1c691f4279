"""``sfeditor invert | edit | transfer``: real-image commands (paper Sec. 6).

Wire into ``sfeditor/cli.py``'s ``build_parser`` with::

    from .cli_images import add_parsers as _add_image_parsers
    _add_image_parsers(sub)

Each subcommand sets ``func``; errors are ``ValueError`` / ``FileNotFoundError``
(``ImageError`` and ``AlignmentError`` are ``ValueError``), which ``cli.main``
reports as ``sfeditor <command>: error: ...`` with exit status 2.  A
cancelled inversion (Ctrl-C) returns 130.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_parsers", "cmd_invert", "cmd_edit", "cmd_transfer"]


# ------------------------------------------------------------- helpers
def _load_G(args):
    from .model.checkpoints import load_generator
    from .model.device import pick_device

    from .model.registry import resolve_model

    G = load_generator(resolve_model(args.model), device=pick_device(args.device))
    G.eval()
    return G


def _domain(args) -> str | None:
    """``--domain``, else the shipped model's name, else the domain the model was installed for with
    ``sfeditor models`` (``-m stylegan2-car`` is a car model: its photos are letterboxed, as
    tests/model/test_fullsize_chain.py and bench/fullsize_chain.py found they were not; issue 40)."""
    from .domains import SHIPPED
    from .model.registry import domain_of_file

    if getattr(args, "domain", None):
        return args.domain
    return args.model if args.model in SHIPPED else domain_of_file(args.model)


def _rect(text: str | None):
    if not text:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad rectangle {text!r}: use X,Y,WIDTH,HEIGHT") from None
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"bad rectangle {text!r}: use X,Y,WIDTH,HEIGHT")
    return vals


def _settings(args, G):
    """The generator's default projector settings (InversionSettings.for_generator), then the flags given."""
    from .images.inversion import InversionSettings

    given = {"steps": args.steps, "lr": args.lr, "w_phase": args.w_phase, "msssim_weight": args.msssim,
             "bf16": args.bf16}
    over = {k: v for k, v in given.items() if v is not None}
    over.update(space=args.space, pixel_loss="l1" if args.l1 else "mse", optimize_noise=args.noise,
                seed=args.seed, loss_size=args.loss_size)
    return InversionSettings.for_generator(G, _domain(args), **over)


def _encoder(args, G):
    """The initial-guess encoder: --encoder (a toy encoder or an official e4e/pSp checkpoint), else the e4e
    installed for the domain with `sfeditor models`, else the shipped domain's toy encoder."""
    from .images.encoders import load_encoder, photo_encoder_path

    if args.no_encoder:
        return None
    path, how = photo_encoder_path(_domain(args), args.model, args.encoder)
    if path is None:
        return None
    if not args.quiet:
        print(f"initial guesses from the encoder {path}" + (f" ({how})" if how != "given" else ""), file=sys.stderr)
    return load_encoder(path, G=G, map_location=G.device)


def _projector(args, G):
    from .images.inversion import InversionCache, Projector

    cache = False if args.no_cache else InversionCache(args.cache_dir)
    return Projector(G, _settings(args, G), encoder=_encoder(args, G), cache=cache)


class _Bar:
    """One stderr line per image: step, PSNR, rate."""

    def __init__(self, label: str, stream=None, quiet: bool = False):
        self.label, self.stream, self.quiet = label, stream or sys.stderr, quiet   # stderr as it is now
        self.t0 = self.last = time.time()

    def __call__(self, step: int, total: int, info: dict) -> None:
        now = time.time()
        if self.quiet or (now - self.last < 0.5 and step < total):
            return
        self.last = now
        extra = f" psnr {info['psnr']:.2f} dB" if "psnr" in info else ""
        self.stream.write(f"\r{self.label}: {step}/{total}{extra} ({now - self.t0:.1f}s)")
        if step >= total:
            self.stream.write("\n")
        self.stream.flush()


def _prepare(args, G, path: str):
    from .images.alignment import prepare_image
    from .images.intake import read_image

    import warnings

    from .images.intake import DamagedImageWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DamagedImageWarning)
        rgb, info = read_image(path, alpha=args.alpha, return_info=True)
    for note in info.warnings:
        print(f"warning: {note}", file=sys.stderr)
    return prepare_image(rgb, G.size, _domain(args), args.align, rect=args.rect)


def _invert_one(args, G, projector, path: str, cancel):
    prepared = _prepare(args, G, path)
    for note in prepared.notes:
        print(f"{path}: {note}", file=sys.stderr)
    res = projector.invert(prepared.image, progress=_Bar(Path(path).name, quiet=args.quiet), cancel=cancel)
    return prepared, res


def _load_code_or_invert(args, G, projector, path: str, cancel):
    """A ``*-wplus.pt`` file, or an image to invert -> w+ [1, L, D] and noise."""
    from .images.inversion import load_latents

    if Path(path).suffix.lower() == ".pt":
        w, noise, _ = load_latents(path, G)
        if w.shape[0] != 1:
            print(f"{path}: holds {w.shape[0]} codes; using the first", file=sys.stderr)
        return w[:1].to(G.device), None if noise is None else [n.to(G.device) for n in noise]
    _, res = _invert_one(args, G, projector, path, cancel)
    if not res.from_cache:
        print(f"{path}: inverted, {res.psnr:.2f} dB PSNR in {res.seconds:.1f}s", file=sys.stderr)
    return res.w_plus.to(G.device), None if res.noise is None else [n.to(G.device) for n in res.noise]


def _hierarchy_path(args) -> str:
    """``--hierarchy``, or the shipped hierarchy of a shipped ``--model``."""
    from .domains import SHIPPED
    from .editor.session import default_hierarchy_path

    if args.hierarchy:
        return args.hierarchy
    shipped = default_hierarchy_path(args.model) if args.model in SHIPPED else None
    if shipped is None:
        raise ValueError("this needs --hierarchy (a trained FusionNet hierarchy for the model); only the "
                         "shipped toy domains come with one")
    return str(shipped)


def _load_hierarchy(path: str, G):
    from .fusion.hierarchy import load_hierarchy

    h = load_hierarchy(path, map_location=G.device)
    h.check_generator(G, str(path))
    h.eval()
    return h


def _save_image(path: str | Path, images, cols: int | None = None, scale: int = 1) -> None:
    import numpy as np

    from .images.imageio import make_grid, save_image, to_uint8

    arr = to_uint8(images)
    save_image(path, arr[0] if len(arr) == 1 and scale == 1 else make_grid(np.asarray(arr), cols=cols, scale=scale))


# --------------------------------------------------------------- invert
def _unique_stems(paths: list[str]) -> dict[str, str]:
    """Output name per input: its stem, with -2, -3 ... when two inputs share one (a/ok.jpg, b/ok.png).

    The same file given twice is refused (it would be inverted twice into one name)."""
    import os

    out: dict[str, str] = {}
    used: set[str] = set()
    seen: dict[str, str] = {}
    for p in paths:
        real = os.path.realpath(p)
        if real in seen:
            raise ValueError(f"{p} is given twice (also as {seen[real]})")
        seen[real] = p
        stem = base = Path(p).stem
        n = 1
        while stem.lower() in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem.lower())
        out[p] = stem
        if stem != base:
            print(f"{p}: another input is also named {base}; writing it as {stem}.*", file=sys.stderr)
    return out


def cmd_invert(args: argparse.Namespace) -> int:
    import torch

    from .images.imageio import save_png
    from .model.identity import generator_fingerprint
    from .images.inversion import save_latents
    from .jobs import Cancelled, CancelToken

    G = _load_G(args)
    projector = _projector(args, G)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cancel = CancelToken()
    cancel.install_signal_handlers()
    failures = 0
    stems = _unique_stems(args.images)
    for path in args.images:
        stem = stems[path]
        try:
            prepared, res = _invert_one(args, G, projector, path, cancel)
        except Cancelled as e:
            print(f"\n{e}; nothing saved for {path}", file=sys.stderr)
            return 130
        except ValueError as e:        # a bad photo: report it and go on with the others
            print(f"sfeditor invert: {e}", file=sys.stderr)
            failures += 1
            continue
        with torch.no_grad():
            recon = res.render(G)
            code = res.styles(G)
        save_png(out / f"{stem}-input.png", prepared.image)
        _save_image(out / f"{stem}.png", recon)
        code.detach().to("cpu").save(out / f"{stem}.pt")
        save_latents(out / f"{stem}-wplus.pt", res.w_plus, res.noise,
                     {"source": str(path), "psnr": res.psnr, "steps": res.steps, "alignment": prepared.method,
                      "generator": generator_fingerprint(G), "settings": projector.settings.to_dict()})
        how = "cache hit" if res.from_cache else f"{res.seconds:.1f}s"
        print(f"{path}: {res.psnr:.2f} dB PSNR ({how}) -> {out / (stem + '.png')}, {stem}.pt, {stem}-wplus.pt")
    return 1 if failures else 0


# ----------------------------------------------------------------- edit
def _direction(args, G):
    from .images.directions import load_direction, pca_directions

    if bool(args.direction) == (args.pca is not None):
        raise ValueError("give exactly one of --direction FILE.npy or --pca INDEX")
    if args.direction:
        return load_direction(args.direction, G, normalize=args.normalize)
    if not 0 <= args.pca < G.style_dim:
        raise ValueError(f"--pca {args.pca}: this generator's w has {G.style_dim} dimensions, so components "
                         f"0 to {G.style_dim - 1}")
    k = max(args.pca + 1, args.pca_components)
    pcs = pca_directions(G, n_components=min(k, G.style_dim), n_samples=args.pca_samples,
                         cache_dir=args.cache_dir_directions)
    return pcs.direction(args.pca, scaled=True)


def cmd_edit(args: argparse.Namespace) -> int:
    import torch

    from .images.directions import parse_layers
    from .images.editing import composition_from, edit_regions, edit_whole, fuse, render
    from .images.inversion import load_latents, save_latents

    from .validate import image_extension

    image_extension(args.out)
    G = _load_G(args)
    w, noise, meta = load_latents(args.latents, G)
    w = w[:1].to(G.device)
    noise = None if noise is None else [n.to(G.device) for n in noise]
    d = _direction(args, G)
    layers = parse_layers(args.layers, G.n_latent)
    regions = [r.strip() for r in (args.regions or "").split(",") if r.strip()]
    with torch.no_grad():
        original = render(G, w, noise)
        whole = render(G, edit_whole(G, w, d, args.strength, layers), noise)
        panels = [original, whole]
        if regions:
            h = _load_hierarchy(_hierarchy_path(args), G)
            comp = composition_from(h, w)
            edited = edit_regions(G, h, comp, d, args.strength, regions, layers=layers)
            result = G.synthesis(fuse(G, h, edited), noise_mode="const", noise=noise)
            panels.append(result)
        else:
            result = whole
    _save_image(args.out, result)
    print(f"wrote {args.out} ({'regions ' + ', '.join(regions) if regions else 'whole image'}, "
          f"strength {args.strength:g})")
    if args.compare:
        cmp_path = Path(args.out).with_name(Path(args.out).stem + "-compare.png")
        _save_image(cmp_path, torch.cat(panels), cols=len(panels), scale=args.scale)
        print(f"wrote {cmp_path} (original | whole-image edit{' | region edit' if regions else ''})")
    if args.save_latents and not regions:
        save_latents(args.save_latents, edit_whole(G, w, d, args.strength, layers), noise,
                     {**meta, "edit": {"strength": args.strength, "direction": args.direction or f"pca{args.pca}"}})
    return 0


# ------------------------------------------------------------- transfer
def cmd_transfer(args: argparse.Namespace) -> int:
    import torch

    from .images.editing import hair_transfer, render
    from .jobs import Cancelled, CancelToken

    from .validate import image_extension

    image_extension(args.out)
    G = _load_G(args)
    h = _load_hierarchy(_hierarchy_path(args), G)
    projector = _projector(args, G)
    cancel = CancelToken()
    cancel.install_signal_handlers()
    try:
        w_t, noise_t = _load_code_or_invert(args, G, projector, args.target, cancel)
        w_r, _ = _load_code_or_invert(args, G, projector, args.reference, cancel)
    except Cancelled as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    with torch.no_grad():
        _, fused = hair_transfer(G, h, w_t, w_r, region=args.region)
        result = G.synthesis(fused, noise_mode="const", noise=noise_t)
        _save_image(args.out, result)
        print(f"wrote {args.out} ({args.region} from {args.reference} onto {args.target})")
        if args.compare:
            panels = torch.cat([render(G, w_t, noise_t), render(G, w_r), result])
            cmp_path = Path(args.out).with_name(Path(args.out).stem + "-compare.png")
            _save_image(cmp_path, panels, cols=3, scale=args.scale)
            print(f"wrote {cmp_path} (target | reference | transfer)")
    return 0


# --------------------------------------------------------------- parsers
def _model_args(p: argparse.ArgumentParser) -> None:
    from .validate import device_arg

    p.add_argument("--model", "-m", default="toy-faces", help="checkpoint path or shipped domain (default toy-faces)")
    p.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda, cuda:1, ...")


def _invert_args(p: argparse.ArgumentParser) -> None:
    from .images.inversion import InversionSettings as D
    from .validate import float_in, int_in

    g = p.add_argument_group("photo intake and inversion")
    g.add_argument("--domain", help="domain for alignment (default: the shipped or installed model's); faces get "
                                     "FFHQ alignment, cars a 4:3 letterbox, everything else a centre crop")
    g.add_argument("--align", default="auto", choices=["auto", "none", "center", "letterbox", "crop", "ffhq"],
                   help="auto: as-is if already the generator's size, else by domain")
    g.add_argument("--rect", type=_rect, help="manual crop X,Y,WIDTH,HEIGHT in pixels (with --align crop or auto)")
    g.add_argument("--alpha", default="white", choices=["white", "black", "drop"],
                   help="transparent pictures: composite on white/black, or drop the alpha channel")
    g.add_argument("--encoder", help="initial-guess encoder: a toy encoder file or an official e4e/pSp checkpoint "
                                      "(default: the domain's toy encoder, if found)")
    g.add_argument("--no-encoder", action="store_true", help="start from the mean w instead of an encoder")
    preset = ("defaults: the domain's measured preset for generators of 128 px or less "
              "(toy-faces 300 steps, toy-cars 500), else")
    g.add_argument("--steps", type=int_in(1, 1_000_000), help=f"optimisation steps ({preset} {D.steps})")
    g.add_argument("--lr", type=float_in(0, 100, open_lo=True), help=f"peak learning rate (small generators 0.1, else {D.lr})")
    g.add_argument("--space", default="w+", choices=["w+", "w"])
    g.add_argument("--w-phase", type=float_in(0, 1),
                   help=f"w+: fraction of steps moving one shared w first (small generators 0, else {D.w_phase})")
    g.add_argument("--msssim", type=float_in(0, 1000),
                   help=f"weight of 1 - MS-SSIM (small generators 0, else {D.msssim_weight})")
    g.add_argument("--l1", action="store_true", help="L1 pixel loss instead of MSE")
    g.add_argument("--noise", action="store_true", help="also optimise the noise maps (regularised)")
    g.add_argument("--loss-size", type=int_in(0, 4096), default=0, help="compare images at this size (0 = full)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: on for small generators where the CPU/GPU runs bf16 natively)")
    g.add_argument("--seed", type=int_in(0, 2 ** 32 - 1), default=0)
    g.add_argument("--cache-dir", help="inversion cache folder (default ~/.cache/sfeditor/inversions)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the inversion cache")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress line")


def add_parsers(sub) -> None:
    """Register ``invert``, ``edit`` and ``transfer`` on an argparse subparsers object."""
    from .validate import MAX_SCALE
    from .validate import float_in, int_in
    i = sub.add_parser("invert", help="invert photos into the generator (w+), write reconstructions and codes")
    i.add_argument("images", nargs="+", help="photo files (PNG, JPEG, WebP, BMP, TIFF)")
    _model_args(i)
    i.add_argument("--out", "-o", default="inversions", help="output folder (default ./inversions)")
    _invert_args(i)
    i.set_defaults(func=cmd_invert)

    e = sub.add_parser("edit", help="move an inverted code along a latent direction, whole image or by region")
    e.add_argument("latents", help="a *-wplus.pt file written by 'sfeditor invert'")
    _model_args(e)
    e.add_argument("--direction", help="InterFaceGAN-style direction .npy ([w_dim], [1, w_dim] or [n_latent, w_dim])")
    e.add_argument("--normalize", action="store_true", help="scale the direction file to unit length")
    e.add_argument("--pca", type=int_in(0, 4095), help="GANSpace: use principal component INDEX of w (strength in std devs)")
    e.add_argument("--pca-components", type=int_in(1, 4096), default=32)
    e.add_argument("--pca-samples", type=int_in(2, 10_000_000), default=20000)
    e.add_argument("--cache-dir-directions", help="PCA cache folder (default ~/.cache/sfeditor/directions)")
    e.add_argument("--strength", "-s", type=float_in(-1000, 1000), required=True,
                   help="how far to move (finite; with --pca in standard deviations)")
    e.add_argument("--regions", help="comma-separated hierarchy nodes to edit (e.g. hair or face,eyes); "
                                     "default: the whole image")
    e.add_argument("--hierarchy", help="trained FusionNet hierarchy for --regions (default: the shipped "
                   "domain's)")
    e.add_argument("--layers", help="w+ entries to move, e.g. 0-5 (default all)")
    e.add_argument("--out", "-o", default="edit.png", help="result picture (format from the extension)")
    e.add_argument("--compare", action="store_true", help="also write <out>-compare.png: original | whole | regions")
    e.add_argument("--scale", type=int_in(1, MAX_SCALE), default=1, help="upscale of the comparison picture")
    e.add_argument("--save-latents", help="whole-image edits: also save the edited w+ here")
    e.set_defaults(func=cmd_edit)

    t = sub.add_parser("transfer", help="transfer a region (default hair) from a reference onto a target")
    t.add_argument("target", help="target photo or *-wplus.pt")
    t.add_argument("reference", help="reference photo or *-wplus.pt")
    _model_args(t)
    t.add_argument("--hierarchy", help="trained FusionNet hierarchy (default: the shipped domain's)")
    t.add_argument("--region", default="hair", help="hierarchy node to take from the reference (default hair)")
    t.add_argument("--out", "-o", default="transfer.png", help="result picture (format from the extension)")
    t.add_argument("--compare", action="store_true", help="also write <out>-compare.png: target | reference | result")
    t.add_argument("--scale", type=int_in(1, MAX_SCALE), default=1)
    _invert_args(t)
    t.set_defaults(func=cmd_transfer)
