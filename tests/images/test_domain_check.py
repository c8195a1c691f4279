"""Off-domain photos (issue 39): the region oracle and the reconstruction PSNR judge an inversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sfeditor.images.domain_check import MIN_PSNR, judge_inversion, reference_areas
from sfeditor.images.imageio import to_uint8
from sfeditor.editor.session import load_bundle
from sfeditor.toy import region_names, render
from sfeditor.images.toy_encoder import default_encoder_path, load_toy_encoder

torch.set_num_threads(1)


def psnr(a, b) -> float:
    m = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255 ** 2 / max(m, 1e-12)))


@pytest.fixture(scope="module", params=["toy-faces", "toy-cars"])
def domain(request):
    b = load_bundle(request.param, device="cpu")
    enc = load_toy_encoder(default_encoder_path(request.param), map_location="cpu", G=b.G)

    def invert(img):          # the shipped encoder: a fast stand-in for the projector
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            return to_uint8(b.G.synthesis(b.G.styles(enc(x))))[0]
    return request.param, invert


def landscape() -> np.ndarray:
    y = np.linspace(0, 1, 64)[:, None]
    img = (np.array([90, 150, 230]) * (1 - y[..., None]) + np.array([200, 220, 255]) * y[..., None])
    img = np.broadcast_to(img, (64, 64, 3)).copy()
    for c in range(64):
        img[int(36 + 8 * np.sin(c / 9)):, c] = [50 + c, 110, 40]
    return img.astype(np.uint8)


def test_reference_areas_come_from_the_renderer():
    ref = reference_areas("toy-faces", n=64)
    _, labels = render("toy-faces", np.arange(64), 64)
    skin = (labels == region_names("toy-faces").index("skin")).mean(axis=(1, 2))
    assert ref["skin"] == (pytest.approx(np.percentile(skin, 1)), pytest.approx(np.percentile(skin, 99)))
    assert all(lo > 0 for lo, _ in ref.values())          # every toy-faces region is in every render


def test_renders_of_the_domain_pass_the_oracle(domain):
    name, invert = domain
    imgs, _ = render(name, np.arange(9000, 9006), 64)
    for img in imgs:
        v = judge_inversion(name, img, invert(img), psnr(img, invert(img)), min_psnr=0)
        assert v.ok and v.oracle_used and v.agreement > 0.9, v.reasons
        assert v.message() == ""


def test_off_domain_pictures_are_flagged(domain):
    name, invert = domain
    other = "toy-cars" if name == "toy-faces" else "toy-faces"
    rng = np.random.default_rng(0)
    for img in (landscape(), rng.integers(0, 256, (64, 64, 3)).astype(np.uint8), render(other, [3], 64)[0][0]):
        rec = invert(img)
        v = judge_inversion(name, img, rec, psnr(img, rec), min_psnr=0)     # the oracle alone catches them
        assert not v.ok and v.reasons
        assert v.message().startswith(f"This photo does not look like a {name} image")


def test_low_reconstruction_psnr_flags_any_model():
    img = landscape()
    v = judge_inversion(None, img, img, MIN_PSNR - 5)            # no oracle for an unknown model
    assert not v.ok and not v.oracle_used and "dB PSNR" in v.message()
    assert judge_inversion("my-model", img, img, MIN_PSNR + 5).ok
    assert not judge_inversion("my-model", img, img, float("nan")).ok


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="square uint8"):
        judge_inversion("toy-faces", np.zeros((8, 9, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), 30.0)
