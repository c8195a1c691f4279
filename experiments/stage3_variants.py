"""Stage 3 of FusionNet training (Sec. 4.4), variant by variant, from one net trained through stages 1-2.

Every variant starts from the same ``net.pt`` (a run trained without stage 3, e.g. the
Sec. 7 ablation's ``no_stage3``), runs ``--steps`` stage-3 steps with its settings on
the same sampled codes, and is scored like the ablation (change one child's code on a
random base; oracle locality and PSNR outside) and by its blend coefficients (how many
coarse channels the global code sets; ``sfeditor.fusion.blend_stats``).  The first row is the
starting net itself.

    python experiments/stage3_variants.py --domain toy-cars --init runs/ablation-cars-v3/no_stage3/net.pt \\
        --variant paper --variant target=aligned,align_reg=0.1,local=10 --steps 500 --samples 300

Variant keys: ``target`` (inputs | aligned), ``align_reg`` (stage-3 lambda_alignReg),
``local`` (factor on lambda_local), ``seed`` (code sampling); ``paper`` = A.2 as written.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfeditor.fusion.blend_stats import sampled_blend_stats  # noqa: E402
from sfeditor.model.checkpoints import load_generator  # noqa: E402
from sfeditor.regions.masks import RegionModel  # noqa: E402
from sfeditor.regions.regions_file import load_regions  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from sfeditor.model.truncation import domain_truncation  # noqa: E402
from trainer.fusion import training_config  # noqa: E402
from trainer.fusion_eval import OracleJudge, ablation_rows, load_node_net  # noqa: E402
from trainer.fusion_stages import NodeContext, node_regions, sample_codes, set_trainable, stage_loss  # noqa: E402


def parse_variant(text: str) -> dict:
    if text == "paper":
        return {}
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or k not in ("target", "align_reg", "local", "seed"):
            raise SystemExit(f"bad variant part {part!r} (keys: target, align_reg, local, seed)")
        out[k] = v if k == "target" else (int(v) if k == "seed" else float(v))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", default="toy-cars")
    p.add_argument("--node", default="all")
    p.add_argument("--init", required=True, help="net.pt trained through stages 1-2")
    p.add_argument("--variant", action="append", default=[], help="repeatable; see the module docstring")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    G = load_generator(a.domain).eval().requires_grad_(False)
    regions = load_regions(a.domain)
    nr = node_regions(regions.tree, a.node)
    trunc = domain_truncation(a.domain)
    ctx = NodeContext(G, RegionModel(G, regions), nr, trunc, bf16=True)
    judge = OracleJudge(load_oracle(a.domain))
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    start = load_node_net(a.init)

    def score(net) -> dict:
        rows = ablation_rows(G, {"x": net}, regions.tree, a.node, judge, a.samples, 16, trunc, a.eval_seed, amp)["x"]
        st = sampled_blend_stats(net, G, 64, trunc, a.eval_seed)
        return {"rows": rows, "global": st.align_channels, "coarse": st.coarse_channels,
                "c2": st.fuse_channels_child2, "channels": st.channels}

    results = [("start (no stage 3)", score(start), 0.0)]
    for text in a.variant or ["paper"]:
        v = parse_variant(text)
        tc = training_config(a.domain, regions.tree, a.node, steps_scale=1.0)
        tc = tc.with_stage3(v.get("target"), v.get("align_reg"), v.get("local", 1.0))
        cfg = tc.stage(3)
        net = copy.deepcopy(start).train()
        params = set_trainable(net, ("align", "fuse"))
        opt = torch.optim.Adam(params, lr=a.lr)
        gen = torch.Generator().manual_seed(int(v.get("seed", 123)))
        t0 = time.time()
        for _ in range(a.steps):
            loss = stage_loss(3, ctx, net, sample_codes(G, a.batch, trunc, gen), cfg)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            opt.step()
        net.eval().requires_grad_(False)
        results.append((text, score(net), time.time() - t0))
        print(f"done {text} in {results[-1][2]:.0f} s", file=sys.stderr, flush=True)

    kids = [nr.child1, nr.child2]
    print(f"\n{a.domain}, node {a.node}: {a.steps} stage-3 steps per variant from {a.init}; "
          f"random base, {a.samples} edits per child (oracle)\n")
    print("| variant | " + " | ".join(f"{k}: locality | {k}: PSNR outside" for k in kids)
          + " | global code: coarse channels set | channels from " + " / ".join(kids) + " |")
    print("|---|" + "---|---|" * len(kids) + "---|---|")
    for name, r, _ in results:
        cells = " | ".join(f"{r['rows'][k]['locality']:.3f} | {r['rows'][k]['psnr_outside']:.1f} dB" for k in kids)
        print(f"| {name} | {cells} | {r['global']:.0f} of {r['coarse']} | "
              f"{r['channels'] - r['c2']:.0f} / {r['c2']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
