"""Train the region oracle of a toy domain on freshly rendered (image, labels) pairs.

Training draws seeds below ``HELDOUT_SEED_START``; evaluation uses seeds from
``HELDOUT_SEED_START`` upward, so the reported accuracy is on unseen images.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sfeditor.atomic import atomic_torch_save
from sfeditor.toy import render
from sfeditor.toy.oracle import build_oracle, load_oracle, pixel_metrics, save_oracle

HELDOUT_SEED_START = 10_000_000
TRAIN_SEED_RANGE = HELDOUT_SEED_START
CKPT_FORMAT = "sfeditor-oracle-train"


def train_seeds(seed: int, step: int, batch: int) -> np.ndarray:
    """The training seeds of one step: deterministic, always < HELDOUT_SEED_START."""
    start = (seed * 1_000_003 + step * batch) % TRAIN_SEED_RANGE
    return (start + np.arange(batch, dtype=np.int64)) % TRAIN_SEED_RANGE


def heldout_seeds(n: int, offset: int = 0) -> np.ndarray:
    return HELDOUT_SEED_START + offset + np.arange(n, dtype=np.int64)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light photometric augmentation of images in [-1, 1] (labels unchanged).

    Per image: brightness/contrast/per-channel gain jitter, gaussian noise and,
    for some images, a slight gaussian blur.
    """
    b = x.shape[0]

    def rnd(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * rnd(b, 1, 1, 1, lo=0.85, hi=1.15) + mean
    x = x * rnd(b, 3, 1, 1, lo=0.93, hi=1.07) + rnd(b, 1, 1, 1, lo=-0.08, hi=0.08)
    blur = rnd(b) < 0.35
    if blur.any():
        sigma = rnd(int(blur.sum()), lo=0.35, hi=0.9)
        t = torch.arange(-1, 2, dtype=x.dtype)
        k1 = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        k1 = k1 / k1.sum(dim=1, keepdim=True)                      # [m, 3]
        k2 = k1[:, :, None] * k1[:, None, :]                       # [m, 3, 3]
        xb = x[blur]
        m, c, h, w = xb.shape
        xb = F.conv2d(F.pad(xb.reshape(1, m * c, h, w), (1, 1, 1, 1), mode="replicate"),
                      k2.repeat_interleave(c, dim=0)[:, None], groups=m * c)
        x = x.clone()
        x[blur] = xb.reshape(m, c, h, w)
    noise = rnd(b, 1, 1, 1, lo=0.0, hi=0.05)
    x = x + noise * torch.randn(x.shape, generator=gen)
    return x.clamp_(-1.0, 1.0)


def _batch(domain: str, seeds: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labs = render(domain, seeds, size)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x, torch.from_numpy(labs).long()


@torch.no_grad()
def evaluate(model, domain: str, n: int = 1000, size: int = 64, batch: int = 100, offset: int = 0) -> dict:
    """Pixel accuracy and per-class IoU on ``n`` held-out rendered images."""
    was = model.training
    model.eval()
    preds, targets = [], []
    seeds = heldout_seeds(n, offset)
    for i in range(0, n, batch):
        x, y = _batch(domain, seeds[i:i + batch], size)
        preds.append(model(x).argmax(1).numpy().astype(np.uint8))
        targets.append(y.numpy().astype(np.uint8))
    model.train(was)
    return pixel_metrics(np.concatenate(preds), np.concatenate(targets), model.num_classes)


def _lr(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 1e-2 * lr + (lr - 1e-2 * lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def train_oracle(domain: str, out_path, steps: int = 3000, batch: int = 32, seed: int = 0,
                 progress: Callable[[int, int, dict], None] | None = None, resume: bool = True,
                 lr: float = 3e-3, size: int = 64, ckpt_every: int = 200, eval_images: int = 1000,
                 threads: int | None = 1, cancel=None, init=None) -> dict:
    """Train the oracle for ``domain`` and write it to ``out_path``; returns its metrics.

    A training checkpoint (model, optimiser, step) is written atomically to
    ``out_path + '.train.pt'`` every ``ckpt_every`` steps; with ``resume`` a run
    continues from it (the data stream is a function of the step, so a resumed
    run sees the same batches). ``progress(step, steps, info)`` is called after
    every step; ``cancel`` (an object with a ``requested`` flag) stops the run
    after a checkpoint, raising ``trainer.common.Cancelled``. At the end the
    held-out pixel accuracy on ``eval_images`` images is measured and the
    compact fp16 oracle is written to ``out_path``. ``init`` (a path to an oracle file of
    the same domain, e.g. the previous renderer version's) warm-starts a fresh run from its
    weights instead of a random initialisation.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    out_path = Path(out_path)
    ckpt_path = Path(str(out_path) + ".train.pt")
    torch.manual_seed(seed)
    model = build_oracle(domain)
    if init is not None:
        start = load_oracle(domain, path=init)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in start.state_dict().items()})
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step, elapsed = 0, 0.0
    history: list[dict] = []
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck.get("format") != CKPT_FORMAT or ck.get("domain") != domain:
            raise ValueError(f"{ckpt_path} is not an oracle training checkpoint for {domain!r}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, elapsed = int(ck["step"]), float(ck.get("elapsed", 0.0))
        history = list(ck.get("history", []))
    elif resume and out_path.is_file():
        done = load_oracle(domain, path=out_path)
        if done.metrics.get("steps") == steps and "pixel_accuracy" in done.metrics:
            return dict(done.metrics)

    def save_ckpt() -> None:
        atomic_torch_save({"format": CKPT_FORMAT, "domain": domain, "step": step, "elapsed": elapsed,
                           "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "history": history, "config": {"steps": steps, "batch": batch, "seed": seed,
                                                          "lr": lr, "size": size}}, ckpt_path)

    model.train()
    t_last = time.perf_counter()
    run_loss, run_acc, first = 0.0, 0.0, True
    while step < steps:
        gen = torch.Generator().manual_seed(seed * 1_000_000_007 + step)
        x, y = _batch(domain, train_seeds(seed, step, batch), size)
        x = augment(x, gen)
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        acc = (logits.detach().argmax(1) == y).float().mean().item()
        run_loss = loss.item() if first else 0.98 * run_loss + 0.02 * loss.item()
        run_acc = acc if first else 0.98 * run_acc + 0.02 * acc
        first = False
        if step % 50 == 0 or step == steps:
            history.append({"step": step, "loss": round(run_loss, 5), "acc": round(run_acc, 5),
                            "elapsed": round(elapsed, 1)})
        if progress is not None:
            progress(step, steps, {"loss": run_loss, "acc": run_acc, "lr": opt.param_groups[0]["lr"],
                                   "elapsed": elapsed})
        stop = cancel is not None and getattr(cancel, "requested", False)
        if step % ckpt_every == 0 or step == steps or stop:
            save_ckpt()
            t_last = time.perf_counter()
        if stop and step < steps:
            from trainer.common import Cancelled

            raise Cancelled(f"oracle training stopped at step {step}; resume to continue")

    t0 = time.perf_counter()
    m = evaluate(model, domain, n=eval_images, size=size)
    metrics = {
        "steps": steps, "batch": batch, "seed": seed, "lr": lr, "size": size,
        "train_wall_s": round(elapsed, 1), "eval_wall_s": round(time.perf_counter() - t0, 1),
        "heldout_images": eval_images, "heldout_seed_start": HELDOUT_SEED_START,
        "pixel_accuracy": m["pixel_accuracy"], "mean_iou": m["mean_iou"],
        "iou": dict(zip(model.region_names, m["iou"])),
        "params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": run_loss, "torch_threads": torch.get_num_threads(),
        "init": None if init is None else Path(init).name,
    }
    save_oracle(model, out_path, metrics)
    try:
        os.unlink(ckpt_path)
    except OSError:
        pass
    return metrics


__all__ = ["train_oracle", "evaluate", "augment", "train_seeds", "heldout_seeds", "HELDOUT_SEED_START"]
