"""Inversion quality and speed on held-out renders of a toy domain (CPU, one thread by default).

    python bench/inversion.py --domain toy-faces [--generator runs/generator-toy-faces/generator.pt]
        [--encoder runs/generator-toy-faces/encoder.pt] [--images 8] [--steps 0 50 100 200]

``--generator`` may also be a training ``checkpoint.pt`` of the generator
recipe (its ``G`` / ``E`` / ``config`` entries are used, so a run can be
measured before it finishes).  Reports, per setting, the mean / min PSNR over
the held-out images and the seconds per image (encoder + refinement).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfeditor.model.generator import Generator, GeneratorConfig  # noqa: E402
from sfeditor.images.inversion import InversionSettings, Projector  # noqa: E402
from sfeditor.toy import render  # noqa: E402
from sfeditor.images.toy_encoder import ToyEncoder, load_toy_encoder  # noqa: E402

HELDOUT = 10_000_000 + 500_000     # held-out seeds, away from the ones training evaluates on


def load(gen_path: str, enc_path: str | None):
    obj = torch.load(gen_path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "G" in obj and "config" in obj:        # a generator-recipe checkpoint
        G = Generator(GeneratorConfig.from_dict(obj["config"]))
        G.load_state_dict(obj["G"])
        E = None
        if "E" in obj and enc_path is None:
            sd = obj["E"]
            E = ToyEncoder(G.size, G.style_dim)
            E.load_state_dict(sd)
        with torch.no_grad():
            G.update_w_avg(4096, seed=0)
    else:
        from sfeditor.model.checkpoints import load_generator

        G = load_generator(gen_path, device="cpu")
        E = None
    if enc_path:
        E = load_toy_encoder(enc_path, G=G)
    return G.eval(), (E.eval() if E is not None else None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domain", default="toy-faces")
    ap.add_argument("--generator")
    ap.add_argument("--encoder")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", nargs="+", type=int, default=[0, 50, 100, 200])
    ap.add_argument("--lr", type=float, default=InversionSettings.lr)
    ap.add_argument("--msssim", type=float, default=InversionSettings.msssim_weight)
    ap.add_argument("--w-phase", type=float, default=InversionSettings.w_phase)
    ap.add_argument("--no-encoder", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--space", default="w+")
    ap.add_argument("--preset", action="store_true",
                    help="InversionSettings.for_generator (what the CLI and editor use); --steps still applies")
    ap.add_argument("--noise", action="store_true", help="also optimise the noise maps (noise regulariser on)")
    ap.add_argument("--noise-reg", type=float, default=InversionSettings.noise_reg)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = args.generator or f"runs/generator-{args.domain}/generator.pt"
    G, E = load(gen, args.encoder)
    if args.no_encoder:
        E = None
    imgs, _ = render(args.domain, np.arange(HELDOUT, HELDOUT + args.images), size=G.size)
    print(f"generator {gen} ({G.size}px), encoder: {'yes' if E is not None else 'no'}, threads {args.threads}, "
          f"{args.images} held-out renders")
    print(f"{'steps':>6} {'mean dB':>8} {'min dB':>7} {'wall s/img':>10} {'cpu s/img':>9}")
    for steps in args.steps:
        if args.preset:
            st = InversionSettings.for_generator(G, args.domain, steps=steps)
        else:
            st = InversionSettings(steps=steps, lr=args.lr, msssim_weight=args.msssim, w_phase=args.w_phase,
                                   bf16=args.bf16, space=args.space, optimize_noise=args.noise,
                                   noise_reg=args.noise_reg)
        proj = Projector(G, st, encoder=E, cache=False)
        if steps == args.steps[0]:
            proj.invert(imgs[0])        # warm-up: w statistics, fingerprint, allocator
        vals, t0, c0 = [], time.perf_counter(), time.process_time()
        for img in imgs:
            vals.append(proj.invert(img).psnr)
        dt = (time.perf_counter() - t0) / len(imgs)
        dc = (time.process_time() - c0) / len(imgs)
        print(f"{steps:>6} {np.mean(vals):>8.2f} {np.min(vals):>7.2f} {dt:>10.2f} {dc:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
