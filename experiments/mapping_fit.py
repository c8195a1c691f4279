"""Which codes should the toy mapping sample? Gaussians fitted to encoder vs projected codes, side by side.

    python experiments/mapping_fit.py runs/map-faces --domain toy-faces [--psi 0.7] [--subspace-images 32]

RUN is a ``sfeditor-train generator --mapping-fit projected`` run folder (its ``projected_codes.pt``
holds the renders' codes projected into W; the generator is the shipped one of the domain unless
``--generator``).  Table 1: samples from Gaussians fitted to the encoder's codes of the same renders,
to the projected codes (empirical and Ledoit-Wolf covariance), to the projected mean with the
encoder's covariance, and to the projected codes' top-k principal directions; each row gives
sharpness (image gradients against renders', ``trainer.generator.gradient_magnitude``) and the
region oracle's mean confidence, all from the same normal draws; ``--grid`` saves 8 samples per row.
Table 2: the eigen-spectra, and how much of the projection's move (projected - encoder code) lies
in the encoder codes' top-k principal directions.  Table 3 (``--subspace-images N``): projecting N
renders again with the move restricted to those top-k directions (PSNR and sharpness).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfeditor.model.checkpoints import load_generator  # noqa: E402
from sfeditor.domains import get_domain  # noqa: E402
from sfeditor.images.imageio import from_uint8, make_grid, save_png, to_uint8  # noqa: E402
from sfeditor.images.inversion import InversionSettings  # noqa: E402
from sfeditor.toy import render  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from sfeditor.images.toy_encoder import load_toy_encoder  # noqa: E402
from trainer.generator import HELDOUT_SEED_OFFSET, gradient_magnitude
from sfeditor.images.metrics import psnr
from trainer.mapping_fit import (empirical_gaussian, encoder_codes, fit_batch, project_batch,  # noqa: E402
                                 projected_mean_gaussian, shrunk_gaussian)


def top_k(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    vals, vecs = torch.linalg.eigh(torch.cov(w.T))
    vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1)
    L = torch.zeros(w.shape[1], w.shape[1])
    L[:, :k] = vecs[:, :k] * vals[:k].sqrt()
    return w.mean(0), L


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run", help="a generator run folder with projected_codes.pt")
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--generator", help="default: the shipped one")
    p.add_argument("--encoder", help="default: the shipped one")
    p.add_argument("--psi", type=float, default=None, help="truncation (default: the domain's)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--subspace-images", type=int, default=0)
    p.add_argument("--grid", help="PNG of 8 samples per variant")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dom = get_domain(a.domain)
    psi = dom.truncation if a.psi is None else a.psi
    G = load_generator(a.generator or dom.generator_path, device="cpu").eval()
    E = load_toy_encoder(a.encoder or f"resources/encoders/{a.domain}.pt", G=G)

    def amp():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    proj = torch.cat(torch.load(os.path.join(a.run, "projected_codes.pt"), weights_only=True)["codes"]).float()
    enc = encoder_codes(E, a.domain, G.size, len(proj), "cpu", amp)
    real, _ = render(a.domain, HELDOUT_SEED_OFFSET + 600_000 + np.arange(a.samples), size=G.size)
    crisp = float(gradient_magnitude(from_uint8(real)))
    oracle = load_oracle(a.domain)
    _, conf_r = oracle.predict(real)

    variants = {"encoder codes (`--mapping-fit encoder`)": empirical_gaussian(enc),
                "projected codes": empirical_gaussian(proj),
                "projected, Ledoit-Wolf (`projected`)": shrunk_gaussian(proj)[:2],
                "projected mean + encoder covariance (`projected-mean`)": projected_mean_gaussian(proj, enc)}
    for k in (16, 32, 64):
        variants[f"projected, top {k} directions"] = top_k(proj, k)
    z = torch.randn(a.samples, G.style_dim, generator=torch.Generator().manual_seed(3))
    print(f"# {a.domain}: {len(proj)} renders' codes; {a.samples} samples per Gaussian, psi {psi}, same draws; "
          f"renders: oracle confidence {np.mean(conf_r):.4f}")
    print("| Gaussian fitted to | sharpness | oracle confidence |\n|---|---|---|")
    rows = []
    for name, (mu, L) in variants.items():
        with torch.no_grad():
            x = to_uint8(G.synthesis(G.styles(mu + psi * (z @ L.T))))
        _, conf = oracle.predict(x)
        print(f"| {name} | {float(gradient_magnitude(from_uint8(x))) / crisp:.3f} | {np.mean(conf):.4f} |")
        rows.append(x[:8])
    if a.grid:
        save_png(a.grid, make_grid(np.concatenate(rows), cols=8, scale=3))

    ev_e = torch.linalg.eigvalsh(torch.cov(enc.T)).flip(0)
    ev_p = torch.linalg.eigvalsh(torch.cov(proj.T)).flip(0)
    idx = [i for i in (0, 4, 16, 32, 64, 128, len(ev_e) - 1) if i < len(ev_e)]
    U = torch.linalg.eigh(torch.cov(enc.T)).eigenvectors.flip(1)
    move = proj - enc
    print("\n| | " + " | ".join(f"eigenvalue {i + 1}" for i in idx) + " |\n|---|" + "---|" * len(idx))
    print("| encoder codes | " + " | ".join(f"{float(ev_e[i]):.3f}" for i in idx) + " |")
    print("| projected codes | " + " | ".join(f"{float(ev_p[i]):.3f}" for i in idx) + " |")
    ks = [k for k in (16, 32, 64, 128) if k < len(ev_e)]
    print("\n| share of the projection's move inside the encoder codes' top k directions | "
          + " | ".join(f"k = {k}" for k in ks) + " |\n|---|" + "---|" * len(ks))
    print("| | " + " | ".join(f"{float((move @ U[:, :k]).pow(2).sum() / move.pow(2).sum()):.3f}" for k in ks) + " |")

    if a.subspace_images:
        x = fit_batch(a.domain, 0, G.size, "cpu")[:a.subspace_images]
        with torch.no_grad():
            w0 = E(x).float()
            y0 = G.synthesis(G.styles(w0))
        lr = InversionSettings.for_generator(G, a.domain).lr
        crisp_x = float(gradient_magnitude(x))
        print(f"\n# projecting {len(x)} renders again (100 steps, lr {lr}), the move restricted to the encoder "
              "codes' top k directions\n| move | PSNR | sharpness |\n|---|---|---|")
        print(f"| none (encoder) | {float(psnr(y0, x).mean()):.2f} | {float(gradient_magnitude(y0.clamp(-1, 1))) / crisp_x:.3f} |")
        for k in (32, 64, None):
            w = project_batch(G, x, w0, 100, lr, amp, basis=None if k is None else U[:, :k])
            with torch.no_grad():
                y = G.synthesis(G.styles(w))
            print(f"| {'free' if k is None else f'top {k}'} | {float(psnr(y, x).mean()):.2f} | "
                  f"{float(gradient_magnitude(y.clamp(-1, 1))) / crisp_x:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
