"""Swap fidelity (``sfeditor.fusion.swap_fidelity``) on a tiny generator and a hierarchy over toy-faces regions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from editor_core_helpers import tiny_generator, tiny_hierarchy
from sfeditor.images.editing import fuse, transfer_region
from sfeditor.images.imageio import from_uint8
from sfeditor.images.inversion import InversionSettings, Projector
from sfeditor.jobs import Cancelled, CancelToken
from sfeditor.regions.tree import node
from sfeditor.fusion.swap_fidelity import HELDOUT_SEED_BASE, masked_psnr, summarize, swap_fidelity
from sfeditor.toy import region_names, render, render_swap

torch.set_num_threads(1)

TREE = node("all", node("head", "hair", "skin"), node("rest", "bg", "clothes"))
DOMAIN = "toy-faces"


@pytest.fixture(scope="module")
def model():
    G = tiny_generator(3)
    G.update_w_avg(128, seed=0)
    return G, tiny_hierarchy(G, TREE, seed=1)


def projector(G) -> Projector:
    return Projector(G, InversionSettings(steps=3, lr=0.1, msssim_weight=0.0, w_phase=0.0), cache=False)


def _psnr(a, b, mask) -> float:
    mse = float(((a.double().clamp(-1, 1) - b.double().clamp(-1, 1)) ** 2)[:, mask].mean())   # images in [-1, 1]
    return 10 * math.log10(4.0 / mse)


def test_rows_are_the_composed_swap_scored_against_render_swap(model):
    G, h = model
    ticks = []
    rows = swap_fidelity(G, h, DOMAIN, ["hair", "skin"], projector(G), pairs=2, seed=5,
                         progress=lambda d, t, m: ticks.append((d, t, m)))
    assert [(r.leaf, r.seed_a, r.seed_b) for r in rows][:2] == [("hair", rows[0].seed_a, rows[0].seed_b),
                                                               ("skin", rows[0].seed_a, rows[0].seed_b)]
    assert len(rows) == 4 and all(r.seed_a >= HELDOUT_SEED_BASE and r.seed_a != r.seed_b for r in rows)
    assert ticks[0] == (0, 8, "invert") and ticks[-1] == (8, 8, "swap") and len(ticks) == 9
    assert all(math.isnan(r.iou) for r in rows)                  # no labeller given
    # by hand, for the first pair's hair swap: A's codes everywhere but the hair leaf, which takes B's
    r = rows[0]
    p = projector(G)
    (xa, xb), (la, _) = render(DOMAIN, [r.seed_a, r.seed_b], size=G.size)
    w_a, w_b = p.invert(xa).w_plus, p.invert(xb).w_plus
    with torch.no_grad():
        out = G.synthesis(fuse(G, h, transfer_region(h, "hair", w_b, w_a)), noise_mode="const")[0]
        wrong = G.synthesis(fuse(G, h, transfer_region(h, "hair", w_a, w_b)), noise_mode="const")[0]
    tgt_img, tgt_lab = render_swap(DOMAIN, [r.seed_a], [r.seed_b], ["hair"], size=G.size)
    tgt = from_uint8(tgt_img)[0]
    k = region_names(DOMAIN).index("hair")
    u = torch.from_numpy((la == k) | (tgt_lab[0] == k))
    pad = torch.nn.functional.pad(u[None, None].float(), (1, 1, 1, 1), value=1.0)       # frame = inside
    inner = (torch.nn.functional.unfold(pad, 3).min(1).values.reshape(u.shape) > 0)
    grown = torch.nn.functional.max_pool2d(u[None, None].float(), 3, 1, 1)[0, 0] > 0
    outer = ~grown
    assert r.union_pixels == int(inner.sum()) > 0
    assert r.psnr_inside == pytest.approx(_psnr(out, tgt, inner), abs=1e-4)
    assert r.psnr_outside == pytest.approx(_psnr(out, tgt, outer), abs=1e-4)
    assert r.psnr_outside != pytest.approx(_psnr(wrong, tgt, outer), abs=1e-3)      # the direction matters
    with torch.no_grad():
        rec_a = G.synthesis(G.styles(w_a), noise_mode="const")[0]
    assert r.no_swap_inside == pytest.approx(_psnr(rec_a, tgt, inner), abs=1e-4)
    assert r.recon_outside == pytest.approx(_psnr(rec_a, from_uint8(xa)[0], outer), abs=1e-4)
    # the summary: per leaf, the mean over pairs and its standard error
    summary = summarize(rows)
    hair = [x.psnr_inside for x in rows if x.leaf == "hair"]
    assert summary["hair"]["pairs"] == 2 and summary["hair"]["psnr_inside"] == pytest.approx(np.mean(hair))
    assert summary["hair"]["psnr_inside_se"] == pytest.approx(np.std(hair, ddof=1) / math.sqrt(2))


def test_region_iou_follows_the_labeller(model):
    G, h = model
    k = region_names(DOMAIN).index("hair")
    truth = {}

    def perfect(images):      # labels the result as the target's renderer labels: IoU 1
        return truth["labels"]

    rows = swap_fidelity(G, h, DOMAIN, ["hair"], projector(G), pairs=1, seed=9,
                         labeller=lambda x: torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long))
    assert rows[0].iou == 0.0                                   # nothing called hair, the target has hair
    seeds = (rows[0].seed_a, rows[0].seed_b)
    truth["labels"] = torch.from_numpy(render_swap(DOMAIN, [seeds[0]], [seeds[1]], ["hair"], size=G.size)[1]).long()
    assert int((truth["labels"] == k).sum()) > 0
    assert swap_fidelity(G, h, DOMAIN, ["hair"], projector(G), pairs=1, seed=9, labeller=perfect)[0].iou == 1.0


def test_refusals_and_cancel(model):
    G, h = model
    with pytest.raises(ValueError, match="no region 'wheels'"):
        swap_fidelity(G, h, DOMAIN, ["wheels"], projector(G))
    with pytest.raises(ValueError, match="pairs"):
        swap_fidelity(G, h, DOMAIN, ["hair"], projector(G), pairs=0)
    token = CancelToken()
    token.requested = True
    with pytest.raises(Cancelled):
        swap_fidelity(G, h, DOMAIN, ["hair"], projector(G), pairs=1, cancel=token)
    a = torch.zeros(3, 4, 4)
    assert math.isnan(masked_psnr(a, a, torch.zeros(4, 4, dtype=torch.bool)))
    assert masked_psnr(a, a, torch.ones(4, 4, dtype=torch.bool)) == 100.0
    assert masked_psnr(a - 1, a + 1, torch.ones(4, 4, dtype=torch.bool)) == pytest.approx(0.0)     # peak to peak
    assert masked_psnr(a, a + 3, torch.ones(4, 4, dtype=torch.bool)) == pytest.approx(10 * math.log10(4))  # clamped
