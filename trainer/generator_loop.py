"""The toy generator's training loop (``sfeditor-train generator``): three resumable phases.

A from-scratch adversarial StyleGAN2 is far too slow on two CPU cores, and regressing z -> image
gives averaged blobs (reference-facts Sec. 5).  The recipe (:class:`trainer.generator_recipe.
GeneratorRecipe`) runs three phases, one method each of :class:`GeneratorTraining`, each resumable
from ``checkpoint.pt``:

1. ``ae`` (:meth:`~GeneratorTraining.autoencoder_phase`) - a small conv encoder E maps a rendered
   image to one w; the StyleGAN2 synthesis network (w broadcast to every layer, through the affine
   layers into S) reconstructs it.  Losses (:mod:`trainer.generator_losses`): L1 + L1 of image
   gradients, optionally a segmentation critic's semantic and feature losses, a patch
   discriminator, and the region-swap loss that gives each group of style channels one region (or
   the pose) to carry, so that the S space has the region-local channels StyleFusion fuses.  With
   ``param_code`` (generator v5) w is computed from the renderer's parameters instead, one block per
   group (:mod:`trainer.generator_param_code`), and E learns to regress it.
2. ``mapping`` - z -> w samples valid codes: the mapping MLP regresses z onto a Gaussian fitted to
   codes of fresh renders (the encoder's, or projected into W: :mod:`trainer.mapping_fit`;
   :meth:`~GeneratorTraining.gaussian_mapping_phase`), or a Gaussian mixture over the encoder's codes
   replaces the MLP (:meth:`~GeneratorTraining.mixture_mapping_phase`).
3. ``mix`` (:meth:`~GeneratorTraining.mixing_phase`) - style-mixing fine-tune: synthesis and a small
   image discriminator, codes mixed across layers (crossover point) and blended channel by channel
   (as StyleFusion does), anchored by the autoencoder loss so reconstructions stay sharp.

Data are rendered on the fly from deterministic seeds (:mod:`trainer.generator_data`), so a resumed
run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sfeditor.atomic import atomic_torch_save
from sfeditor.model.device import choose_bf16
from sfeditor.model.checkpoints import load_generator, save_generator
from sfeditor.model.generator import Generator
from sfeditor.images.imageio import from_uint8, make_grid, save_png, to_uint8
from sfeditor.images.inversion import InversionSettings
from sfeditor.model.identity import module_fingerprint
from sfeditor.model.latent_prior import MixturePrior, split_prior_state
from sfeditor.model.identity import outside_deep_pixels
from sfeditor.toy import swap_groups
from sfeditor.images.toy_encoder import ToyEncoder as Encoder, load_toy_encoder, save_toy_encoder

from .common import CancelToken, Cancelled, Diverged, Progress, RunDir, rng_state, set_rng_state
from .generator_blocks import (affine_masks, apply_affine_masks, block_masks, conv_masks, ramp_conv_masks,
                               rescale_masked_init)
from .generator_data import HELDOUT_SEED_OFFSET, Prefetcher, ae_step_data, rendered_batch
from .generator_param_code import ParamCode, distill_param_code, param_codes
from .generator_losses import (SMALL_REGIONS, ImageDiscriminator, PatchDiscriminator, ParamProbe, critic_feature_loss,
                               discriminator_step, gaussian_mapping_target, load_seg_critic, psnr, recon_loss,
                               pixel_weights, region_swap_loss, seg_loss, silence_loss, silence_specs,
                               swap_channel_groups, synth_w)
from .generator_recipe import GeneratorRecipe
from .generator_widen import needs_widening, widen_state
from .mapping_fit import (FIT_BATCH, empirical_gaussian, encoder_codes, projected_codes, select_mixture,
                          projected_mean_gaussian, shrunk_gaussian)

PHASES = ("ae", "mapping", "mix", "done")


class SpikeGuard:
    """Skips an optimiser step whose loss is non-finite or far above the recent average.

    bfloat16 autocast with a demodulation-free tRGB can blow up on one bad
    batch; skipping that step keeps the run healthy.  A slow blow-up (each step
    a little worse, none a spike: W = 6 at lr 0.0015 went 0.57 -> 87 over ~50
    steps) passes that test; :attr:`diverged` catches it: the running mean
    ``diverge_factor`` times above the lowest it has been.
    """

    def __init__(self, factor: float = 4.0, warmup: int = 20, diverge_factor: float = 3.0):
        self.avg, self.n, self.factor, self.warmup = 0.0, 0, factor, warmup
        self.skipped = 0
        self.best = math.inf
        self.diverge_factor = diverge_factor

    @property
    def diverged(self) -> bool:
        return self.n >= 5 * self.warmup and self.avg > self.diverge_factor * self.best

    def ok(self, loss: float) -> bool:
        if not math.isfinite(loss) or (self.n >= self.warmup and loss > self.factor * self.avg):
            self.skipped += 1
            return False
        self.n += 1
        self.avg = loss if self.n == 1 else 0.98 * self.avg + 0.02 * loss
        if self.n >= self.warmup:
            self.best = min(self.best, self.avg)
        return True


def ae_lr_factor(step: int, total: int, warmup: int = 200, decay_from: float = 0.7) -> float:
    """Learning-rate multiplier of the autoencoder phase (a pure function of the step: exact resume)."""
    f = min(1.0, (step + 1) / warmup)
    start = int(decay_from * total)
    if step >= start:
        f *= 1.0 - 0.9 * (step - start) / max(total - start, 1)
    return f


def load_generator_state(G: Generator, sd: dict) -> None:
    """``G.load_state_dict(sd)`` (strict) for a state that may carry a mixture prior (``prior.*``)."""
    rest, prior = split_prior_state(sd)
    G.set_prior(prior)
    G.load_state_dict(rest if prior is None else {**rest, **prior.tensors()})


def load_init_weights(source: str | Path, with_param_code: bool = False):
    """G and E state dicts of another generator run (its ``checkpoint.pt``, or ``generator.pt`` +
    ``encoder.pt``), for ``init_from`` fine-tuning; with ``with_param_code`` a third item, the run's
    parameter code (``None`` when it had none)."""
    src = Path(source)
    ck = src / "checkpoint.pt" if src.is_dir() else src
    if ck.is_file():
        state = torch.load(ck, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "G" in state and "E" in state:
            return (state["G"], state["E"], state.get("P")) if with_param_code else (state["G"], state["E"])
    if src.is_dir() and (src / "generator.pt").is_file() and (src / "encoder.pt").is_file():
        g, e = load_generator(src / "generator.pt", device="cpu").state_dict(), \
            load_toy_encoder(src / "encoder.pt").state_dict()
        return (g, e, None) if with_param_code else (g, e)
    raise ValueError(f"{source}: no generator run to start from (expected checkpoint.pt, "
                     "or generator.pt and encoder.pt)")


def init_group_shares(source: str | Path) -> dict | None:
    """The ``group_shares`` the run at ``source`` (a run folder or its ``checkpoint.pt``) split its
    channels by, from its ``options.json``; None when it records none (then the recipe's own apply)."""
    from sfeditor.validate import load_json_file

    src = Path(source)
    p = (src if src.is_dir() else src.parent) / "options.json"
    opts = load_json_file(p, "run options file") if p.is_file() else {}
    shares = ((opts or {}).get("recipe") or {}).get("group_shares") or None
    return GeneratorRecipe(group_shares=shares).group_shares if shares else None


def trainable_parameters(G: nn.Module, E: nn.Module, prefixes: tuple) -> list:
    """The autoencoder phase's parameters: all of G and E, or (``prefixes`` given) only G's
    parameters whose names start with one of them; the rest (E included) get ``requires_grad``
    off until the autoencoder phase ends.  ``("convs.7.conv.weight", "to_rgbs.3.conv.weight",
    "to_rgbs.3.bias")`` fine-tunes the last conv's kernel and the last toRGB's (not its affine): every
    DeepPixel (paper Sec. 4.2: the feature maps the conv styles modulate) and every affine A stay
    bit-identical, so the S space, the regions file and the hierarchy stay valid
    (``sfeditor.regions.deep_pixel_fingerprint``; the run's log says whether they do)."""
    if not prefixes:
        return list(G.parameters()) + list(E.parameters())
    keep = []
    for name, p in G.named_parameters():
        p.requires_grad_(any(name.startswith(pre) for pre in prefixes))
        if p.requires_grad:
            keep.append(p)
    for p in E.parameters():
        p.requires_grad_(False)
    if not keep:
        raise ValueError(f"no generator parameter starts with any of {list(prefixes)}")
    return keep


def describe_trainable(G: nn.Module, prefixes: tuple) -> str:
    """One log line: how many weights ``prefixes`` trains and whether S-space files survive it."""
    names = [n for n, _ in G.named_parameters() if any(n.startswith(pre) for pre in prefixes)]
    count = sum(p.numel() for n, p in G.named_parameters() if n in names)
    outside = outside_deep_pixels(G)
    inside = [n for n in names if not outside(n)]
    if not inside:
        return (f"training {count:,} weights of the image head only ({', '.join(names)}): the DeepPixels and "
                "the S space stay as they are, so regions files and hierarchies made for this generator still fit")
    return (f"training {count:,} weights; {', '.join(inside)} shape DeepPixels or S codes: regions files and "
            "hierarchies made for this generator will have to be rebuilt")


def _save_state(run: RunDir, phase: str, step: int, G, E, opts: dict, extra: dict | None = None) -> None:
    state = {"phase": phase, "step": step, "G": G.state_dict(), "E": E.state_dict(),
             "config": G.config.to_dict(), "rng": rng_state(),
             "opts": {k: v.state_dict() for k, v in opts.items()}}
    state.update(extra or {})
    run.save(state)


def code_gaussian(E: nn.Module, domain: str, size: int, n: int, dev, amp) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Cholesky factor of the encoder codes of ``n`` fresh renders (fixed seeds)."""
    return empirical_gaussian(encoder_codes(E, domain, size, n, dev, amp))


def projected_codes_of(recipe: GeneratorRecipe, G: Generator, E: nn.Module, run: RunDir, dev, amp, cancel,
                       progress_callback, log) -> torch.Tensor:
    """The codes of ``recipe.mapping_fit_images`` fit renders projected into W (:mod:`trainer.mapping_fit`;
    cached in the run folder as ``projected_codes.pt``, so a stopped run resumes)."""
    lr = recipe.mapping_project_lr or InversionSettings.for_generator(G, recipe.domain).lr
    n_batches = max(1, recipe.mapping_fit_images // FIT_BATCH)
    bar = Progress(n_batches, f"{recipe.domain} projecting the mapping's fit codes (x{FIT_BATCH})",
                   callback=progress_callback)

    def progress(done, total, info):
        run.log({"phase": "mapping-fit", "batch": done, **info})
        bar.update(done, **info)

    return projected_codes(G, E, recipe.domain, recipe.size, recipe.mapping_fit_images,
                           recipe.mapping_project_steps, lr, dev, amp, cache=run.path / "projected_codes.pt",
                           cancel=cancel, progress=progress, log=log)


def projected_gaussian(recipe: GeneratorRecipe, G: Generator, E: nn.Module, run: RunDir, dev, amp, cancel,
                       progress_callback, log) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Cholesky factor of the Gaussian the mapping regresses onto, from the fit renders' codes
    projected into W (:func:`projected_codes_of`): ``"projected"``: their mean and Ledoit-Wolf covariance;
    ``"projected-mean"``: their mean with the covariance of the same renders' encoder codes."""
    codes = projected_codes_of(recipe, G, E, run, dev, amp, cancel, progress_callback, log)
    if recipe.mapping_fit == "projected-mean":
        mu, L = projected_mean_gaussian(codes, encoder_codes(E, recipe.domain, recipe.size, len(codes), dev, amp))
        log(f"mapping fit: mean of {codes.shape[0]} projected codes, covariance of their encoder codes")
        return mu, L
    mu, L, shrinkage = shrunk_gaussian(codes)
    log(f"mapping fit: {codes.shape[0]} projected codes, Ledoit-Wolf shrinkage {shrinkage:.3f}")
    return mu, L


def mixture_prior(recipe: GeneratorRecipe, G: Generator, E: nn.Module, run: RunDir, dev, amp, cancel,
                  progress_callback, log, P: ParamCode | None = None):
    """The mixture prior over ``recipe.mapping_fit_images`` encoder codes (:func:`trainer.mapping_fit.select_mixture`:
    the last 1,024 (at most 1/8) held out and scored; with a list of ``mapping_components`` the best of
    them on those), cached in the run folder as ``mixture.pt`` with what it
    was fitted from, so a rerun or a resumed run does not fit it again (the EM fit takes 6-22 min here; a
    stopped fit resumes from ``mixture-em[-K].pt``, saved every 5 EM iterations).  With a parameter code ``P``
    the codes are its codes of the same renders."""
    spec = {"domain": recipe.domain, "size": recipe.size, "images": recipe.mapping_fit_images,
            "components": recipe.mapping_components, "rank": recipe.mapping_rank, "seed": recipe.seed,
            "encoder": module_fingerprint(E if P is None else P)}
    cache = run.path / "mixture.pt"
    if cache.is_file():
        try:
            state = torch.load(cache, map_location="cpu", weights_only=True)
            if state.get("spec") == spec:
                prior = MixturePrior(state["weights"], state["means"], state["factors"])
                log(f"mixture prior: {prior.n_components} components from {cache}")
                return prior, dict(state["report"])
            log(f"mixture prior: {cache} was fitted with other settings or another encoder; fitting again")
        except Exception as e:          # truncated or foreign file (PriorError: tampered tensors): fit again
            log(f"mixture prior: {cache} is unreadable ({type(e).__name__}); fitting again")
    log(f"mapping: encoding {recipe.mapping_fit_images} renders for the mixture prior")
    codes = encoder_codes(E, recipe.domain, recipe.size, recipe.mapping_fit_images, dev, amp) if P is None \
        else param_codes(P, recipe.domain, recipe.mapping_fit_images, dev)
    bars = []

    def progress(done, total, info):
        k = info.get("components")
        if not bars or bars[-1][0] != k:   # made at a fit's first report: its rate counts from there
            bars.append((k, Progress(total, f"{recipe.domain} mixture prior, {k} components: EM iterations "
                                     "(until converged)", start=done, callback=progress_callback)))
        run.log({"phase": "mapping-fit", "em_iteration": done, **info})
        bars[-1][1].update(done, **info)

    prior, report = select_mixture(codes, recipe.mapping_components, recipe.mapping_rank, seed=recipe.seed,
                                   held_out=min(1024, len(codes) // 8), max_iter=200, log=log, progress=progress,
                                   cancel=cancel, state_dir=run.path)
    atomic_torch_save({"spec": spec, "report": report, "weights": prior.weights, "means": prior.means,
                       "factors": prior.factors}, cache)
    return prior, report




def _skip_latent_discriminator_init(style_dim: int, hidden: int = 512) -> None:
    """Draw the random numbers the dropped latent-GAN mapping's discriminator (three Linear layers)
    drew at this point of the setup, so a seed still gives the patch discriminator the weights it
    gave before that mode was deleted (bit-identical runs)."""
    for fan_in, fan_out in ((style_dim, hidden), (hidden, hidden), (hidden, 1)):
        nn.Linear(fan_in, fan_out)


class GeneratorTraining:
    """One run of the recipe: the networks, their optimisers, the run folder; one method per phase.

    Each phase method trains from ``self.step`` to its last step, checkpointing on the way, and
    leaves ``self.phase`` at the next phase (step 0, checkpointed)."""

    def __init__(self, recipe: GeneratorRecipe, out: str | Path, cancel: CancelToken | None,
                 progress_callback, log):
        self.recipe, self.cancel, self.progress_callback, self.log = recipe, cancel or CancelToken(), \
            progress_callback, log
        self.run = RunDir(out)
        if recipe.threads:
            torch.set_num_threads(recipe.threads)
        torch.manual_seed(recipe.seed)
        self.G = Generator(recipe.generator_config())
        self.affines, self.convs, self.blocks, self.silence = [], [], None, []
        if recipe.factorised:            # v5: w = [w_global | region blocks], block-sparse affines
            groups = tuple(swap_groups(recipe.domain))
            self.affines = affine_masks(self.G, groups, recipe.group_shares, recipe.w_global_dim,
                                        tuple(recipe.isolated_groups), recipe.isolated_from)
            self.blocks = block_masks(groups, recipe.style_dim, recipe.w_global_dim)
            rescale_masked_init(self.affines)
            if recipe.isolated_groups:   # (weight, mask) pairs too; demodulation makes their scale moot
                self.convs = conv_masks(self.G, groups, recipe.group_shares, recipe.isolated_groups)
        self.silence = silence_specs(self.G, tuple(swap_groups(recipe.domain)), recipe.group_shares,
                                     recipe.isolated_groups, recipe.domain, recipe.isolated_from) \
            if recipe.silence_weight > 0 else []
        self.probe = ParamProbe(recipe.domain, self.blocks, tuple(swap_groups(recipe.domain))) \
            if recipe.param_weight > 0 else None
        self.P = ParamCode(recipe.domain, self.blocks, tuple(swap_groups(recipe.domain))) \
            if recipe.param_code else None
        self.E = Encoder(recipe.size, recipe.style_dim)
        self.D_img = ImageDiscriminator(recipe.size)
        _skip_latent_discriminator_init(recipe.style_dim)
        self.D_patch = PatchDiscriminator()
        G, E = self.G, self.E
        self.syn_params = [p for n, p in G.named_parameters() if not n.startswith("style.")]
        ae_params = trainable_parameters(G, E, tuple(recipe.ae_trainable)) + \
            (list(self.probe.parameters()) if self.probe is not None else []) + \
            (list(self.P.parameters()) if self.P is not None else [])
        self.opts = {
            "ae": torch.optim.Adam(ae_params, lr=recipe.ae_lr, betas=(0.9, 0.99)),
            "mapreg": torch.optim.Adam(G.style.parameters(), lr=recipe.mapping_fit_lr, betas=(0.9, 0.99)),
            "mix": torch.optim.Adam(self.syn_params + list(E.parameters()), lr=recipe.mix_lr, betas=(0.5, 0.99)),
            "dimg": torch.optim.Adam(self.D_img.parameters(), lr=0.0005, betas=(0.5, 0.99)),
            "dpatch": torch.optim.Adam(self.D_patch.parameters(), lr=0.001, betas=(0.0, 0.99)),
        }
        dev = recipe.device if recipe.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.dev = torch.device(dev)
        for m in (G, E, self.D_img, self.D_patch) + tuple(m for m in (self.probe, self.P) if m is not None):
            m.to(self.dev)
        self.use_bf16, warning = choose_bf16(recipe.bf16, self.dev)
        if warning:
            log(f"warning: {warning}")
        self.phase, self.step = "ae", 0
        self.t_start = time.time()

    # ------------------------------------------------------------ plumbing
    def amp(self):
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def start(self, resume: bool, from_phase: str | None) -> None:
        """Resume from the run folder's checkpoint, rerun from a phase, or start (from ``init_from``)."""
        recipe, run, G, E = self.recipe, self.run, self.G, self.E
        state = run.load() if resume else None
        if state is not None:
            old = run.read_options()
            if old and old.get("recipe", {}).get("domain") != recipe.domain:
                raise ValueError(f"{run.path} holds a run for {old['recipe']['domain']}, not {recipe.domain}")
            load_generator_state(G, state["G"])
            E.load_state_dict(state["E"])
            for key, net in (("D_img", self.D_img), ("D_patch", self.D_patch), ("probe", self.probe),
                             ("P", self.P)):
                if key in state and net is not None:
                    net.load_state_dict(state[key])
            for k, o in self.opts.items():
                if k in state["opts"]:
                    o.load_state_dict(state["opts"][k])
            set_rng_state(state["rng"])
            self.phase, self.step = state["phase"], int(state["step"])
            run.truncate_log(self.phase, self.step)
            self.log(f"resuming {run.path} at phase {self.phase}, step {self.step}")
            if from_phase is not None:
                if from_phase not in ("mapping", "mix"):
                    raise ValueError(f"from_phase must be 'mapping' or 'mix', not {from_phase!r}")
                if PHASES.index(from_phase) > PHASES.index(self.phase):
                    raise ValueError(f"{run.path} is at phase {self.phase}; it has not reached {from_phase} yet")
                self.phase, self.step = from_phase, 0
                self.log(f"rerunning from phase {self.phase}")
        elif from_phase is not None:
            raise ValueError(f"{run.path}: no run to rerun from phase {from_phase}")
        elif recipe.init_from:
            init_g, init_e, init_p = load_init_weights(recipe.init_from, with_param_code=True)
            rest, prior = split_prior_state(init_g)
            if needs_widening(rest, G):   # wider layers than the run it starts from: same images
                groups = tuple(swap_groups(recipe.domain)) if recipe.factorised else None
                init_g = {**widen_state(rest, G, groups, recipe.group_shares, init_group_shares(recipe.init_from)),
                          **(prior.tensors() if prior is not None else {})}
                self.log(f"widened {recipe.init_from}'s layers to {recipe.channels} (new channels unread)")
            load_generator_state(G, init_g)
            E.load_state_dict(init_e)
            self.log(f"starting from the weights of {recipe.init_from}")
            if self.P is not None and init_p is not None:
                self.P.load_state_dict(init_p)
                self.log("parameter code: the run's own, carried over")
            elif self.P is not None and recipe.param_code_distill > 0:
                distill_param_code(self.P, E, recipe.domain, recipe.size, recipe.param_code_distill, self.dev,
                                   self.log, cancel=self.cancel)
        run.write_options({"recipe": json.loads(json.dumps(asdict(recipe))), "bf16": self.use_bf16,
                           "generator": G.config.to_dict()})
        if recipe.ae_trainable and self.phase == "ae":
            self.log(describe_trainable(G, tuple(recipe.ae_trainable)))
        if self.affines:                  # the masks follow the weights to the device
            self.affines = [(w, m.to(w.device)) for w, m in self.affines]
            self.convs = [(w, m.to(w.device)) for w, m in self.convs]
            self.blocks = self.blocks.to(self.dev)
            apply_affine_masks(self.affines)
            if self.phase != "ae" or self.step >= self.recipe.isolate_ramp:
                apply_affine_masks(self.convs)    # (during the ramp the checkpoint holds the faded weights)
        self.fixed = rendered_batch(recipe.domain, 0, 16, recipe.size, HELDOUT_SEED_OFFSET).to(self.dev)

    def checkpoint(self) -> None:
        _save_state(self.run, self.phase, self.step, self.G, self.E, self.opts,
                    {"D_img": self.D_img.state_dict(), "D_patch": self.D_patch.state_dict(),
                     **({"probe": self.probe.state_dict()} if self.probe is not None else {}),
                     **({"P": self.P.state_dict()} if self.P is not None else {})})

    def next_phase(self, phase: str) -> None:
        self.phase, self.step = phase, 0
        self.checkpoint()

    def checkpoint_or_stop(self, total: int, every: int, guard: SpikeGuard | None = None) -> None:
        """After a step: checkpoint every ``every`` steps, at the end, or when cancelled (then stop);
        a diverged loss stops the run without overwriting the last (healthy) checkpoint."""
        ph, st = self.phase, self.step
        if guard is not None and guard.diverged:
            raise Diverged(f"{ph} step {st}: the loss diverged (running mean {guard.avg:.4g}, lowest "
                           f"{guard.best:.4g}); {self.run.checkpoint} still holds an earlier step. Lower the "
                           "learning rate (or region_weight) and rerun the command to resume from it.")
        if st % every == 0 or st == total or self.cancel.requested:
            self.checkpoint()
        if self.cancel.requested:
            raise Cancelled(f"stopped at {ph} step {st}; rerun the same command to resume")

    def samples(self, tag: str) -> float:
        """A sample grid (held-out renders, their reconstructions, and after the autoencoder phase
        samples at psi 0.7) in ``samples/``; returns the held-out reconstruction PSNR."""
        G, E, fixed = self.G, self.E, self.fixed
        with torch.no_grad():
            G.eval(); E.eval()
            rec = synth_w(G, E(fixed))
            rows = [to_uint8(fixed), to_uint8(rec)]
            if self.phase != "ae":
                G.update_w_avg(2048, seed=1)
                z = torch.randn(16, self.recipe.style_dim, generator=torch.Generator().manual_seed(7)).to(self.dev)
                rows.append(to_uint8(synth_w(G, G.mapping(z, 0.7))))
            save_png(self.run.path / "samples" / f"{tag}.png", make_grid(np.concatenate(rows), cols=16, scale=2))
            G.train(); E.train()
            return float(psnr(rec, fixed).mean())

    def elapsed(self) -> float:
        return time.time() - self.t_start

    # --------------------------------------------------- phase 1: autoencoder
    def autoencoder_phase(self) -> None:
        recipe, G, E, dev = self.recipe, self.G, self.E, self.dev
        opt = self.opts["ae"]
        bar = Progress(recipe.ae_steps, f"{recipe.domain} ae", start=self.step, callback=self.progress_callback)
        guard = SpikeGuard()
        ae_params = [p for group in opt.param_groups for p in group["params"]]
        small = tuple(recipe.weighted_regions) or SMALL_REGIONS.get(recipe.domain, ())
        critic = load_seg_critic(recipe.domain, recipe.seg_critic, dev) \
            if recipe.seg_weight > 0 or recipe.feat_weight > 0 else None
        groups = swap_channel_groups(G.layout, len(swap_groups(recipe.domain))).to(dev) \
            if recipe.swap_weight > 0 else None
        prefetch = Prefetcher(functools.partial(ae_step_data, recipe.domain, recipe.batch, recipe.size,
                                                recipe.swap_weight > 0, recipe.seed,
                                                params=self.probe is not None or self.P is not None),
                              workers=recipe.data_workers)
        try:
            while self.step < recipe.ae_steps:
                step = self.step
                seeds_a, images, lab, swap, prm = prefetch.get(step)
                x = from_uint8(images).to(dev)
                wmap = pixel_weights(recipe, lab, small)
                wmap = None if wmap is None else wmap.to(dev)
                extra = {}
                train_e = self.P is not None and step % recipe.encoder_every == 0
                with self.amp():
                    if self.P is None:
                        w_a = E(x)
                    else:                # v5 parameter code; the encoder learns to regress it
                        w_a = self.P(prm)
                        w_e = E(x).float() if train_e else None
                    feats = []
                    hooks = [layer.register_forward_hook(lambda m, i, o: feats.append(o))
                             for layer in G.conv_layers] if self.silence else []
                    try:
                        rec = synth_w(G, w_a).float()
                    finally:
                        for h in hooks:
                            h.remove()
                loss = recon_loss(rec, x, recipe.grad_weight, wmap)
                if self.silence:
                    quiet = silence_loss(feats, torch.from_numpy(lab).to(dev), self.silence,
                                         relative=recipe.silence_relative)
                    extra["silence"] = float(quiet.detach())
                    loss = loss + recipe.silence_weight * quiet
                    del feats
                enc = None
                if train_e:
                    target = w_a.detach().float()
                    enc = F.mse_loss(w_e, target) / target.var(0).mean().clamp_min(1e-8)
                    extra["enc"] = float(enc.detach())
                if recipe.swap_weight > 0:
                    sw, sw_psnr = region_swap_loss(G, E, recipe.domain, step, seeds_a, w_a, groups, self.amp,
                                                   recipe.grad_weight, small, recipe.region_weight, critic,
                                                   recipe.seg_weight, recipe.seed, rendered=swap, x_a=x,
                                                   focus=recipe.swap_focus, rec_a=rec, anchor=recipe.swap_anchor,
                                                   blocks=self.blocks,
                                                   weights=functools.partial(pixel_weights, recipe, small=small),
                                                   w_b=None if self.P is None else self.P(swap["pb"]))
                    extra.update(swap=float(sw.detach()), swap_psnr=sw_psnr)
                if self.probe is not None:
                    probe = self.probe.loss(w_a.float(), prm)
                    extra["param"] = float(probe.detach())
                    loss = loss + recipe.param_weight * probe
                if critic is not None and recipe.seg_weight > 0:
                    sem = seg_loss(critic, rec, torch.from_numpy(lab).long().to(dev), wmap)
                    extra["seg"] = float(sem.detach())
                    loss = loss + recipe.seg_weight * sem
                if critic is not None and recipe.feat_weight > 0:
                    feat = critic_feature_loss(critic, rec, x)
                    extra["feat"] = float(feat.detach())
                    loss = loss + recipe.feat_weight * feat
                total = loss if enc is None else loss + enc
                if recipe.ae_adv_weight > 0 and step >= recipe.ae_adv_start:
                    adv, adv_stats = self._patch_adversarial(x, rec, loss, step)
                    extra.update(adv_stats)
                    total = total + adv
                if recipe.swap_weight > 0:
                    total = total + recipe.swap_weight * sw
                opt.zero_grad(set_to_none=True)
                total.backward()
                for g in opt.param_groups:   # warm-up, constant, then linear decay to 10 %
                    g["lr"] = recipe.ae_lr * ae_lr_factor(step, recipe.ae_steps)
                lv = float(loss.detach())
                if guard.ok(lv):
                    torch.nn.utils.clip_grad_norm_(ae_params, recipe.clip_grad)
                    opt.step()
                    apply_affine_masks(self.affines)
                    ramp_conv_masks(self.convs, step + 1, recipe.isolate_ramp)
                self.step += 1
                with torch.no_grad():
                    p = float(psnr(rec, x).mean())
                self.run.log({"phase": "ae", "step": self.step, "loss": lv, "psnr": p, **extra,
                              "time": self.elapsed()})
                bar.update(self.step, loss=lv, psnr=p)
                if self.step % recipe.sample_every == 0 or self.step == recipe.ae_steps:
                    held = self.samples(f"ae-{self.step:06d}")
                    self.run.log({"phase": "ae", "step": self.step, "heldout_psnr": held})
                self.checkpoint_or_stop(recipe.ae_steps, recipe.checkpoint_every, guard)
        finally:
            prefetch.close()
        self.next_phase("mapping")

    def _patch_adversarial(self, x: torch.Tensor, rec: torch.Tensor, loss: torch.Tensor,
                           step: int) -> tuple[torch.Tensor, dict]:
        """One patch-discriminator step and the generator's adversarial term, weighted adaptively.

        VQGAN's adaptive weight: the adversarial gradient at the last synthesis conv is held at
        ``ae_adv_weight`` x the reconstruction gradient there (a fixed weight of 0.1 let the
        discriminator wreck the reconstructions within 200 steps in a trial), ramped in over
        ``ae_adv_ramp`` steps while the discriminator warms up."""
        recipe = self.recipe
        stats = discriminator_step(self.D_patch, self.opts["dpatch"], x, rec, recipe.r1_gamma,
                                   step % recipe.r1_every == 0, recipe.r1_every)
        g_adv = F.softplus(-self.D_patch(rec)).mean()
        last = self.G.convs[-1].conv.weight
        g_rec = torch.autograd.grad(loss, last, retain_graph=True)[0]
        g_gan = torch.autograd.grad(g_adv, last, retain_graph=True)[0]
        lam = (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e3).detach()
        ramp = min(1.0, (step - recipe.ae_adv_start) / max(recipe.ae_adv_ramp, 1))
        weight = recipe.ae_adv_weight * ramp * lam
        return weight * g_adv, {**stats, "g_adv": float(g_adv.detach()), "adv_weight": float(weight)}

    # ------------------------------------------------------ phase 2: mapping
    def mixture_mapping_phase(self) -> None:
        """A Gaussian mixture over the encoder's codes replaces the mapping MLP (sfeditor.model.latent_prior):
        one Gaussian samples between the code cloud's modes, where the synthesis draws averaged images."""
        self.E.eval()
        prior, report = mixture_prior(self.recipe, self.G, self.E, self.run, self.dev, self.amp, self.cancel,
                                      self.progress_callback, self.log, P=self.P)
        self.G.set_prior(prior)
        self.run.log({"phase": "mapping", "step": 0, "mixture": report, "time": self.elapsed()})
        self.E.train()
        self.next_phase("mix")

    def gaussian_mapping_phase(self) -> None:
        """The mapping MLP regressed onto a Gaussian fit of the codes (relative error ~0.06): it keeps
        the codes' mean and covariance and is a plain, stable regression (the latent GAN it replaced
        collapsed toward a few faces)."""
        recipe, G, E = self.recipe, self.G, self.E
        G.set_prior(None)                  # this phase trains the mapping MLP itself
        E.eval()
        if recipe.mapping_fit in ("projected", "projected-mean"):
            mu, L = projected_gaussian(recipe, G, E, self.run, self.dev, self.amp, self.cancel,
                                       self.progress_callback, self.log)
        elif self.P is not None:
            mu, L = empirical_gaussian(param_codes(self.P, recipe.domain, recipe.mapping_fit_images, self.dev))
        else:
            mu, L = code_gaussian(E, recipe.domain, recipe.size, recipe.mapping_fit_images, self.dev, self.amp)
        scale = float(L.pow(2).sum() / L.shape[0])          # mean variance per w dimension
        opt = self.opts["mapreg"]
        bar = Progress(recipe.mapping_steps, f"{recipe.domain} mapping (gaussian)", start=self.step,
                       callback=self.progress_callback)
        while self.step < recipe.mapping_steps:
            step = self.step
            z = torch.randn(recipe.mapping_batch, recipe.style_dim,
                            generator=torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)).to(self.dev)
            fit = F.mse_loss(G.style(z), gaussian_mapping_target(z, mu, L)) / scale
            for g in opt.param_groups:
                g["lr"] = recipe.mapping_fit_lr * ae_lr_factor(step, recipe.mapping_steps, warmup=50)
            opt.zero_grad(set_to_none=True)
            fit.backward()
            opt.step()
            self.step += 1
            self.run.log({"phase": "mapping", "step": self.step, "fit": float(fit.detach()), "time": self.elapsed()})
            bar.update(self.step, fit=float(fit.detach()))
            if self.step % (recipe.sample_every * 4) == 0 or self.step == recipe.mapping_steps:
                self.samples(f"mapping-{self.step:06d}")
            self.checkpoint_or_stop(recipe.mapping_steps, recipe.checkpoint_every * 5)
        E.train()
        self.next_phase("mix")

    # ------------------------------------------------ phase 3: mixing fine-tune
    def mixing_phase(self) -> None:
        recipe, G, E, dev, D_img = self.recipe, self.G, self.E, self.dev, self.D_img
        bar = Progress(max(recipe.mix_steps, 1), f"{recipe.domain} mix", start=self.step,
                       callback=self.progress_callback)
        guard = SpikeGuard()
        gen = torch.Generator().manual_seed(recipe.seed + 2)
        n_lat = G.n_latent
        b = recipe.batch
        while self.step < recipe.mix_steps:
            x = rendered_batch(recipe.domain, 200_000 + self.step, b, recipe.size).to(dev)
            with torch.no_grad():
                z = torch.randn(2 * b, recipe.style_dim, generator=gen).to(dev)
                w = G.mapping(z)
                wa, wb = w[:b], w[b:]
                cut = torch.randint(1, n_lat, (b,), generator=gen).to(dev)
                layer = torch.arange(n_lat, device=dev)[None, :, None]
                w_plus = torch.where(layer < cut[:, None, None], wa[:, None], wb[:, None])
            s_mix = G.styles(w_plus)
            # half of the batch: channel-wise blend of two codes (what a FusionNet outputs)
            sa, sb = G.styles(wa), G.styles(wb)
            q = [(torch.rand(t.shape, generator=gen) < 0.5).float().to(dev) for t in sa.layers]
            flat_q = torch.cat(q, 1)
            s_blend = sa.from_flat(G, flat_q * sa.flat() + (1 - flat_q) * sb.flat())
            half = b // 2
            with self.amp():
                fake = torch.cat([G.synthesis(s_mix[:half]), G.synthesis(s_blend[half:])]).float()
            # D step
            x.requires_grad_(True)
            d_real = D_img(x)
            with self.amp():
                d_fake = D_img(fake.detach()).float()
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            (grad,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            self.opts["dimg"].zero_grad(set_to_none=True)
            (d_loss + 5.0 * r1).backward()
            self.opts["dimg"].step()
            x = x.detach()
            # G step: adversarial on mixed codes + autoencoder anchor
            with self.amp():
                g_adv = F.softplus(-D_img(fake).float()).mean()
                rec = synth_w(G, E(x)).float()
            ae = recon_loss(rec, x, recipe.grad_weight)
            self.opts["mix"].zero_grad(set_to_none=True)
            (ae + recipe.adv_weight * g_adv).backward()
            if guard.ok(float(ae.detach())):
                torch.nn.utils.clip_grad_norm_(self.syn_params + list(E.parameters()), recipe.clip_grad)
                self.opts["mix"].step()
                apply_affine_masks(self.affines)
                apply_affine_masks(self.convs)
            self.step += 1
            with torch.no_grad():
                p = float(psnr(rec, x).mean())
            self.run.log({"phase": "mix", "step": self.step, "d_loss": float(d_loss.detach()),
                          "g_adv": float(g_adv.detach()), "ae": float(ae.detach()), "psnr": p,
                          "r1": float(r1.detach()), "time": self.elapsed()})
            bar.update(self.step, d=float(d_loss.detach()), g=float(g_adv.detach()), psnr=p)
            if self.step % recipe.sample_every == 0 or self.step == recipe.mix_steps:
                self.samples(f"mix-{self.step:06d}")
            self.checkpoint_or_stop(recipe.mix_steps, recipe.checkpoint_every, guard)
        self.next_phase("done")

    # ------------------------------------------------------------ the files
    def write_outputs(self) -> Path:
        G, E, recipe = self.G, self.E, self.recipe
        G.eval()
        with torch.no_grad():
            G.update_w_avg(4096, seed=0)
        out_path = self.run.path / "generator.pt"
        meta = {"domain": recipe.domain, "recipe": json.loads(json.dumps(asdict(recipe)))}   # JSON-safe keys
        save_generator(G, out_path, meta=meta, half=False)
        save_toy_encoder(E.cpu(), self.run.path / "encoder.pt", meta={"domain": recipe.domain})
        self.log(f"wrote {out_path}")
        return out_path


def train_generator(recipe: GeneratorRecipe, out: str | Path, resume: bool = True,
                    cancel: CancelToken | None = None, progress_callback=None, log=print,
                    from_phase: str | None = None) -> Path:
    """Run (or resume) the three-phase recipe; writes ``generator.pt`` and ``encoder.pt`` in ``out``.

    ``from_phase`` ("mapping" or "mix") reruns an existing run from that phase on with its current
    weights (e.g. after changing the mapping recipe)."""
    t = GeneratorTraining(recipe, out, cancel, progress_callback, log)
    t.start(resume, from_phase)
    if t.phase == "ae":
        t.autoencoder_phase()
    if recipe.ae_trainable:              # the later phases train what they train (the mapping, ...)
        for p in list(t.G.parameters()) + list(t.E.parameters()):
            p.requires_grad_(True)
    if t.phase == "mapping":
        if recipe.mapping_fit == "mixture":
            t.mixture_mapping_phase()
        else:
            t.gaussian_mapping_phase()
    if t.phase == "mix":
        t.mixing_phase()
    return t.write_outputs()
