"""float32 against bfloat16 autocast on this machine's CPU (or GPU): is bf16 native here?

    python bench/precision.py --threads 2

Three workloads on the shipped toy generators, each timed in both precisions in the same run
(median wall time of ``--repeats`` calls after a warm-up):

* preview: one 64 px image from a style code, no gradient (the app's live preview);
* generator step: one autoencoder step of ``sfeditor-train generator`` (toy encoder -> W+ ->
  synthesis, L1, backward, Adam; batch 16);
* fusion step: one stage-3 step of ``sfeditor-train fusion`` on toy-cars' ``all`` node (batch 4).

The ratio column is bf16 / fp32 time: below 1 where bf16 is native (AVX512-BF16, AMX, CUDA), above
1 where it is emulated (e.g. AVX2-only CPUs). :func:`sfeditor.model.device.bf16_is_fast` makes the same
call from the CPU flags; the trainers' automatic ``--bf16`` follows it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sfeditor.model.device import bf16_is_fast, pick_device
from sfeditor.model.checkpoints import load_generator
from _timing import timed  # noqa: E402


def preview(device):
    G = load_generator("toy-faces", device=device).eval().requires_grad_(False)
    s = G.styles(G.mapping(torch.randn(1, G.config.style_dim, device=device, generator=None)))

    def run():
        with torch.no_grad():
            G.synthesis(s, noise_mode="const")
    return run


def generator_step(device):
    from sfeditor.images.toy_encoder import ToyEncoder
    from trainer.generator import rendered_batch, synth_w

    G = load_generator("toy-faces", device=device).train().requires_grad_(True)
    E = ToyEncoder(G.size, G.config.style_dim).to(device)
    syn = [p for n, p in G.named_parameters() if not n.startswith("style.")]
    opt = torch.optim.Adam([*syn, *E.parameters()], lr=1e-4)
    x = rendered_batch("toy-faces", 0, 16, G.size).to(device)

    def run():
        y = synth_w(G, E(x))
        loss = (y.float() - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def fusion_step(device, bf16: bool):
    from trainer.fusion_config import regular
    from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig
    from sfeditor.regions.masks import RegionModel
    from sfeditor.regions.regions_file import load_regions
    from sfeditor.model.truncation import domain_truncation
    from trainer.fusion_stages import (NodeContext, node_regions, sample_codes, set_trainable, stage_loss,
                                       trained_blenders)

    G = load_generator("toy-cars", device=device).eval().requires_grad_(False)
    rf = load_regions("toy-cars")
    trunc = domain_truncation("toy-cars")
    ctx = NodeContext(G, RegionModel(G, rf), node_regions(rf.tree, "all"), trunc, bf16=bf16)
    torch.manual_seed(0)
    net = FusionNet(FusionNetConfig.for_layout(G.layout, "paper", hidden=256, n_common=3)).to(device)
    cfg = regular().stage(3)
    opt = torch.optim.Adam(set_trainable(net, trained_blenders(cfg)), lr=0.5)
    gen = torch.Generator().manual_seed(0)

    def run():
        loss = stage_loss(3, ctx, net, sample_codes(G, 4, trunc, gen), cfg)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    cap = torch.backends.cpu.get_cpu_capability() if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    print(f"device {dev} ({cap}), {args.threads} threads, bf16_is_fast: {bf16_is_fast(dev)}, "
          f"load {os.getloadavg()[0]:.1f}\n")
    print("| workload | fp32 s | bf16 autocast s | bf16 / fp32 |")
    print("|---|---|---|---|")
    for name, make in (("preview (1 image, no grad)", lambda bf16: preview(dev)),
                       ("generator step (batch 16)", lambda bf16: generator_step(dev)),
                       ("fusion stage-3 step (batch 4)", lambda bf16: fusion_step(dev, bf16))):
        times = {}
        for bf16 in (False, True):
            fn = make(bf16)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                times[bf16] = timed(fn, args.repeats, dev, statistics.median)
        print(f"| {name} | {times[False]:.3f} | {times[True]:.3f} | {times[True] / times[False]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
