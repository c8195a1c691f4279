"""How well a toy generator run's autoencoder keeps each region (for comparing recipes at equal steps).

Reconstructs held-out renders with the run's encoder + synthesis (``checkpoint.pt`` of
``sfeditor-train generator``, any phase), segments the reconstructions with the
domain's region oracle and reports, per region, the IoU against the renderer's
labels, plus PSNR and *sharpness*: the mean absolute image gradient (finite
differences) of the reconstructions over that of the renders (1.0 = as crisp as
the renders; a blurry autoencoder scores well below).  Small regions (eyes, mouth, wheels) are what a plain L1 loss
gives up first, so their IoU is the number to watch.

    python experiments/ae_regions.py runs/generator-toy-faces/checkpoint.pt [more runs ...] [--images 128]

A run may also be a folder holding ``generator.pt`` + ``encoder.pt`` (a finished run, or a copy of
the shipped pair ``resources/generators/D.pt`` + ``resources/encoders/D.pt``).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfeditor.model.generator import Generator, GeneratorConfig  # noqa: E402
from sfeditor.images.imageio import from_uint8, to_uint8  # noqa: E402
from sfeditor.toy import region_names, render  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from sfeditor.images.toy_encoder import ToyEncoder  # noqa: E402
from trainer.generator import gradient_magnitude  # noqa: E402

HELDOUT = 10_000_000 + 900_000


def load_run(path: str):
    if os.path.isdir(path):
        from sfeditor.model.checkpoints import load_generator
        from sfeditor.images.toy_encoder import load_toy_encoder

        G = load_generator(os.path.join(path, "generator.pt"), device="cpu")
        return G.eval(), load_toy_encoder(os.path.join(path, "encoder.pt"), G=G).eval(), "final", None
    st = torch.load(path, map_location="cpu", weights_only=True)
    G = Generator(GeneratorConfig.from_dict(st["config"]))
    G.load_state_dict(st["G"])
    E = ToyEncoder(G.size, G.style_dim)
    E.load_state_dict(st["E"])
    return G.eval(), E.eval(), st.get("phase"), st.get("step")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="checkpoint.pt files of generator runs")
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = region_names(args.domain)
    oracle = load_oracle(args.domain)
    rows = []
    for path in args.runs:
        G, E, phase, step = load_run(path)
        imgs, labels = render(args.domain, np.arange(HELDOUT, HELDOUT + args.images), G.size)
        with torch.no_grad():
            x = from_uint8(imgs)
            rec = torch.cat([G.synthesis(G.styles(E(x[i:i + 32])), noise_mode="const")
                             for i in range(0, len(x), 32)])
            mse = ((rec.clamp(-1, 1) - x) / 2).pow(2).flatten(1).mean(1)
            psnr = float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())
            sharp = float(gradient_magnitude(rec.clamp(-1, 1)) / gradient_magnitude(x))
        pred, _ = oracle.predict(to_uint8(rec))
        ious = []
        for k in range(len(names)):
            a, b = pred == k, labels == k
            union = (a | b).sum()
            ious.append(float((a & b).sum() / union) if union else float("nan"))
        rows.append((path, phase, step, psnr, sharp, ious))
    print(f"# {args.domain}: autoencoder reconstructions of {args.images} held-out renders, oracle IoU per region")
    head = f"{'run':40s} {'phase':>7s} {'step':>6s} {'PSNR':>6s} {'sharp':>6s} " + " ".join(f"{n[:8]:>8s}" for n in names)
    print(head)
    for path, phase, step, psnr, sharp, ious in rows:
        print(f"{path[-40:]:40s} {str(phase):>7s} {str(step):>6s} {psnr:6.2f} {sharp:6.3f} "
              + " ".join(f"{v:8.3f}" for v in ious))
    return 0


if __name__ == "__main__":
    sys.exit(main())
