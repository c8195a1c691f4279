"""How well a factorised toy generator (v5) keeps the promise in w: swap one block, change one region.

For held-out render pairs (A, B) and each group (the pose, then every region), A's code gets that
group's block of w from B's (``trainer.generator_blocks.swap_blocks``) and the synthesis is compared
with the renderer's own swap ``render_swap(A, B, k)``.  Codes come from the run's parameter code
(``P`` in its checkpoint, generator v5 try 3) or, without one, from its encoder.  Per block, under
issue 38's union reading (the region of the base or of the edit, oracle labels, a 1-px ring left out;
``sfeditor.editor.locality.read_edit``):

- share: the share of the change inside the region, for the generator and for the renderer's swap;
- change: mean |change| per pixel inside the region (images in [-1, 1]), generator / renderer;
- fidelity: PSNR of the swapped synthesis against the renderer's swap, inside and outside the union;
- with ``--ring R``: the generator's share again with an R-px band around the union left out (how
  much of the leak is blur at the border rather than change far away).

``--s-from RES`` swaps S channels instead of w blocks: group k's channels (the recipe's channel
groups) in the layers of maps of at least RES px, the rest of A's S code kept: what a FusionNet that
found exactly those channels could do with this generator (the hierarchy is given no grouping).

    python experiments/block_swaps.py runs/gen-toy-faces-v5/checkpoint.pt --domain toy-faces \\
        [--pairs 64] [--sheet out.png] [--ring 2] [--s-from 32]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfeditor.editor.locality import change_map, read_edit, union_ring  # noqa: E402
from sfeditor.images.imageio import from_uint8, make_grid, save_png, to_uint8  # noqa: E402
from sfeditor.model.generator import Generator, GeneratorConfig  # noqa: E402
from sfeditor.images.toy_encoder import ToyEncoder  # noqa: E402
from sfeditor.toy import region_names, render, render_swap, swap_groups  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from sfeditor.model.style_code import StyleCode  # noqa: E402
from trainer.generator_blocks import block_masks, layer_groups, swap_blocks  # noqa: E402
from trainer.generator_data import HELDOUT_SEED_OFFSET  # noqa: E402
from trainer.generator_losses import synth_w  # noqa: E402
from trainer.generator_param_code import ParamCode  # noqa: E402


def load(checkpoint: str, domain: str):
    st = torch.load(checkpoint, map_location="cpu", weights_only=True)
    G = Generator(GeneratorConfig.from_dict(st["config"]))
    G.load_state_dict({k: v for k, v in st["G"].items() if not k.startswith("prior.")}, strict=False)
    E = ToyEncoder(G.size, G.style_dim)
    E.load_state_dict(st["E"])
    import json

    opts = json.load(open(os.path.join(os.path.dirname(checkpoint), "options.json")))["recipe"]
    groups = tuple(swap_groups(domain))
    blocks = block_masks(groups, G.style_dim, opts["w_global_dim"])
    P = None
    if "P" in st:
        P = ParamCode(domain, blocks, groups)
        P.load_state_dict(st["P"])
        P.eval()
    return G.eval(), E.eval(), P, blocks, st.get("phase"), st.get("step"), opts


def run_arguments(doc: str, pairs: int | None, group: bool = True) -> argparse.ArgumentParser:
    """The arguments every v5 diagnosis script takes: a run's checkpoint, its domain, the pairs read."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a run's checkpoint.pt (options.json beside it)")
    p.add_argument("--domain", default="toy-faces")
    if group:
        p.add_argument("--group", default="eyes", help="the swapped group")
    if pairs is not None:
        p.add_argument("--pairs", type=int, default=pairs)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's)")
    return p


def load_param_run(args):
    """``load`` for the scripts that need a run with a parameter code (generator v5 try 3 on); sets the
    thread count first."""
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load(args.checkpoint, args.domain)
    if run[2] is None:
        raise SystemExit(f"{args.checkpoint}: needs a run with a parameter code (generator v5 try 3 on)")
    return run


def s_swap(G, wa: torch.Tensor, wb: torch.Tensor, opts: dict, domain: str, g: str, from_res: int) -> torch.Tensor:
    """Synthesis of A's S code with group ``g``'s channels in the layers of maps >= ``from_res`` px from B."""
    groups = tuple(swap_groups(domain))
    ids = layer_groups(G, groups, opts["group_shares"])
    lay = G.layout
    take = torch.cat([(i == groups.index(g)) & (r >= from_res)
                      for i, r in zip(ids, lay.conv_res + lay.rgb_res)]).float()
    sa, sb = G.styles(wa).flat(), G.styles(wb).flat()
    return G.synthesis(StyleCode.from_flat(G, take * sb + (1 - take) * sa), noise_mode="const")


def dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(mask[:, None].float(), 2 * r + 1, 1, r)[:, 0] > 0


def psnr_masked(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.double()[:, None]
    mse = ((x.double().clamp(-1, 1) - y.double().clamp(-1, 1)).pow(2) * m).sum() / (m.sum() * 3).clamp_min(1)
    return float(10 * torch.log10(4.0 / mse.clamp_min(1e-30)))


@torch.no_grad()
def main(argv=None) -> int:
    p = run_arguments(__doc__, pairs=64, group=False)
    p.add_argument("--sheet", help="PNG: rows A, B, A's reconstruction, then A with each block from B (8 pairs)")
    p.add_argument("--ring", type=int, default=0, help="also the share with an R-px band around the union left out")
    p.add_argument("--uint8", action="store_true",
                   help="read the images as the editor shows them (rounded to 8 bits) rather than as floats")
    p.add_argument("--s-from", type=int, default=0,
                   help="swap group k's S channels in the layers of maps >= this many px instead of w blocks")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    G, E, P, blocks, phase, step, opts = load(args.checkpoint, args.domain)
    oracle = load_oracle(args.domain)
    groups, regions = swap_groups(args.domain), region_names(args.domain)
    n = args.pairs
    a = HELDOUT_SEED_OFFSET + 500_000 + np.arange(n)
    b = HELDOUT_SEED_OFFSET + 600_000 + np.arange(n)
    xa, _, pa = render(args.domain, a, G.size, return_params=True)
    xb, _, pb = render(args.domain, b, G.size, return_params=True)
    xa, xb = from_uint8(xa), from_uint8(xb)
    wa, wb = (P(pa), P(pb)) if P is not None else (E(xa), E(xb))
    shown = (lambda x: from_uint8(to_uint8(x))) if args.uint8 else (lambda x: x)
    base = shown(synth_w(G, wa))
    base_lab = oracle(base).argmax(1)
    truth_a_lab = oracle(xa).argmax(1)
    print(f"# {args.checkpoint} ({phase} step {step}), codes from the {'parameter code' if P is not None else 'encoder'}; "
          f"{n} held-out pairs; reconstruction of A {psnr_masked(base, xa, torch.ones_like(base_lab)):.2f} dB"
          + (f"; S channels of maps >= {args.s_from} px swapped" if args.s_from else "; w blocks swapped"))
    extra = f" share, {args.ring}-px band out |" if args.ring else ""
    print(f"| block | share (gen / renderer) | change inside (gen / renderer) | fidelity in / out (dB) |{extra}")
    print("|---|---|---|---|" + ("---|" if args.ring else ""))
    sheet = [to_uint8(xa[:8]), to_uint8(xb[:8]), to_uint8(base[:8])]
    for gi, g in enumerate(groups):
        if args.s_from and g != "global":
            out = s_swap(G, wa, wb, opts, args.domain, g, args.s_from)
        else:
            out = synth_w(G, swap_blocks(wa, wb, blocks, [gi] * n))
        out = shown(out)
        truth = from_uint8(render_swap(args.domain, a, b, [g] * n, G.size)[0])
        sheet.append(to_uint8(out[:8]))
        if g == "global":
            print(f"| global | – | – | {psnr_masked(out, truth, torch.ones_like(base_lab)):.2f} (whole image) |")
            continue
        k = regions.index(g)
        edit_k = oracle(out).argmax(1) == k
        d = change_map(base, out)
        gen = read_edit(d, base_lab == k, edit_k)
        ideal = read_edit(change_map(xa, truth), truth_a_lab == k, oracle(truth).argmax(1) == k)
        inner, ring = union_ring(truth_a_lab == k, oracle(truth).argmax(1) == k)
        fid_in = psnr_masked(out, truth, inner)
        fid_out = psnr_masked(out, truth, ~(inner | ring))

        def share(r):
            return float(r.inside.sum() / r.total.sum().clamp_min(1e-12))

        def change(r):
            return float(r.inside.sum() / r.area.sum().clamp_min(1))

        wide = ""
        if args.ring:
            inner_g, _ = union_ring(base_lab == k, edit_k)
            band = dilate((base_lab == k) | edit_k, args.ring) & ~inner_g
            d = d.double()
            wide = f" {float((d * inner_g).sum() / (d * ~band).sum().clamp_min(1e-12)):.2f} |"
        print(f"| {g} | {share(gen):.2f} / {share(ideal):.2f} | {change(gen):.3f} / {change(ideal):.3f} | "
              f"{fid_in:.1f} / {fid_out:.1f} |{wide}")
    if args.sheet:
        save_png(args.sheet, make_grid(np.concatenate(sheet), cols=8, scale=2))
        print(f"wrote {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
