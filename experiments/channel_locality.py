"""Are a toy generator's style channels *spatially* local to the regions, as Eq. 8 needs?

The fusion loss (paper Eq. 7) weighs channel c for region R by ``w_R(c) = 2 max(M[R, c], 0.5) - 1``
(Eq. 8), M the share of c's activation energy inside R (Eq. 1).  A region none of whose channels
holds more than half its energy inside it gets ``w_R = 0`` everywhere: the FusionNets are never asked
to take anything from its code.  For each RUN (a folder with generator.pt and encoder.pt, or a run's
checkpoint.pt) and held-out renders encoded by the run's encoder, judged by the region oracle on the
reconstructions, this prints per region:

- ``w>0``: channels per image with ``M[R, c] > 0.5`` (a nonzero fusion weight);
- ``group M``: mean M of the region's swap group (``trainer.generator.swap_channel_groups``) on
  layers at least ``--min-res`` wide (what the dropped ``--channel-local`` loss trained; :func:`group_m`);
- ``swap loc``: locality of swapping that group from image B into A (share of the mean absolute
  change inside A's region, oracle labels of A's reconstruction: the formula of
  ``sfeditor-train evaluate``), and the reconstructions' PSNR.

    python experiments/channel_locality.py RUN [RUN ...] --domain toy-faces [--images 64]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.ae_regions import load_run  # noqa: E402
from sfeditor.regions.correlation import correlation, layer_correlation, resize_regions  # noqa: E402
from sfeditor.images.imageio import from_uint8  # noqa: E402
from sfeditor.model.style_code import StyleCode  # noqa: E402
from sfeditor.toy import region_names, render, swap_groups  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from trainer.generator import HELDOUT_SEED_OFFSET, swap_channel_groups
from sfeditor.images.metrics import psnr


def group_m(features: dict, labels: torch.Tensor, groups: torch.Tensor, layout, n_regions: int,
            min_res: int) -> torch.Tensor:
    """Mean over images and channels of M[k, c] (Eq. 1) for region k's swap group (group k + 1), on the
    style layers at least ``min_res`` px wide: ``[n_regions]``."""
    U = torch.nn.functional.one_hot(labels.long(), n_regions).permute(0, 3, 1, 2).float()
    maps = list(features["conv"]) + list(features["rgb"])
    res = list(layout.conv_res) + list(layout.rgb_res)
    total, count = torch.zeros(n_regions), torch.zeros(n_regions)
    for A, r, g in zip(maps, res, torch.split(groups, list(layout.dims))):
        keep = g >= 1
        if r < min_res or not bool(keep.any()):
            continue
        M = layer_correlation(A.float(), resize_regions(U, A.shape[-1]))                   # [B, R, C]
        k = (g[keep] - 1).long()
        own = M[:, :, keep].gather(1, k[None, None, :].expand(M.shape[0], 1, -1))[:, 0]     # [B, C_kept]
        total.index_add_(0, k, own.mean(0))
        count.index_add_(0, k, torch.ones_like(k, dtype=count.dtype))
    if not bool(count.any()):
        raise ValueError(f"no style layer of at least {min_res} px holds a region group's channel")
    return total / count.clamp_min(1)


@torch.no_grad()
def run_stats(G, E, domain: str, images: int, min_res: int, oracle) -> dict:
    names = region_names(domain)
    groups = swap_channel_groups(G.layout, len(swap_groups(domain)))
    a, _ = render(domain, HELDOUT_SEED_OFFSET + 700_000 + np.arange(images))
    b, _ = render(domain, HELDOUT_SEED_OFFSET + 800_000 + np.arange(images))
    xa, xb = from_uint8(a), from_uint8(b)
    sa, sb = G.styles(E(xa)).flat(), G.styles(E(xb)).flat()
    rec, feats = G.synthesis(StyleCode.from_flat(G, sa), "const", return_features=True)
    lab, _ = oracle.predict(rec)                                              # [B, H, W] judge labels
    lab = torch.as_tensor(lab).long()
    onames = list(oracle.region_names)
    U = torch.stack([(lab == onames.index(n)) for n in names], 1).float()    # [B, R, H, W] in `names` order
    M = correlation(feats, U)                                                 # [B, R, |S|]
    w = 2 * M.clamp(min=0.5) - 1
    group_ms = group_m(feats, U.argmax(1), groups, G.layout, len(names), min_res)
    out = {"psnr": float(psnr(rec, xa).mean()), "regions": {}}
    for r, n in enumerate(names):
        take = (groups == r + 1).float()[None]
        edit = G.synthesis(StyleCode.from_flat(G, take * sb + (1 - take) * sa), "const")
        change = (edit - rec).abs().mean(1)                                   # [B, H, W]
        inside = U[:, r]
        loc = float((change * inside).sum() / change.sum().clamp_min(1e-12))
        out["regions"][n] = {"w_pos": float((w[:, r] > 0).float().sum(1).mean()), "w_sum": float(w[:, r].sum(1).mean()),
                             "group_m": float(group_ms[r]), "swap_loc": loc, "area": float(inside.mean())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--domain", default="toy-faces")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--min-res", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    oracle = load_oracle(a.domain)
    names = region_names(a.domain)
    print(f"# {a.domain}: {a.images} held-out renders through each run's encoder; oracle labels of the "
          "reconstructions; w>0 = channels per image with M > 0.5 (Eq. 8); group M on layers >= "
          f"{a.min_res} px; swap loc = locality of swapping the region's group from B into A")
    print("| run | PSNR | " + " | ".join(f"{n}: w>0 / group M / swap loc" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for path in a.runs:
        G, E, _, _ = load_run(path)
        s = run_stats(G, E, a.domain, a.images, a.min_res, oracle)
        cells = [f"{s['regions'][n]['w_pos']:.1f} / {s['regions'][n]['group_m']:.3f} / {s['regions'][n]['swap_loc']:.3f}"
                 for n in names]
        print(f"| {path} | {s['psnr']:.2f} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
