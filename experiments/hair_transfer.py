"""Hair transfer (paper Sec. 6.2) on held-out toy-faces renders, judged by the region oracle.

For N (target, reference) pairs of held-out renderer images: invert both (toy
encoder + projector), put the reference's code into the hair nodes and the
target's everywhere else (global codes included), fuse, render.  Reports

* inversion PSNR of the targets (the ceiling for everything below);
* PSNR outside the hair region (the target's renderer labels) of the result vs the
  target image, and of the plain target reconstruction vs the target (what
  transfer costs on the rest of the picture);
* hair colour distance (mean RGB of the pixels the oracle calls hair, 0-255):
  result vs reference, against the baseline target vs reference.

    python experiments/hair_transfer.py [--pairs 8] [--steps N (default: the domain's preset)] [--hierarchy runs/fusion-toy-faces/hierarchy.pt]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sfeditor.images.editing import hair_transfer  # noqa: E402
from sfeditor.images.imageio import to_uint8  # noqa: E402
from sfeditor.images.inversion import InversionSettings, Projector  # noqa: E402
from sfeditor.editor.session import load_bundle  # noqa: E402
from sfeditor.toy import region_names, render  # noqa: E402
from sfeditor.toy.oracle import load_oracle  # noqa: E402
from sfeditor.images.toy_encoder import default_encoder_path, load_toy_encoder  # noqa: E402

HELDOUT = 10_000_000 + 700_000


def psnr_mask(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, images 0-255) over the pixels where ``mask`` is true."""
    d = (a.astype(np.float64) - b.astype(np.float64))[mask]
    mse = float((d ** 2).mean()) if d.size else 0.0
    return 100.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def hair_colour(img: np.ndarray, labels: np.ndarray, hair: int) -> np.ndarray | None:
    m = labels == hair
    return img[m].astype(np.float64).mean(0) if m.sum() >= 8 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, help="projector steps (default: InversionSettings.for_generator)")
    p.add_argument("--hierarchy", help="hierarchy file (default: the shipped one)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    b = load_bundle("toy-faces", hierarchy=args.hierarchy, device="cpu")
    if b.hierarchy is None:
        print("no hierarchy: train one (sfeditor-train hierarchy --domain toy-faces) or pass --hierarchy")
        return 2
    G, h = b.G, b.hierarchy
    enc_path = default_encoder_path("toy-faces")
    E = load_toy_encoder(enc_path, G=G) if enc_path else None
    st = InversionSettings.for_generator(G, "toy-faces", **({"steps": args.steps} if args.steps else {}))
    proj = Projector(G, st, encoder=E, cache=False)
    oracle = load_oracle("toy-faces")
    hair = region_names("toy-faces").index("hair")
    imgs, labels = render("toy-faces", np.arange(HELDOUT, HELDOUT + 2 * args.pairs), G.size)
    rows = []
    t0 = time.time()
    for i in range(args.pairs):
        tgt, ref = imgs[2 * i], imgs[2 * i + 1]
        outside = labels[2 * i] != hair
        rt, rr = proj.invert(tgt), proj.invert(ref)
        with torch.no_grad():
            recon = to_uint8(rt.render(G))[0]
            _, fused = hair_transfer(G, h, rt.w_plus.to(G.device), rr.w_plus.to(G.device))
            out = to_uint8(G.synthesis(fused, noise_mode="const"))[0]
        lab = oracle.predict(np.stack([out, ref, tgt]))[0]
        c_out, c_ref, c_tgt = (hair_colour(x, lab[k], hair) for k, x in enumerate((out, ref, tgt)))
        rows.append({
            "inv_psnr": rt.psnr,
            "outside_result": psnr_mask(out, tgt, outside),
            "outside_recon": psnr_mask(recon, tgt, outside),
            "dist_result": None if c_out is None or c_ref is None else float(np.linalg.norm(c_out - c_ref)),
            "dist_baseline": None if c_tgt is None or c_ref is None else float(np.linalg.norm(c_tgt - c_ref)),
        })
    sec = time.time() - t0

    def mean(k):
        v = [r[k] for r in rows if r[k] is not None]
        return (float(np.mean(v)), len(v)) if v else (float("nan"), 0)

    print(f"# toy-faces hair transfer, {args.pairs} held-out pairs, projector {st.steps} steps "
          f"({'encoder start' if E else 'mean-w start'}), {sec / args.pairs:.1f} s per pair on "
          f"{torch.get_num_threads()} threads")
    print(f"{'measure':58s} {'mean':>8s} {'n':>3s}")
    for k, label in (("inv_psnr", "target inversion PSNR (dB)"),
                     ("outside_recon", "PSNR outside hair: target reconstruction vs target (dB)"),
                     ("outside_result", "PSNR outside hair: hair transfer vs target (dB)"),
                     ("dist_baseline", "hair colour distance target -> reference (RGB)"),
                     ("dist_result", "hair colour distance transfer -> reference (RGB)")):
        m, n = mean(k)
        print(f"{label:58s} {m:8.2f} {n:3d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
