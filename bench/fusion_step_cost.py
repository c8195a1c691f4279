"""Cost of one FusionNet training step per stage (Sec. 4.4) on a toy domain.

    python bench/fusion_step_cost.py --domain toy-faces --threads 1 2
    python bench/fusion_step_cost.py --random-toy --threads 1      # toy architecture, random weights

One step = sample z1, z2, z_align, z_rnd -> codes, the no-gradient targets (M of
s1, s2 for Eq. 8; stage 1 also the masks of I_align), the stage's loss, backward
and the Adam step, exactly as :func:`trainer.fusion.train_node` runs it.
Reports wall time and process CPU time per step (CPU time / threads is a
load-robust estimate of the 1-thread wall time on an idle machine).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trainer.fusion_config import regular  # noqa: E402
from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig  # noqa: E402
from sfeditor.regions.masks import RegionModel  # noqa: E402
from trainer.fusion_stages import (NodeContext, node_regions, sample_codes, set_trainable, stage_loss,  # noqa: E402
                                   trained_blenders)

TOY = dict(size=64, style_dim=256, n_mlp=4, channels={4: 256, 8: 256, 16: 128, 32: 64, 64: 32})


def random_toy(domain: str):
    """A random generator with the toy architecture and a regions file of the right shapes."""
    from sfeditor import Generator
    from sfeditor.regions.clustering import squared_distances
    from sfeditor.regions.regions_file import RegionsFile
    from sfeditor.model.identity import generator_identity
    from sfeditor.regions.tree import leaves, paper_tree

    torch.manual_seed(0)
    G = Generator(**TOY).eval().requires_grad_(False)
    G.update_w_avg(512)
    tree = paper_tree(domain)
    names = leaves(tree)
    with torch.no_grad():
        dp = G.deep_pixels(G.random_styles(4, seed=3), size=64)
    x = dp.permute(0, 2, 3, 1).reshape(-1, dp.shape[1])
    cent = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:2 * len(names)]]
    d = squared_distances(x[:512, :, None, None], cent)[:, :, 0, 0].topk(2, dim=1, largest=False).values
    tau = float((d[:, 1] - d[:, 0]).median() / math.log(99))
    rf = RegionsFile(domain=domain, generator=generator_identity(G), centroids=cent.numpy(),
                     clusters={i: names[i % len(names)] for i in range(len(cent))}, tree=tree, temperature=tau)
    return G, rf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--node", default="all")
    p.add_argument("--random-toy", action="store_true", help="random weights, toy architecture (no files needed)")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", choices=["off", "on", "both"], default="both")
    args = p.parse_args(argv)

    if args.random_toy:
        G, rf = random_toy(args.domain)
    else:
        from sfeditor.model.checkpoints import load_generator
        from sfeditor.regions.regions_file import load_regions

        G = load_generator(args.domain, device="cpu").eval().requires_grad_(False)
        rf = load_regions(args.domain)
    from sfeditor.model.truncation import domain_truncation

    trunc = domain_truncation(args.domain)
    model = RegionModel(G, rf)
    nr = node_regions(rf.tree, args.node)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.bf16]
    print(f"| threads | autocast | stage | wall s/step | CPU s/step | (batch {args.batch}, {args.domain}/{args.node}"
          f"{', random weights' if args.random_toy else ''}, load {os.getloadavg()[0]:.1f}) |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for bf16 in modes:
            ctx = NodeContext(G, model, nr, trunc, bf16=bf16)
            for stage in (1, 2, 3):
                torch.manual_seed(0)
                net = FusionNet(FusionNetConfig.for_layout(G.layout, "paper"))
                cfg = regular().stage(stage)
                opt = torch.optim.Adam(set_trainable(net, trained_blenders(cfg)), lr=0.5)
                gen = torch.Generator().manual_seed(0)
                walls, cpus = [], []
                for i in range(args.warmup + args.steps):
                    t0, c0 = time.perf_counter(), time.process_time()
                    loss = stage_loss(stage, ctx, net, sample_codes(G, args.batch, trunc, gen), cfg)
                    opt.zero_grad(set_to_none=True)
                    loss.total.backward()
                    opt.step()
                    if i >= args.warmup:
                        walls.append(time.perf_counter() - t0)
                        cpus.append(time.process_time() - c0)
                print(f"| {threads} | {'bf16' if bf16 else 'fp32'} | {stage} | {statistics.median(walls):.3f} | "
                      f"{statistics.median(cpus):.3f} | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
