"""Which z -> w should the toy generators sample through? One Gaussian against Gaussian mixtures over W.

    python experiments/mixture_prior.py --domain toy-faces [--codes 8192] [--samples 500] [--grid OUT.png]

Every row samples ``--samples`` codes at the domain's truncation from the same seeds and renders them
with the shipped synthesis; the samplers are fitted to the encoder's codes of ``--codes`` fit renders
(``trainer.mapping_fit.encoder_codes``), the last 1/8 of them held out:

* the generator file's own z -> w (whatever it ships: the mapping MLP or a mixture prior);
* one Gaussian (= a mixture with K = 1) over the encoder codes;
* mixtures with K components (``trainer.mapping_fit.fit_mixture``), truncated toward the global mean
  (as the mapping MLP does) or toward each sample's own component (``sfeditor.model.latent_prior``);
* the encoder codes themselves (held-out renders' codes, untruncated): what the sampler aims for.

Columns: held-out log-likelihood per code, sharpness (image gradients against the renders'), the region
oracle's confidence, the Frechet distance between oracle features of samples and renders (two sets of
renders: the floor), the region-area distance (percent of the image; ``trainer.evaluate_generator``), and
the cost of sampling 4,096 codes relative to the file's own z -> w (measured in this run).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfeditor.model.checkpoints import load_generator  # noqa: E402
from sfeditor.domains import get_domain  # noqa: E402
from sfeditor.images.imageio import from_uint8, make_grid, save_png, to_uint8  # noqa: E402
from sfeditor.toy import region_names, render  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from sfeditor.images.toy_encoder import default_encoder_path, load_toy_encoder  # noqa: E402
from trainer.evaluate_generator import area_distance, frechet_distance, oracle_feature_stats  # noqa: E402
from trainer.generator import HELDOUT_SEED_OFFSET, gradient_magnitude  # noqa: E402
from trainer.mapping_fit import encoder_codes, fit_mixture  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--generator", help="generator file (default: the shipped one)")
    p.add_argument("--codes", type=int, default=8192)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--components", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid", help="save 16 samples per row to this PNG")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dom = get_domain(a.domain)
    psi = dom.truncation
    G = load_generator(a.generator or a.domain, device="cpu").eval()
    E = load_toy_encoder(default_encoder_path(a.domain)).eval()
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    codes = encoder_codes(E, a.domain, G.size, a.codes, "cpu", amp)
    held = len(codes) // 8
    test = codes[-held:]
    oracle = load_oracle(a.domain, device="cpu")
    names = region_names(a.domain)
    real, _ = render(a.domain, HELDOUT_SEED_OFFSET + 600_000 + np.arange(a.samples), size=G.size)
    real2, _ = render(a.domain, HELDOUT_SEED_OFFSET + 700_000 + np.arange(a.samples), size=G.size)
    crisp = float(gradient_magnitude(from_uint8(real)))
    st_r = oracle_feature_stats(oracle, real)
    lab_r = np.asarray(oracle.predict(real)[0])
    floor = frechet_distance(oracle_feature_stats(oracle, real2), st_r)
    z = torch.randn(a.samples, G.style_dim, generator=torch.Generator().manual_seed(0))
    zt = torch.randn(4096, G.style_dim, generator=torch.Generator().manual_seed(1))

    def timed(sample) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            with torch.no_grad():
                sample(zt)
            best = min(best, time.perf_counter() - t)
        return best

    base_time = timed(lambda zz: G.mapping(zz, psi))
    rows, grid = [], []

    def row(name, w, loglik=None, cost=None):
        with torch.no_grad():
            u8 = np.concatenate([to_uint8(G.synthesis(G.styles(w[i:i + 100]))) for i in range(0, len(w), 100)])
        lab, conf = oracle.predict(u8)
        rows.append((name, "" if loglik is None else f"{loglik:.1f}",
                     f"{float(gradient_magnitude(from_uint8(u8))) / crisp:.3f}", f"{float(np.mean(conf)):.4f}",
                     f"{frechet_distance(oracle_feature_stats(oracle, u8), st_r):.3f}",
                     f"{np.mean(list(area_distance(np.asarray(lab), lab_r, names).values())):.2f}",
                     "" if cost is None else f"{cost:.2f}"))
        grid.append(u8[:16])
        print(" | ".join(rows[-1]), flush=True)

    with torch.no_grad():
        row("the file's own z -> w" + (" (mixture)" if G.prior is not None else " (mapping MLP)"), G.mapping(z, psi),
            cost=1.0)
    for k in [1, *a.components]:
        prior, rep = fit_mixture(codes, k, rank=64, held_out=held, log=lambda *x: None)
        ll = rep["held_out_loglik"]                    # of the full-rank mixture, before the rank cut
        with torch.no_grad():
            own = prior(z, psi)
            comp, _ = prior.components(z)
            glob = prior.mean() + psi * (prior(z) - prior.mean())
        cost = timed(lambda zz: prior(zz, psi)) / base_time
        if k == 1:
            row("one Gaussian (K = 1)", own, ll, cost)
            continue
        row(f"mixture K = {k}, psi toward the global mean", glob, ll)
        row(f"mixture K = {k}, psi toward its own component", own, ll, cost)
    row("encoder codes of held-out renders (psi 1)", test[: a.samples])
    print()
    print(f"{a.domain}, psi {psi}, {a.samples} samples, fitted to {len(codes) - held} encoder codes "
          f"(Frechet floor, two sets of renders: {floor:.3f})")
    print()
    print("| sampler | held-out log-lik | sharpness | oracle conf. | Frechet (oracle) | region-area dist. (%) | "
          "sampling cost |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if a.grid:
        save_png(a.grid, make_grid(np.concatenate(grid), cols=16, scale=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
