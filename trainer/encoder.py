"""Train or fine-tune a toy image encoder (image -> w) for a frozen generator
(``sfeditor-train encoder --domain ...``).

The encoder gives the projector (``sfeditor.images.inversion``) its initial guess.
Losses, on freshly rendered images and on the generator's own samples:

* reconstruction: rendered image x -> E(x) -> G -> L1 + L1 of image gradients against x
  (the generator is frozen; only E learns);
* latent: a sampled w -> G(w) -> E -> squared error against w, divided by the
  spread of w (teaches E the generator's own latent distribution).

By default it starts from the encoder trained jointly with the generator
(``runs/generator-<domain>/encoder.pt``) when that exists.  Resumable from
``checkpoint.pt`` in the run folder; writes ``encoder.pt`` (the
``sfeditor.images.toy_encoder`` format) when done.  Data are rendered from
deterministic seeds, so a resumed run sees the batches an uninterrupted one would.

Register in ``trainer/cli.py``'s ``build_parser``::

    from .encoder import add_parsers as _add_encoder_parsers
    _add_encoder_parsers(sub)
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sfeditor.images.toy_encoder import ToyEncoder, load_toy_encoder, save_toy_encoder

from .common import CancelToken, Cancelled, Progress, RunDir, rng_state, run_cancellable, set_rng_state
from .generator_data import HELDOUT_SEED_OFFSET, rendered_batch
from .generator_losses import psnr, recon_loss

ENCODER_SEED_OFFSET = 5_000_000      # training renders: seeds from here (below the held-out range)


@dataclass
class EncoderRecipe:
    domain: str = "toy-faces"
    generator: str = ""              # checkpoint path or shipped domain; "" = the run's generator or the domain
    init: str = "auto"               # encoder to fine-tune; "auto" = the generator run's encoder.pt if present,
                                     # "" or "none" = start from scratch
    steps: int = 2000
    batch: int = 16
    lr: float = 1e-4
    warmup: int = 100                # linear lr warm-up steps (fresh Adam moments must not kick a good init)
    recon_weight: float = 1.0
    grad_weight: float = 1.0
    latent_weight: float = 0.1       # the E(G(w)) = w term; mostly useful when training from scratch
    latent_batch: int = 16
    truncation: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = 250
    eval_images: int = 32
    threads: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.domain not in ("toy-faces", "toy-cars"):
            raise ValueError(f"domain must be toy-faces or toy-cars, not {self.domain!r}")
        if self.steps < 0 or self.batch < 1 or self.latent_batch < 1 or not self.lr > 0:
            raise ValueError("steps must be >= 0, batch and latent_batch >= 1, lr > 0")


def _default_generator(domain: str) -> str:
    run = Path("runs") / f"generator-{domain}" / "generator.pt"
    return str(run) if run.is_file() else domain


def _default_init(domain: str) -> str:
    run = Path("runs") / f"generator-{domain}" / "encoder.pt"
    return str(run) if run.is_file() else ""


@torch.no_grad()
def heldout_psnr(G, E, domain: str, n: int = 32, batch: int = 16) -> float:
    """Mean PSNR of encoder-only reconstructions of held-out renders."""
    vals = []
    for i in range(0, n, batch):
        b = min(batch, n - i)
        x = rendered_batch(domain, i // batch, b, G.size, HELDOUT_SEED_OFFSET).to(G.device)
        rec = G.synthesis(G.styles(E(x)), noise_mode="const")
        vals.append(psnr(rec, x))
    return float(torch.cat(vals).mean())


def train_encoder(recipe: EncoderRecipe, out: str | Path, resume: bool = True, cancel: CancelToken | None = None,
                  progress_callback=None, log=print) -> Path:
    """Run (or resume) encoder training; returns the path of the written ``encoder.pt``."""
    from sfeditor.model.checkpoints import load_generator
    from sfeditor.model.identity import generator_fingerprint

    cancel = cancel or CancelToken()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    dev = torch.device(recipe.device)
    gen_src = recipe.generator or _default_generator(recipe.domain)
    G = load_generator(gen_src, device=dev).eval()
    for p in G.parameters():
        p.requires_grad_(False)
    fp = generator_fingerprint(G)

    run = RunDir(out)
    old = run.read_options()
    if resume and old and old.get("recipe", {}).get("domain") not in (None, recipe.domain):
        raise ValueError(f"{run.path} holds an encoder run for {old['recipe']['domain']}, not {recipe.domain}")
    if resume and old and old.get("generator_fingerprint") not in (None, fp):
        raise ValueError(f"{run.path} was trained against another generator; use --restart or another --out")

    torch.manual_seed(recipe.seed)
    E = ToyEncoder(G.size, G.style_dim).to(dev)
    init = _default_init(recipe.domain) if recipe.init == "auto" else ("" if recipe.init == "none" else recipe.init)
    opt = torch.optim.Adam(E.parameters(), lr=recipe.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(recipe.seed + 17)
    step = 0
    state = run.load() if resume else None
    if state is not None:
        E.load_state_dict(state["E"])
        opt.load_state_dict(state["opt"])
        set_rng_state(state["rng"])
        gen.set_state(state["gen"])
        step = int(state["step"])
        run.truncate_log("encoder", step)
        log(f"resuming {run.path} at step {step}")
    elif init:
        E.load_state_dict(load_toy_encoder(init, G=G).state_dict())
        log(f"fine-tuning the encoder from {init}")
    run.write_options({"recipe": asdict(recipe), "generator": gen_src, "generator_fingerprint": fp, "init": init})

    with torch.no_grad():
        ws = G.sample_w(4096, seed=4321, truncation=recipe.truncation)
        w_var = float(ws.var(0).mean().clamp_min(1e-8))

    def checkpoint() -> None:
        run.save({"step": step, "E": E.state_dict(), "opt": opt.state_dict(), "rng": rng_state(),
                  "gen": gen.get_state()})

    bar = Progress(recipe.steps, f"{recipe.domain} encoder", start=step, callback=progress_callback)
    t0 = time.time()
    E.train()
    while step < recipe.steps:
        x = rendered_batch(recipe.domain, step, recipe.batch, G.size, ENCODER_SEED_OFFSET).to(dev)
        rec = G.synthesis(G.styles(E(x)), noise_mode="const")
        loss_rec = recon_loss(rec, x, recipe.grad_weight)
        loss = recipe.recon_weight * loss_rec
        loss_lat = torch.zeros(())
        if recipe.latent_weight:
            with torch.no_grad():
                z = torch.randn(recipe.latent_batch, G.style_dim, generator=gen).to(dev)
                w = G.mapping(z, recipe.truncation)
                img = G.synthesis(G.styles(w), noise_mode="const").clamp(-1, 1)
            loss_lat = (E(img) - w).pow(2).mean() / w_var
            loss = loss + recipe.latent_weight * loss_lat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = recipe.lr * min(1.0, (step + 1) / max(1, recipe.warmup))
        torch.nn.utils.clip_grad_norm_(E.parameters(), 5.0)
        opt.step()
        step += 1
        with torch.no_grad():
            p = float(psnr(rec, x).mean())
        run.log({"phase": "encoder", "step": step, "loss": float(loss.detach()), "recon": float(loss_rec.detach()),
                 "latent": float(loss_lat.detach()), "psnr": p, "time": time.time() - t0})
        bar.update(step, loss=float(loss.detach()), psnr=p)
        if step % recipe.eval_every == 0 or step == recipe.steps:
            E.eval()
            held = heldout_psnr(G, E, recipe.domain, recipe.eval_images)
            E.train()
            run.log({"phase": "encoder", "step": step, "heldout_psnr": held})
        if step % recipe.checkpoint_every == 0 or step == recipe.steps or cancel.requested:
            checkpoint()
        if cancel.requested:
            raise Cancelled(f"stopped at encoder step {step}; rerun the same command to resume")
    E.eval()
    held = heldout_psnr(G, E, recipe.domain, recipe.eval_images)
    path = run.path / "encoder.pt"
    save_toy_encoder(E, path, meta={"domain": recipe.domain, "generator": gen_src, "generator_fingerprint": fp,
                                    "heldout_psnr": held, "steps": step})
    log(f"wrote {path} (held-out encoder-only PSNR {held:.2f} dB)")
    return path


# ------------------------------------------------------------------ CLI
def cmd_encoder(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .recipe import check_steps_scale, flag_overrides, load_recipe

    recipe = load_recipe(args.recipe, EncoderRecipe,
                         overrides={**flag_overrides(args), "generator": args.generator, "init": args.init})
    scale = check_steps_scale(args.steps_scale)
    if scale != 1.0:
        recipe = replace(recipe, steps=max(1, int(recipe.steps * scale)))
    out = args.out or f"runs/encoder-{recipe.domain}"
    path, rc = run_cancellable(lambda cancel: train_encoder(recipe, out, resume=not args.restart, cancel=cancel))
    if rc:
        return rc
    if args.install:
        from sfeditor.domains import resources_dir
        from sfeditor.images.toy_encoder import load_toy_encoder as _load

        dest = resources_dir() / "encoders" / f"{recipe.domain}.pt"
        save_toy_encoder(_load(path), dest, meta={"domain": recipe.domain, "source_run": str(out)})
        print(f"installed the encoder to {dest}")
    return 0


def add_parsers(sub) -> None:
    """Register ``encoder`` on ``sfeditor-train``'s subparsers."""
    from .recipe import add_run_flags

    e = sub.add_parser("encoder", help="train / fine-tune a toy image encoder (initial guesses for inversion)",
                       description="Train or fine-tune a toy encoder from a recipe (trainer/recipes/encoder-*.json; "
                                   "keys: EncoderRecipe in trainer/encoder.py). The flags override the recipe.")
    add_run_flags(e, domains=["toy-faces", "toy-cars"], domain_required=False,
                  out="run folder (default runs/encoder-<domain>)")
    e.add_argument("--generator", help="generator checkpoint (default runs/generator-<domain>/generator.pt, "
                                       "else the shipped domain)")
    e.add_argument("--init", help="encoder to fine-tune: a file, 'auto' (runs/generator-<domain>/encoder.pt "
                                  "if present) or 'none' (default: the recipe's)")
    e.add_argument("--install", action="store_true", help="copy the result into resources/encoders/<domain>.pt")
    e.set_defaults(func=cmd_encoder)
