"""The codes a toy mapping network learns to sample (recipe key ``mapping_fit``; phase 2 of ``trainer.generator_loop``).

The toy recipe's mapping network regresses z onto a Gaussian fitted to latent codes of rendered
images.  Fitted to the *encoder's* codes (``"encoder"``, the original recipe), the samples inherit
the encoder's softness: the synthesis draws the same images far crisper from codes found by
optimisation (BENCHMARKS.md, "`--feat-weight`": encoder 25.3 dB / sharpness 0.71, a projected w
28.1 dB / 0.80).  The projected codes start from the encoder's code of each image and move it in W
(one w for every layer, Adam on the pixel MSE, the toy inversion preset's learning rate).

* ``"projected"``: a Gaussian fitted to the projected codes (Ledoit-Wolf covariance: a few hundred
  codes are few for 256 dimensions).  Sharper by the gradient measure, but by eye the samples are
  less coherent (ghosted outlines, blotchy colour): each image's move goes into its own directions
  outside the encoder codes' span, and a Gaussian combines them at random.
* ``"projected-mean"``: the projected codes' mean with the encoder codes' covariance
  (:func:`projected_mean_gaussian`) keeps only the move all images share.

Only the mapping changes: the synthesis, hence the S space, the regions files and the hierarchies,
stay as they are (:func:`sfeditor.regions.regions_file.synthesis_fingerprint`).  Projection is the expensive part
(≈ 1.1 s per step for a batch of 64 on two cores): the codes are saved after every batch
(``projected_codes.pt`` in the run folder, atomically), so a killed run resumes with the batches it
has, and a rerun with another fit (``--from-phase mapping``) reuses them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sfeditor.atomic import atomic_torch_save
from sfeditor.jobs import Cancelled

from .generator_data import rendered_batch
from sfeditor.images.metrics import psnr

FIT_SEED_OFFSET = 100_000      # the renders the mapping is fitted to: rendered_batch(domain, 100_000 + i, 64)
FIT_BATCH = 64


def fit_batch(domain: str, i: int, size: int, dev) -> torch.Tensor:
    """The ``i``-th batch of 64 renders the mapping's Gaussian is fitted to (fixed training seeds)."""
    return rendered_batch(domain, FIT_SEED_OFFSET + i, FIT_BATCH, size).to(dev)


@torch.no_grad()
def encoder_codes(E, domain: str, size: int, n: int, dev, amp) -> torch.Tensor:
    """The encoder's w of ``n`` fit renders (rounded down to whole batches of 64, at least one)."""
    out = []
    for i in range(max(1, n // FIT_BATCH)):
        with amp():
            out.append(E(fit_batch(domain, i, size, dev)).float())
    return torch.cat(out)


def project_batch(G, x: torch.Tensor, w0: torch.Tensor, steps: int, lr: float, amp,
                  basis: torch.Tensor | None = None) -> torch.Tensor:
    """Project the images ``x`` into W from the codes ``w0``: Adam on the pixel MSE, one w per image for
    every layer, the learning rate warmed up over the first 5 % and cosine-ramped down over the last 25 %
    (:func:`sfeditor.images.inversion.lr_schedule`, as the editor's projector).  Each image's code only gets its
    own image's gradient, so a batch is the same as projecting the images one by one.

    ``basis`` ``[D, k]`` (orthonormal columns) restricts the move to its span: w = w0 + c basis^T."""
    from sfeditor.images.inversion import lr_schedule

    w0 = w0.detach().float()
    c = torch.zeros(w0.shape[0], basis.shape[1] if basis is not None else w0.shape[1], device=w0.device,
                    requires_grad=True)

    def code():
        return w0 + (c @ basis.T if basis is not None else c)

    opt = torch.optim.Adam([c], lr=lr, betas=(0.9, 0.999))
    best_loss = torch.full((x.shape[0],), float("inf"), device=x.device)
    best_w = w0.clone()
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(i / max(steps, 1), lr, 0.05, 0.25)
        w = code()
        with amp():
            pred = G.synthesis(G.styles(w), noise_mode="const")
        per_image = (pred.float() - x).pow(2).flatten(1).mean(1)
        with torch.no_grad():       # keep each image's best code (the loss is that of w before this step)
            better = per_image < best_loss
            best_loss = torch.where(better, per_image, best_loss)
            best_w[better] = w.detach()[better]
        opt.zero_grad(set_to_none=True)
        per_image.sum().backward()
        opt.step()
    with torch.no_grad(), amp():
        w = code()
        final = (G.synthesis(G.styles(w), noise_mode="const").float() - x).pow(2).flatten(1).mean(1)
        better = final < best_loss
        best_w[better] = w[better]
    return best_w


def projected_codes(G, E, domain: str, size: int, n: int, steps: int, lr: float, dev, amp,
                    cache: str | Path | None = None, cancel=None, progress=None, log=print) -> torch.Tensor:
    """The projected w of ``n`` fit renders (whole batches of 64), resumable through ``cache``.

    ``progress(done_batches, total_batches, info)`` after each batch; ``cancel.requested`` stops after
    the batch in hand is saved (:class:`sfeditor.jobs.Cancelled`)."""
    from sfeditor.model.identity import module_fingerprint
    from sfeditor.model.identity import synthesis_fingerprint

    total = max(1, n // FIT_BATCH)
    spec = {"domain": domain, "size": size, "steps": steps, "lr": lr,
            "synthesis": synthesis_fingerprint(G), "encoder": module_fingerprint(E)}
    done: list[torch.Tensor] = []
    if cache is not None and Path(cache).is_file():
        try:
            state = torch.load(cache, map_location="cpu", weights_only=True)
            codes = list(state["codes"]) if isinstance(state, dict) else None
            ok = isinstance(state, dict) and state.get("spec") == spec and all(
                isinstance(c, torch.Tensor) and c.shape == (FIT_BATCH, G.style_dim) and torch.isfinite(c).all()
                for c in codes)
        except Exception as e:          # truncated or foreign file: project again
            log(f"projected codes: {cache} is unreadable ({type(e).__name__}); projecting again")
        else:
            if ok:
                done = codes[:total]
                log(f"projected codes: {len(done)} of {total} batches from {cache}")
            else:
                log(f"projected codes: {cache} was made with other settings or weights; projecting again")
    was_training = G.training, E.training
    G.eval()
    E.eval()
    try:
        for i in range(len(done), total):
            if cancel is not None and getattr(cancel, "requested", False):
                raise Cancelled(f"stopped projecting the mapping's fit codes at batch {i}/{total}; "
                                "rerun the same command to resume")
            x = fit_batch(domain, i, size, dev)
            with torch.no_grad(), amp():
                w0 = E(x).float()
            w = project_batch(G, x, w0, steps, lr, amp)
            done.append(w.cpu())
            if cache is not None:
                atomic_torch_save({"spec": spec, "codes": done}, cache)
            if progress is not None:
                with torch.no_grad(), amp():
                    p0 = float(psnr(G.synthesis(G.styles(w0), noise_mode="const").float(), x).mean())
                    p1 = float(psnr(G.synthesis(G.styles(w.to(dev)), noise_mode="const").float(), x).mean())
                progress(i + 1, total, {"psnr_encoder": p0, "psnr_projected": p1})
    finally:
        G.train(was_training[0])
        E.train(was_training[1])
    return torch.cat(done).to(dev)


def shrunk_gaussian(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mean, Cholesky factor of the Ledoit-Wolf covariance, and its shrinkage, of codes ``w`` [N, D]."""
    from sklearn.covariance import LedoitWolf

    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"need at least two codes [N, D] to fit a Gaussian, got {tuple(w.shape)}")
    x = w.detach().double().cpu().numpy()
    if not np.isfinite(x).all():
        raise ValueError("the codes hold non-finite values")
    lw = LedoitWolf().fit(x)
    cov = torch.from_numpy(lw.covariance_)
    L = torch.linalg.cholesky(cov + 1e-6 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype))
    return (torch.from_numpy(lw.location_).float().to(w.device), L.float().to(w.device), float(lw.shrinkage_))


def empirical_gaussian(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Cholesky factor of the sample covariance of ``w`` [N, D], with a 1e-4 relative jitter
    (the estimate ``trainer.generator.code_gaussian`` uses for the encoder's codes)."""
    cov = torch.cov(w.T)
    eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
    return w.mean(0), torch.linalg.cholesky(cov + 1e-4 * cov.diagonal().mean() * eye)


def projected_mean_gaussian(projected: torch.Tensor, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``"projected-mean"``: the projected codes' mean with the encoder codes' covariance.

    The projection moves codes mostly out of the few directions the encoder's codes span (toy-faces:
    89 % of the move lies outside their top 32 principal directions), differently for every image; a
    Gaussian over the projected codes samples those directions at random and draws incoherent detail.
    Its *mean* move is shared by all images, though (the encoder's codes are biased toward blur), so
    it alone is kept (BENCHMARKS.md, "Which codes the mapping samples")."""
    if projected.shape[1] != encoded.shape[1]:
        raise ValueError(f"projected codes have {projected.shape[1]} dimensions, encoder codes {encoded.shape[1]}")
    return projected.float().mean(0), empirical_gaussian(encoded.float())[1]


EM_CHUNK = 5   # EM iterations between progress reports, cancel checks and saved states


def fit_mixture(w: torch.Tensor, n_components: int, rank: int = 64, seed: int = 0, held_out: int = 0,
                max_iter: int = 200, log=print, progress=None, cancel=None, state: str | Path | None = None,
                chunk: int = EM_CHUNK):
    """``"mixture"``: a K-component Gaussian mixture over codes ``w`` [N, D] (scikit-learn EM, full
    covariances, 1e-4 added to their diagonals), each covariance cut to its top ``rank`` principal
    directions: a :class:`sfeditor.model.latent_prior.MixturePrior` and a report.

    One Gaussian over a multi-modal cloud of codes samples mostly between the modes, where the synthesis
    draws averaged images (BENCHMARKS.md, "A mixture prior over W").  ``held_out`` codes (the last ones)
    are left out of the fit and scored: the mean log-likelihood per code under the mixture and under
    one Gaussian fitted the same way, so an overfitted K shows.

    EM runs ``chunk`` iterations at a time (scikit-learn's warm start: the same iterations as one
    call): between chunks ``progress(iterations, max_iter, {"lower_bound": ...})`` is called,
    ``cancel.requested`` stops with :class:`Cancelled`, and with ``state`` the EM parameters are saved
    there (atomically) so that a stopped fit resumes where it was; the file is removed when done."""
    import time
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    from sfeditor.model.latent_prior import MixturePrior

    x = w.detach().double().cpu().numpy()
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"need finite codes [N, D], got shape {tuple(x.shape)}")
    n, d = x.shape
    fit, test = (x[:-held_out], x[-held_out:]) if held_out else (x, None)
    if len(fit) < 2 * n_components:
        raise ValueError(f"{len(fit)} codes are too few for {n_components} components")
    rank = max(1, min(int(rank), d))
    t0 = time.time()
    gm = GaussianMixture(n_components, covariance_type="full", reg_covar=1e-4, max_iter=max(1, int(chunk)),
                         random_state=seed, init_params="k-means++", warm_start=True)
    spec = {"codes": int(len(fit)), "dim": int(d), "components": int(n_components), "seed": int(seed),
            "sum": float(fit.sum()), "max_iter": int(max_iter)}
    keys = ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_")
    done, seconds_before = 0, 0.0
    if state is not None and Path(state).is_file():
        try:
            saved = torch.load(state, map_location="cpu", weights_only=True)
            if saved.get("spec") == spec:
                for k in keys:
                    v = saved[k]
                    setattr(gm, k, v.numpy() if isinstance(v, torch.Tensor) else float(v))
                gm.converged_ = False              # scikit-learn's mark of a fitted model: warm start from it
                done, seconds_before = int(saved["iterations"]), float(saved["seconds"])
                log(f"mixture prior: resuming the EM fit at iteration {done} from {state}")
        except Exception as e:                     # truncated or foreign file: start over
            log(f"mixture prior: {state} is unreadable ({type(e).__name__}); fitting from the start")
            done = 0
    converged = False
    while done < max_iter and not converged:
        if cancel is not None and getattr(cancel, "requested", False):
            raise Cancelled(f"stopped the mixture fit at EM iteration {done}/{max_iter}; "
                            "rerun the same command to resume")
        gm.max_iter = min(int(chunk), max_iter - done)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(fit)
        done += int(gm.n_iter_)
        converged = bool(gm.converged_)
        if state is not None:
            atomic_torch_save({"spec": spec, "iterations": done, "seconds": seconds_before + time.time() - t0,
                               **{k: torch.from_numpy(np.asarray(getattr(gm, k))) if k != "lower_bound_"
                                  else float(gm.lower_bound_) for k in keys}}, state)
        if progress is not None:
            progress(done, max_iter, {"lower_bound": round(float(gm.lower_bound_), 3)})
    if state is not None:
        Path(state).unlink(missing_ok=True)
    report = {"components": int(n_components), "rank": rank, "codes": int(len(fit)), "converged": converged,
              "iterations": done, "seconds": round(seconds_before + time.time() - t0, 1)}
    if test is not None:
        one = GaussianMixture(1, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(fit)
        report["held_out"] = int(len(test))
        report["held_out_loglik"] = float(gm.score(test))
        report["held_out_loglik_one_gaussian"] = float(one.score(test))
    cov = torch.from_numpy(gm.covariances_)                           # [K, D, D]
    evals, evecs = torch.linalg.eigh(cov)                              # ascending
    evals, evecs = evals.flip(-1)[:, :rank].clamp(min=0), evecs.flip(-1)[:, :, :rank]
    factors = evecs * evals.sqrt()[:, None, :]
    total = cov.diagonal(dim1=1, dim2=2).sum(1)
    report["variance_kept"] = float((evals.sum(1) / total).min())      # worst component
    log(f"mixture prior: {n_components} components of rank {rank} fitted to {len(fit)} codes in "
        f"{report['seconds']} s ({report['iterations']} EM iterations"
        + (f"; held-out log-likelihood {report['held_out_loglik']:.1f} per code, one Gaussian "
           f"{report['held_out_loglik_one_gaussian']:.1f}" if test is not None else "") + ")")
    prior = MixturePrior(torch.from_numpy(gm.weights_).float(), torch.from_numpy(gm.means_).float(), factors.float())
    return prior, report


def select_mixture(w: torch.Tensor, candidates, rank: int = 64, seed: int = 0, held_out: int = 0, log=print,
                   progress=None, cancel=None, state_dir: str | Path | None = None, **kw):
    """The mixture whose number of components, among ``candidates``, gives the held-out codes the
    highest mean log-likelihood (:func:`fit_mixture` for each; ``held_out`` > 0 is needed to choose
    between more than one).  Too many components overfit: on a v5 toy-faces run's codes (15,360 fitted,
    256-d) 64 full-covariance components scored 411 per held-out code, one Gaussian 436 and four 446
    (``experiments/prior_choice.py``).  The report is the chosen fit's with ``candidates``: {K: held-out
    log-likelihood}.  Each fit resumes from ``state_dir/mixture-em-K.pt`` when stopped."""
    ks = sorted({int(k) for k in ([candidates] if isinstance(candidates, int) else candidates)})
    if not ks:
        raise ValueError("no numbers of components to choose from")
    if len(ks) > 1 and not held_out:
        raise ValueError("choosing the number of components needs held-out codes")
    best = None
    scores = {}
    for k in ks:
        state = None if state_dir is None else Path(state_dir) / (f"mixture-em-{k}.pt" if len(ks) > 1
                                                                   else "mixture-em.pt")
        each = None if progress is None else \
            (lambda done, total, info, k=k: progress(done, total, {**info, "components": k}))
        prior, report = fit_mixture(w, k, rank, seed=seed, held_out=held_out, log=log, progress=each,
                                    cancel=cancel, state=state, **kw)
        scores[k] = report.get("held_out_loglik")
        if best is None or (scores[k] is not None and scores[k] > best[1]["held_out_loglik"]):
            best = (prior, report)
    prior, report = best
    if len(ks) > 1:
        report = {**report, "candidates": {str(k): round(v, 2) for k, v in scores.items()}}
        log(f"mixture prior: {report['components']} components chosen (held-out log-likelihood per code: "
            + ", ".join(f"{k}: {v:.1f}" for k, v in scores.items()) + ")")
    return prior, report


__all__ = ["fit_batch", "fit_mixture", "select_mixture", "encoder_codes", "project_batch", "projected_codes",
           "shrunk_gaussian", "empirical_gaussian", "projected_mean_gaussian"]
