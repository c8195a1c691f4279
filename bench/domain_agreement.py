"""How well does the region oracle's photo/reconstruction agreement separate the toy domains' own
images from other pictures?  (sfeditor.images.domain_check, issue 39)

For each toy domain: 8 held-out renders (seeds 9000-9007) and four off-domain pictures (a landscape,
uniform noise, a grey card, a render of the other toy domain) are inverted with the shipped toy encoder
(a fast stand-in for the projector) and judged; prints the agreement (fraction of pixels the oracle
labels alike on the picture and its reconstruction) and the verdict.

    PYTHONPATH=$PWD python bench/domain_agreement.py
"""
from __future__ import annotations

import numpy as np
import torch

from sfeditor.images.domain_check import MIN_AGREEMENT, judge_inversion
from sfeditor.images.imageio import to_uint8
from sfeditor.editor.session import load_bundle
from sfeditor.toy import render
from sfeditor.images.toy_encoder import default_encoder_path, load_toy_encoder


def landscape() -> np.ndarray:
    y = np.linspace(0, 1, 64)[:, None]
    img = np.array([90, 150, 230]) * (1 - y[..., None]) + np.array([200, 220, 255]) * y[..., None]
    img = np.broadcast_to(img, (64, 64, 3)).copy()
    for c in range(64):
        img[int(36 + 8 * np.sin(c / 9)):, c] = [50 + c, 110, 40]
    return img.astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    m = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255 ** 2 / max(m, 1e-12)))


def main() -> None:
    torch.set_num_threads(1)
    print(f"agreement threshold {MIN_AGREEMENT}")
    for name in ("toy-faces", "toy-cars"):
        b = load_bundle(name, device="cpu")
        enc = load_toy_encoder(default_encoder_path(name), map_location="cpu", G=b.G)

        def invert(img):
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
            with torch.no_grad():
                return to_uint8(b.G.synthesis(b.G.styles(enc(x))))[0]

        def judge(img):
            rec = invert(img)
            return judge_inversion(name, img, rec, psnr(img, rec), min_psnr=0)

        other = "toy-cars" if name == "toy-faces" else "toy-faces"
        own = [judge(img) for img in render(name, np.arange(9000, 9008), 64)[0]]
        print(f"{name}: held-out renders agreement {min(v.agreement for v in own):.2f}-"
              f"{max(v.agreement for v in own):.2f}, {sum(v.ok for v in own)}/{len(own)} judged of the domain")
        rng = np.random.default_rng(0)
        for what, img in (("landscape", landscape()), ("noise", rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)),
                          ("grey card", np.full((64, 64, 3), 128, np.uint8)), (other, render(other, [3], 64)[0][0])):
            v = judge(img)
            print(f"  {what:10s} agreement {v.agreement:.2f}  {'of the domain' if v.ok else 'flagged'}"
                  f"{'' if v.ok else ': ' + '; '.join(v.reasons)}")


if __name__ == "__main__":
    main()
