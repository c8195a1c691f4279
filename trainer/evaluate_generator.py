"""Measure a toy generator (``sfeditor-train evaluate-generator``).

* Coverage: held-out rendered images projected into W+ by the editor's own
  projector (:class:`sfeditor.images.inversion.Projector`, the domain's preset:
  encoder start, Adam on w+), mean PSNR - how much of the domain the
  generator can draw, measured with the inversion a user gets.
* Realism: the region oracle's mean per-pixel confidence on generated samples
  vs. on rendered images, and the share of samples whose oracle segmentation
  holds every region of the domain.
* Sharpness: the samples' mean absolute image gradient against the renders'
  (1.0 = as crisp; at the domain's truncation and at psi = 1).
* Pictures: a sample grid and a style-mixing grid (rows: coarse layers from
  the row's code, columns: fine layers from the column's code).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from sfeditor.domains import get_domain
from sfeditor.model.generator import Generator
from sfeditor.images.imageio import from_uint8, make_grid, save_png, to_uint8
from sfeditor.toy import region_names, render

from .common import Progress
from .generator import HELDOUT_SEED_OFFSET, gradient_magnitude
from sfeditor.images.metrics import psnr

MIN_REGION_PIXELS = 3   # a region "is present" when the oracle gives it at least this many pixels (64x64)


def style_mixing_grid(G: Generator, seeds_rows, seeds_cols, truncation: float, crossover: int) -> np.ndarray:
    """Top-left empty; first row: column sources; first column: row sources; cells: w[:crossover] from
    the row, the rest from the column."""
    with torch.no_grad():
        wr = torch.cat([G.sample_w(1, seed=s, truncation=truncation) for s in seeds_rows])
        wc = torch.cat([G.sample_w(1, seed=s, truncation=truncation) for s in seeds_cols])
        img_r = to_uint8(G.synthesis(G.styles(wr)))
        img_c = to_uint8(G.synthesis(G.styles(wc)))
        blank = np.full_like(img_r[:1], 24)
        tiles = [blank, img_c]
        for i in range(len(seeds_rows)):
            wp = wc[:, None].repeat(1, G.n_latent, 1)
            wp[:, :crossover] = wr[i]
            tiles += [img_r[i:i + 1], to_uint8(G.synthesis(G.styles(wp)))]
    return make_grid(np.concatenate(tiles), cols=len(seeds_cols) + 1, scale=2)


def project_heldout(G: Generator, domain: str, targets: torch.Tensor, encoder=None, steps: int | None = None,
                    progress=None) -> tuple[torch.Tensor, dict]:
    """Project each image of ``targets`` ``[B, 3, S, S]`` into W+ with the editor's projector and the
    domain's preset (``InversionSettings.for_generator``; ``steps`` overrides its step count), no
    cache.  Returns (reconstructions, the settings used)."""
    from sfeditor.images.inversion import InversionSettings, Projector

    settings = InversionSettings.for_generator(G, domain, **({"steps": steps} if steps else {}))
    proj = Projector(G, settings, encoder=encoder, cache=False)
    recon = []
    for i in range(len(targets)):
        res = proj.invert(targets[i:i + 1], use_cache=False)
        with torch.no_grad():
            recon.append(res.render(G).float().to(targets.device))
        if progress is not None:
            progress(i + 1, psnr=res.psnr)
    return torch.cat(recon), settings.to_dict()


def oracle_feature_stats(oracle, images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the oracle encoder's deepest features, average-pooled, of uint8 images."""
    from sfeditor.toy.oracle import to_model_input

    dev = next(oracle.parameters()).device
    feats = []
    with torch.no_grad():
        x = to_model_input(images_u8)
        for i in range(0, len(x), 256):
            feats.append(oracle.features(x[i:i + 256].to(dev))[-1].mean((2, 3)).double().cpu())
    f = torch.cat(feats).numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance between Gaussians (mean, covariance): FID's formula, here on oracle features."""
    from scipy import linalg

    (m1, c1), (m2, c2) = a, b
    covmean, _ = linalg.sqrtm(c1 @ c2, disp=False)
    covmean = np.real(covmean)
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


def area_distance(lab_a: np.ndarray, lab_b: np.ndarray, names) -> dict:
    """Per region: the 1-D Wasserstein distance between two sets' distributions of the region's area, in
    percent of the image (equal-size sets; long hair, big cars and small cars all have to be there)."""
    n = min(len(lab_a), len(lab_b))
    out = {}
    for k, name in enumerate(names):
        a = np.sort((lab_a[:n] == k).reshape(n, -1).mean(1))
        b = np.sort((lab_b[:n] == k).reshape(n, -1).mean(1))
        out[name] = float(np.abs(a - b).mean() * 100)
    return out


#: the regions whose colour independence the card reports (issue 38: a template tinted by the skin)
COLOUR_REGIONS = {"toy-faces": ("eyes", "mouth"), "toy-cars": ("wheels", "car_body")}


def region_colour_r2(images_u8: np.ndarray, labels: np.ndarray, names, target: str, folds: int = 5) -> float:
    """Held-out R² of region ``target``'s mean colour predicted (linear regression, ``folds``-fold cross
    validation) from the mean colours of every other region, over images where ``target`` has at least
    MIN_REGION_PIXELS pixels.  On renders whose regions are drawn independently it is low (toy-faces
    eyes 0.27); a generator whose eyes are a template tinted by the skin scores high (v4.2: 0.90)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.metrics import r2_score

    x = images_u8.reshape(len(images_u8), -1, 3).astype(np.float64) / 255.0
    lab = labels.reshape(len(labels), -1)
    k = list(names).index(target)
    means = np.full((len(x), len(names), 3), np.nan)
    for j in range(len(names)):
        m = lab == j
        cnt = m.sum(1)
        ok = cnt >= MIN_REGION_PIXELS
        means[ok, j] = (x[ok] * m[ok, :, None]).sum(1) / cnt[ok, None]
    keep = ~np.isnan(means[:, k, 0])
    y = means[keep, k]
    feats = np.delete(means[keep], k, axis=1).reshape(keep.sum(), -1)
    col_mean = np.nanmean(feats, axis=0)
    feats = np.where(np.isnan(feats), np.nan_to_num(col_mean)[None], feats)
    if len(y) < 2 * folds:
        return float("nan")
    pred = cross_val_predict(LinearRegression(), feats, y, cv=KFold(folds, shuffle=True, random_state=0))
    return float(r2_score(y, pred, multioutput="uniform_average"))


def evaluate_generator(G: Generator, domain: str, out_dir: str | Path, encoder=None, n_project: int = 50,
                       project_steps: int | None = None, n_samples: int = 500, log=print) -> dict:
    from sfeditor.toy.oracle import load_oracle

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dom = get_domain(domain)
    G = G.eval()
    metrics: dict = {"domain": domain}
    t0 = time.time()

    # --- coverage: W+ projection of held-out rendered images
    images, _ = render(domain, HELDOUT_SEED_OFFSET + 500_000 + np.arange(n_project), size=G.size)
    targets = from_uint8(images).to(G.device)
    with torch.no_grad():
        w0 = encoder(targets) if encoder is not None else G.w_avg.expand(len(targets), -1)
        enc_psnr = psnr(G.synthesis(G.styles(w0)), targets)
    bar = Progress(n_project, f"{domain} coverage: W+ projection")
    recon, settings = project_heldout(G, domain, targets, encoder, project_steps,
                                      progress=lambda i, **kw: bar.update(i, **kw))
    p = psnr(recon, targets)
    metrics["coverage"] = {"images": n_project, "steps": settings["steps"], "projector": settings,
                           "encoder_psnr_db": float(enc_psnr.mean()),
                           "w_plus_psnr_db": float(p.mean()), "w_plus_psnr_db_min": float(p.min()),
                           "seconds": round(time.time() - t0, 1)}
    save_png(out / "projection.png", make_grid(np.concatenate([images[:16], to_uint8(recon[:16])]), cols=16, scale=2))
    log(f"coverage: encoder {enc_psnr.mean():.2f} dB -> W+ projection {p.mean():.2f} dB")

    # --- realism: oracle confidence on generated vs rendered
    oracle = load_oracle(domain, device=G.device)
    names = region_names(domain)
    with torch.no_grad():
        gen = []
        for i in range(0, n_samples, 50):
            w = torch.cat([G.sample_w(1, seed=s, truncation=dom.truncation) for s in range(i, min(i + 50, n_samples))])
            gen.append(to_uint8(G.synthesis(G.styles(w))))
        gen = np.concatenate(gen)
    real, _ = render(domain, HELDOUT_SEED_OFFSET + 600_000 + np.arange(n_samples), size=G.size)
    with torch.no_grad():
        plain = []                                   # psi = 1: the mapping's own spread, untruncated
        for i in range(0, n_samples, 50):
            w = torch.cat([G.sample_w(1, seed=s) for s in range(i, min(i + 50, n_samples))])
            plain.append(to_uint8(G.synthesis(G.styles(w))))
        plain = np.concatenate(plain)
    crisp_r = float(gradient_magnitude(from_uint8(real)))
    sharpness = {"truncation": float(gradient_magnitude(from_uint8(gen))) / crisp_r,
                 "untruncated": float(gradient_magnitude(from_uint8(plain))) / crisp_r}
    lab_g, conf_g = oracle.predict(gen)
    lab_r, conf_r = oracle.predict(real)
    lab_g, lab_r = np.asarray(lab_g), np.asarray(lab_r)
    counts_g = np.stack([(lab_g == k).reshape(len(lab_g), -1).sum(1) for k in range(len(names))], 1)
    counts_r = np.stack([(lab_r == k).reshape(len(lab_r), -1).sum(1) for k in range(len(names))], 1)
    metrics["realism"] = {
        "samples": n_samples, "truncation": dom.truncation,
        "oracle_confidence_generated": float(np.mean(conf_g)), "oracle_confidence_rendered": float(np.mean(conf_r)),
        "all_regions_present_generated": float((counts_g >= MIN_REGION_PIXELS).all(1).mean()),
        "all_regions_present_rendered": float((counts_r >= MIN_REGION_PIXELS).all(1).mean()),
        "region_present_generated": {n: float((counts_g[:, k] >= MIN_REGION_PIXELS).mean()) for k, n in enumerate(names)},
        "sharpness_generated": sharpness["truncation"],
        "sharpness_generated_untruncated": sharpness["untruncated"],
    }
    # --- independence: is a small region's colour its own, or a tint of the others'? (oracle labels on both)
    metrics["colour_r2"] = {r: {"generated": region_colour_r2(gen, lab_g, names, r),
                                "rendered": region_colour_r2(real, lab_r, names, r)}
                            for r in COLOUR_REGIONS.get(domain, ()) if r in names}
    if metrics["colour_r2"]:
        log("colour R² from the other regions (generated / rendered): " + ", ".join(
            f"{r} {v['generated']:.2f} / {v['rendered']:.2f}" for r, v in metrics["colour_r2"].items()))
    # --- diversity: does the sampler cover the renderer's variety (hair styles, car sizes, skies)?
    real2, _ = render(domain, HELDOUT_SEED_OFFSET + 700_000 + np.arange(n_samples), size=G.size)
    st_r = oracle_feature_stats(oracle, real)
    lab_p = np.asarray(oracle.predict(plain)[0])
    area_g, area_p = area_distance(lab_g, lab_r, names), area_distance(lab_p, lab_r, names)
    metrics["diversity"] = {
        "frechet_oracle": frechet_distance(oracle_feature_stats(oracle, gen), st_r),
        "frechet_oracle_untruncated": frechet_distance(oracle_feature_stats(oracle, plain), st_r),
        "frechet_oracle_renders_floor": frechet_distance(oracle_feature_stats(oracle, real2), st_r),
        "region_area_w1_pct": area_g, "region_area_w1_pct_mean": float(np.mean(list(area_g.values()))),
        "region_area_w1_pct_untruncated_mean": float(np.mean(list(area_p.values()))),
    }
    dv = metrics["diversity"]
    log(f"diversity: Frechet distance on oracle features {dv['frechet_oracle']:.2f} at psi {dom.truncation}, "
        f"{dv['frechet_oracle_untruncated']:.2f} at psi 1 (two sets of renders: {dv['frechet_oracle_renders_floor']:.2f}); "
        f"region-area distance {dv['region_area_w1_pct_mean']:.2f} % ("
        + ", ".join(f"{k} {v:.2f}" for k, v in area_g.items()) + ")")
    r = metrics["realism"]
    log(f"realism: oracle confidence {r['oracle_confidence_generated']:.3f} generated vs "
        f"{r['oracle_confidence_rendered']:.3f} rendered; all regions present in "
        f"{r['all_regions_present_generated']:.1%} of samples ({r['all_regions_present_rendered']:.1%} rendered); "
        f"sharpness (image gradients against the renders') {sharpness['truncation']:.3f} at psi "
        f"{dom.truncation}, {sharpness['untruncated']:.3f} at psi 1")

    # --- pictures
    save_png(out / "samples.png", make_grid(gen[:64], cols=8, scale=2))
    save_png(out / "style-mixing-coarse.png",
             style_mixing_grid(G, range(100, 105), range(200, 206), dom.truncation, crossover=4))
    save_png(out / "style-mixing-fine.png",
             style_mixing_grid(G, range(100, 105), range(200, 206), dom.truncation, crossover=G.n_latent // 2 + 1))
    metrics["seconds"] = round(time.time() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
