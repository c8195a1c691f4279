"""A training-free baseline for the FusionNet hierarchy's locality (issue 5's 0.85 target).

A FusionNet picks, channel by channel, which input code a style channel comes
from (Sec. 4.3).  This bench replaces the whole hierarchy by a fixed rule:
channel c of the fused code comes from the leaf region k with the largest
correlation M[k, c] (Eq. 1, averaged over N images, the regions file's hard
masks), and measures locality exactly as ``sfeditor-train evaluate`` does
(oracle judge, random and fixed base).  A trained hierarchy should beat it; a
leaf that owns no channel cannot be edited by this rule at all.

    python experiments/locality_bound.py --domain toy-faces [--samples 64] [--m-images 64]
        [--generator FILE --regions FILE] [--partition]

``--partition`` replaces argmax M by the channel groups of the region-swap loss
(``sfeditor-train generator --swap-weight``): how local those groups are.

Prints a table: leaf | locality random | locality fixed | PSNR outside (fixed).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from sfeditor.model.checkpoints import load_generator  # noqa: E402
from sfeditor.regions.correlation import code_correlation  # noqa: E402
from sfeditor.domains import get_domain, resources_dir  # noqa: E402
from sfeditor.regions.masks import RegionModel  # noqa: E402
from sfeditor.model.style_code import StyleCode  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from trainer.fusion_eval import EditTarget, OracleJudge, evaluate_locality  # noqa: E402


def argmax_m_composer(G, model: RegionModel, n_images: int, truncation: float, seed: int = 123):
    """Channel c of the fused code comes from ``argmax_k M[k, c]`` (mean M over ``n_images``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(n_images, G.style_dim, generator=gen)
        s = G.styles(G.mapping(z, truncation))
        M = code_correlation(model, s, model.leaves).mean(0)           # [K, |S|]
    return owner_composer(G, M.argmax(0), list(model.leaves))


def owner_composer(G, owner: torch.Tensor, leaves: list[str]):
    """compose(codes) taking channel c from leaf ``owner[c]``; and the channel count per leaf."""
    def compose(codes):
        flat = torch.stack([codes[k].flat() for k in leaves])             # [K, B, |S|]
        idx = owner.to(flat.device)[None, None, :].expand(1, flat.shape[1], -1)
        return StyleCode.from_flat(G, flat.gather(0, idx)[0])
    return compose, {k: int((owner == i).sum()) for i, k in enumerate(leaves)}


def partition_composer(G, leaves: list[str], domain: str):
    """Channel c comes from the leaf whose region-swap group holds it (pose group: the first leaf)."""
    from sfeditor.toy import swap_groups
    from trainer.generator import swap_channel_groups

    names = swap_groups(domain)
    ids = swap_channel_groups(G.layout, len(names))
    owner = torch.tensor([leaves.index(names[int(g)]) if g > 0 else 0 for g in ids])
    return owner_composer(G, owner, leaves)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--m-images", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--generator", help="generator file (default: the domain's shipped one)")
    p.add_argument("--regions", help="regions file (default: the domain's shipped one)")
    p.add_argument("--partition", action="store_true",
                   help="assign channels by the region-swap loss's groups (trainer.generator."
                        "swap_channel_groups; the pose group goes with the first leaf) instead of argmax M")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dom = get_domain(args.domain)
    G = load_generator(args.generator or args.domain, device="cpu").eval()
    model = RegionModel(G, args.regions or resources_dir() / dom.regions_file)
    t0 = time.perf_counter()
    if args.partition:
        compose, counts = partition_composer(G, list(model.leaves), args.domain)
    else:
        compose, counts = argmax_m_composer(G, model, args.m_images, dom.truncation)
    leaves = list(model.leaves)
    targets = [EditTarget(k, k, (k,)) for k in leaves]
    judge = OracleJudge(load_oracle(args.domain))
    with tempfile.TemporaryDirectory() as tmp:
        res = evaluate_locality(G, compose, leaves, targets, judge, tmp, samples=args.samples, batch=16,
                                truncation=dom.truncation)
    rows = {mode: {r["label"]: r for r in res[mode]} for mode in ("random", "fixed")}
    rule = ("the region-swap channel groups" if args.partition
            else f"the argmax-M channel assignment (M over {args.m_images} images)")
    print(f"# {args.domain}: locality of {rule} (no FusionNet), {args.samples} samples, oracle judge, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'leaf':18s} {'channels':>8s} {'random':>7s} {'fixed':>7s} {'PSNR out':>9s}")
    for k in leaves:
        r, f = rows["random"][k], rows["fixed"][k]
        name = k + (" (+pose)" if args.partition and k == leaves[0] else "")
        print(f"{name:18s} {counts[k]:8d} {r['locality']:7.3f} {f['locality']:7.3f} {f['psnr_outside']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
