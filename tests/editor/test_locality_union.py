"""The union locality reading (issue 38 item 2, ``sfeditor.editor.locality``) on hand-made arrays, the renderer's
ideal edit under it, and the heatmap's running numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sfeditor.editor.locality import ratio_se, read_edit, union_ring

torch.set_num_threads(1)


def box(h: int, w: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    m = torch.zeros(1, h, w, dtype=torch.bool)
    m[0, top:bottom, left:right] = True
    return m


def test_the_ring_is_the_one_pixel_band_on_both_sides_of_the_union_border():
    base = box(12, 12, 3, 3, 7, 7)                   # a 4x4 square
    inner, ring = union_ring(base, base)
    assert inner[0].nonzero().tolist() == [[4, 4], [4, 5], [5, 4], [5, 5]]      # its 2x2 core
    expected_ring = box(12, 12, 2, 2, 8, 8) & ~box(12, 12, 4, 4, 6, 6)           # 6x6 minus the core
    assert torch.equal(ring, expected_ring)
    # the frame is not a border: a region along the image edge keeps its edge pixels
    edge = box(8, 8, 0, 0, 8, 3)
    inner, ring = union_ring(edge, edge)
    assert inner[0, :, :2].all() and not inner[0, :, 2:].any()
    assert ring[0, :, 2:4].all() and int(ring.sum()) == 16


def test_change_on_the_ring_is_left_out_of_numerator_and_denominator():
    base = box(12, 12, 3, 3, 7, 7)
    _, ring = union_ring(base, base)
    change = torch.zeros(1, 12, 12, dtype=torch.float64)
    change[ring] = 0.8                                 # only anti-aliased border pixels change
    r = read_edit(change, base, base)
    assert float(r.inside) == 0 and float(r.total) == 0 and math.isnan(r.locality)
    assert r.region_change == 0.0                      # nothing inside changed
    change[0, 4, 4] = 0.5                              # one core pixel ...
    change[0, 0, 11] = 0.5                             # ... and one far outside
    r = read_edit(change, base, base)
    assert r.locality == pytest.approx(0.5)            # the ring counts nowhere
    assert r.region_change == pytest.approx(0.5 / 4)   # mean over the 2x2 core
    # the old reading counts the ring: the base square holds part of it, the outside ring the rest
    base_part = float(change[base].sum())
    assert r.base_locality == pytest.approx(base_part / float(change.sum()))


def test_a_growing_region_is_not_leakage_under_the_union_reading():
    base = box(16, 16, 4, 4, 8, 8)                     # a small mouth ...
    edit = box(16, 16, 4, 4, 12, 12)                   # ... that opens wide
    change = torch.zeros(1, 16, 16, dtype=torch.float64)
    change[edit] = 1.0                                 # the edit repaints its new region, nothing else
    r = read_edit(change, base, edit)
    assert r.locality == pytest.approx(1.0)
    assert r.base_locality == pytest.approx(16 / 64)   # the old reading calls 3/4 of it leakage
    assert r.region_change == pytest.approx(1.0)


def test_a_no_op_edit_changes_nothing_and_has_no_locality():
    base = box(16, 16, 2, 2, 10, 10)
    r = read_edit(torch.zeros(2, 16, 16), base.expand(2, -1, -1), base.expand(2, -1, -1))
    assert r.region_change == 0.0 and math.isnan(r.locality) and math.isnan(r.base_locality)
    assert torch.equal(r.area, torch.full((2,), 36.0, dtype=torch.float64))      # 8x8 minus its 1-px rim


def test_pooled_ratio_and_its_delta_method_error():
    y, x = np.array([1.0, 2.0, 3.0, 6.0]), np.array([2.0, 4.0, 4.0, 6.0])
    r, se = ratio_se(y, x)
    assert r == pytest.approx(12 / 16)
    d = (y - r * x) / x.mean()
    assert se == pytest.approx(math.sqrt((d ** 2).sum() / 12))
    assert math.isnan(ratio_se([1.0], [2.0])[1]) and ratio_se([1.0], [2.0])[0] == 0.5
    assert all(math.isnan(v) for v in ratio_se([0.0, 0.0], [0.0, 0.0]))
    with pytest.raises(ValueError):
        ratio_se([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        union_ring(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 4, 5, dtype=torch.bool))


def test_the_ideal_edit_is_read_with_the_renderers_labels_by_hand():
    from sfeditor.images.imageio import from_uint8
    from sfeditor.editor.locality import change_map
    from sfeditor.toy import region_names, render, render_swap
    from trainer.fusion_eval import ideal_edit_readings

    n, seed = 12, 4
    out = ideal_edit_readings("toy-cars", ["wheels", "car_body", "not_a_region"], samples=n, seed=seed, batch=5)
    assert set(out) == {"wheels", "car_body"} and out["wheels"]["edits"] == n
    rng = np.random.default_rng([seed, 5151])
    a = rng.integers(20_000_000, 30_000_000, n)
    b = rng.integers(30_000_000, 40_000_000, n)
    xa, la = render("toy-cars", a)
    y, ly = render_swap("toy-cars", a, b, ["car_body"] * n)
    k = region_names("toy-cars").index("car_body")
    d = change_map(from_uint8(xa), from_uint8(y)).double()
    u = torch.from_numpy((la == k) | (ly == k))
    inner = torch.nn.functional.max_pool2d((~u)[:, None].float(), 3, 1, 1)[:, 0] == 0      # erode3x3(U)
    ring = (torch.nn.functional.max_pool2d(u[:, None].float(), 3, 1, 1)[:, 0] > 0) & ~inner
    assert out["car_body"]["locality"] == pytest.approx(float(d[inner].sum() / d[~ring].sum()), rel=1e-9)
    assert out["car_body"]["region_change"] == pytest.approx(float(d[inner].mean()), rel=1e-9)
    base = torch.from_numpy(la == k)
    assert out["car_body"]["base_locality"] == pytest.approx(float(d[base].sum() / d.sum()), rel=1e-9)
    assert out["car_body"]["locality"] > out["car_body"]["base_locality"]      # the body's outline moves
    assert out["car_body"]["locality_se"] > 0


def test_heatmap_updates_carry_the_union_reading_with_a_region_model():
    """locality_heatmap with a regions file: the running numbers equal read_edit over the same edits."""
    from editor_core_helpers import TREE4, composition, small_generator, tiny_hierarchy
    from sfeditor.editor.locality import locality_heatmap
    from sfeditor.regions.masks import RegionModel
    from sfeditor.model.identity import generator_identity
    from sfeditor.regions.regions_file import RegionsFile

    G = small_generator().requires_grad_(False)
    G.update_w_avg(64, seed=0)
    with torch.no_grad():                 # centroids = random DeepPixels; 8 clusters -> leaves a, b, c, d
        dp = G.deep_pixels(G.random_styles(4, seed=3), size=G.size)
    x = dp.permute(0, 2, 3, 1).reshape(-1, dp.shape[1])
    cent = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:8]]
    regions = RegionsFile(domain="tiny", generator=generator_identity(G), centroids=cent.numpy(),
                          clusters={i: "abcd"[i % 4] for i in range(8)}, tree=TREE4, deep_pixel_size=G.size,
                          temperature=1.0)
    h = tiny_hierarchy(G)
    model = RegionModel(G, regions)
    comp = composition(TREE4, truncation=0.7)
    ups = list(locality_heatmap(G, h, comp, "left", "random", samples=4, batch=2, seed=3, region_model=model))
    last = ups[-1]
    assert [u.done for u in ups] == [2, 4] and 0.0 <= last.locality <= 1.0 and last.region_change > 0
    assert math.isfinite(last.base_locality)
    # by hand: the same seeded draws
    gen = torch.Generator().manual_seed(3)
    need = h.required_codes(comp.collapsed_nodes())
    ids = torch.tensor([model.leaves.index(x) for x in ("a", "b")])
    sums = np.zeros(3)
    for _ in range(2):
        codes = {n: G.styles(G.sample_w(2, truncation=0.7, generator=gen)) for n in need}
        with torch.no_grad():
            base = G.synthesis(h(codes, comp.collapsed_nodes(), use_cache=False), noise_mode="const")
            lab_b = model.hard_labels(h(codes, comp.collapsed_nodes(), use_cache=False), size=G.size)
            codes["left"] = G.styles(G.sample_w(2, truncation=0.7, generator=gen))
            s = h(codes, comp.collapsed_nodes(), use_cache=False)
            edited = G.synthesis(s, noise_mode="const")
            lab_e = model.hard_labels(s, size=G.size)
        r = read_edit((edited - base).abs().mean(1), torch.isin(lab_b, ids), torch.isin(lab_e, ids))
        sums += [float(r.inside.sum()), float(r.total.sum()), float(r.area.sum())]
    assert last.locality == pytest.approx(sums[0] / sums[1], rel=1e-4)
    assert last.region_change == pytest.approx(sums[0] / sums[2], rel=1e-4)
    # without a region model (or on drafts) the numbers are NaN
    plain = list(locality_heatmap(G, h, comp, "left", "random", samples=2, batch=2, seed=3))[-1]
    assert math.isnan(plain.locality) and np.allclose(plain.values, ups[0].values)
