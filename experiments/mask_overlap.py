"""How far apart trained FusionNets are, channel by channel.

Every toy FusionNet ends up a fixed binary channel mask (``sfeditor.fusion.blend_stats``:
q saturated and the same for every input), so two nets of one node can be compared
by the channels they assign differently:

* LB_fuse (Sec. 4.3, Eq. 2): channels whose ``q_fuse > 0.5`` side differs, i.e. taken
  from the other child;
* LB_align (A.4): coarse channels (of s'1 and s'2 together) that one net takes from
  the global code and the other does not.

Run on the variants of the Sec. 7 ablation and on two training draws of one variant,
it tells whether the variants differ more than retraining alone moves a net.

    python experiments/mask_overlap.py NAME=RUN_OR_NET.pt [NAME=...] [--domain toy-cars]
        [--samples 16] [--seed 0]

``RUN_OR_NET.pt``: a ``net.pt`` written by ``sfeditor-train fusion`` or its run folder (a No Global
run's LB_align is untrained and unused, so its column is left empty).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from sfeditor.model.checkpoints import load_generator  # noqa: E402
from sfeditor.model.truncation import domain_truncation  # noqa: E402
from trainer.fusion_eval import load_node_net  # noqa: E402


@torch.no_grad()
def channel_sides(net, s1, s2, s_align) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(q_fuse > 0.5 per channel, q_align > 0.5 per coarse channel of s'1 and s'2), majority over the batch."""
    out = net(s1, s2, s_align, align=True, fuse=True)
    fuse = out.q_fuse.flat().float().mean(0) > 0.5
    align = None
    if out.q_align is not None:
        align = torch.cat([out.q_align[0].flat(), out.q_align[1].flat()], 1).float().mean(0) > 0.5
    return fuse, align


def no_global(run: Path) -> bool:
    """Whether ``run`` (a ``sfeditor-train fusion`` folder) trained the No Global ablation."""
    try:
        return json.loads((run / "options.json").read_text())["recipe"]["ablation"] == "no_global"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nets", nargs="+", metavar="NAME=PATH")
    ap.add_argument("--domain", default="toy-cars")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    G = load_generator(args.domain, device="cpu").eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(args.seed)
    n = args.samples
    s = G.styles(G.mapping(torch.randn(3 * n, G.style_dim, generator=gen), domain_truncation(args.domain)))
    sides = {}
    for item in args.nets:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"{item!r}: expected NAME=PATH")
        p = Path(path)
        net = load_node_net(p / "net.pt" if p.is_dir() else p).float()
        fuse, align = channel_sides(net, s[:n], s[n:2 * n], s[2 * n:])
        if no_global(p if p.is_dir() else p.parent):
            align = None                      # a No Global net runs without LB_align (left untrained)
        sides[name] = (fuse, align)
    names = list(sides)
    total = len(sides[names[0]][0])
    coarse = next((a for _, a in sides.values() if a is not None), None)
    print(f"{args.domain}: {total} channels blended by LB_fuse"
          + (f", {len(coarse)} coarse channels (s'1 and s'2) by LB_align" if coarse is not None else ""))
    print("\n| net | LB_fuse: channels from child 2 | LB_align: coarse channels from the global code |")
    print("|---|---|---|")
    for k, (f, a) in sides.items():
        print(f"| {k} | {int(f.sum())} | {'—' if a is None else int(a.sum())} |")
    print("\nChannels assigned differently (LB_fuse / LB_align):\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for a in names:
        cells = []
        for b in names:
            fa, aa = sides[a]
            fb, ab = sides[b]
            df = int((fa != fb).sum())
            da = "—" if aa is None or ab is None else str(int((aa != ab).sum()))
            cells.append(f"{df} / {da}")
        print(f"| {a} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
