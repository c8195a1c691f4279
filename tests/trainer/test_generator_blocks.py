"""Generator v5's factorised code (trainer/generator_blocks.py): blocks of w, channel groups per
resolution, block-sparse affines that survive training and are stored as a plain StyleGAN2 file."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sfeditor.model.checkpoints import load_generator
from sfeditor.model.generator import Generator, GeneratorConfig
from sfeditor.toy import region_names, render, swap_groups
from trainer.generator import GeneratorRecipe, train_generator
from trainer.generator_blocks import (affine_masks, apply_affine_masks, block_masks, block_sizes,
                                      is_block_sparse, layer_groups, rescale_masked_init, swap_blocks)
from trainer.generator_losses import ParamProbe, balanced_weight_map

torch.set_num_threads(1)

FACES = tuple(swap_groups("toy-faces"))
SHARES = {"4": {"global": 0.4, "bg": 0.1, "hair": 0.2, "clothes": 0.1, "skin": 0.1, "eyes": 0.05, "mouth": 0.05},
          "16": {"global": 0.1, "bg": 0.1, "hair": 0.1, "clothes": 0.1, "skin": 0.1, "eyes": 0.3, "mouth": 0.2}}


def small_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(size=32, style_dim=64, n_mlp=1, channels={4: 64, 8: 64, 16: 32, 32: 32}))


def test_blocks_partition_w_in_order():
    sizes = block_sizes(FACES, 256, 64)
    assert sizes == {"global": 64, "bg": 32, "hair": 32, "clothes": 32, "skin": 32, "eyes": 32, "mouth": 32}
    m = block_masks(FACES, 256, 64)
    assert torch.equal(m.sum(0), torch.ones(256)) and m[0, :64].all() and m[-1, -32:].all()
    assert sum(block_sizes(FACES, 100, 10).values()) == 100          # uneven: the remainder is spread
    with pytest.raises(ValueError, match="leaves"):
        block_sizes(FACES, 16, 14)


def test_layer_groups_follow_the_shares_of_each_resolution():
    G = small_generator()
    ids = layer_groups(G, FACES, SHARES)
    res = G.layout.conv_res + G.layout.rgb_res
    assert [len(i) for i in ids] == list(G.layout.conv_dims + G.layout.rgb_dims)
    for i, r in zip(ids, res):
        counts = torch.bincount(i, minlength=len(FACES))
        assert (counts > 0).all()                                   # every group has channels everywhere
        share = counts.float() / counts.sum()
        table = SHARES["16" if r >= 16 else "4"]
        assert abs(float(share[FACES.index("eyes")]) - table["eyes"]) < 0.06
    fine = [i for i, r in zip(ids, res) if r >= 16]
    coarse = [i for i, r in zip(ids, res) if r < 16]
    eyes = FACES.index("eyes")
    assert min((i == eyes).float().mean() for i in fine) > max((i == eyes).float().mean() for i in coarse)


def test_affine_masks_read_only_global_and_own_block():
    G = small_generator()
    pairs = affine_masks(G, FACES, SHARES, 16)
    blocks = block_masks(FACES, 64, 16)
    ids = layer_groups(G, FACES, SHARES)
    for (w, m), gid in zip(pairs, ids):
        for c in (0, len(gid) - 1):
            want = blocks[gid[c]].clone()
            want[:16] = 1
            assert torch.equal(m[c], want)
    # isolated groups below fine_from px read w_global only: their block cannot reach the coarse maps
    coarse = affine_masks(G, FACES, SHARES, 16, coarse=("eyes",), fine_from=16)
    eyes = FACES.index("eyes")
    lay = G.layout
    for (_, m), (_, m0), gid, res in zip(coarse, pairs, ids, lay.conv_res + lay.rgb_res):
        rows = gid == eyes
        if res < 16 and bool(rows.any()):
            assert float(m[rows][:, 16:].sum()) == 0 and bool((m[rows][:, :16] == 1).all())
        else:
            assert torch.equal(m, m0)
    rescale_masked_init(pairs)
    assert is_block_sparse(pairs)
    # the output scale of a masked fresh affine stays that of a dense one
    w = torch.randn(256, 64)
    with torch.no_grad():
        s = G.styles(w).layers[0] - 1
    assert 0.7 < float(s.std()) < 1.3


def test_a_swapped_region_block_moves_only_that_groups_channels():
    G = small_generator()
    pairs = affine_masks(G, FACES, SHARES, 16)
    apply_affine_masks(pairs)
    blocks = block_masks(FACES, 64, 16)
    wa, wb = torch.randn(2, 64), torch.randn(2, 64)
    k = FACES.index("mouth")
    mixed = swap_blocks(wa, wb, blocks, [k, k])
    assert torch.equal(mixed[:, blocks[k].bool()], wb[:, blocks[k].bool()])
    assert torch.equal(mixed[:, ~blocks[k].bool()], wa[:, ~blocks[k].bool()])
    sa, sm = G.styles(wa).flat(), G.styles(mixed).flat()
    moved = (sa - sm).abs().amax(0) > 1e-6
    ids = torch.cat(layer_groups(G, FACES, SHARES))
    assert torch.equal(moved, ids == k)           # exactly the mouth channels, no others


def test_balanced_weights_even_out_the_regions():
    _, labels = render("toy-faces", np.arange(6), 64)
    w = balanced_weight_map("toy-faces", labels, 8.0)[:, 0].numpy()
    names = region_names("toy-faces")
    mass = [w[labels == names.index(r)].sum() for r in ("bg", "eyes", "mouth")]
    area = [(labels == names.index(r)).sum() for r in ("bg", "eyes", "mouth")]
    assert area[1] < area[0] / 5 and mass[1] > mass[0] / 3           # small by area, not by weight
    assert w.max() <= 8.0 and w.min() >= 1 / 8
    crop = balanced_weight_map("toy-faces", labels, 8.0, 2.0, ("eyes",))[:, 0].numpy()
    eyes = labels == names.index("eyes")
    assert np.allclose(crop[eyes], w[eyes] + 2.0) and (crop >= w).all()


def test_factorised_run_stays_block_sparse_and_loads_as_a_plain_generator(tmp_path):
    groups = tuple(swap_groups("toy-cars"))
    shares = {"4": {g: 1.0 for g in groups}, "16": {"global": 0.5, "wheels": 2.0, "car_body": 1.0,
                                                     "background_top": 0.5, "background_bottom": 0.5}}
    r = GeneratorRecipe(domain="toy-cars", size=16, style_dim=16, n_mlp=1, channels={4: 16, 8: 16, 16: 8},
                        batch=2, ae_steps=3, mapping_steps=2, mapping_batch=8, mix_steps=1, sample_every=1000,
                        checkpoint_every=1, threads=1, device="cpu", bf16=False, w_global_dim=4,
                        group_shares=shares, balance_cap=4.0, crop_weight=1.0, swap_weight=1.0,
                        param_weight=1.0).validate()
    out = train_generator(r, tmp_path / "run", log=lambda *a: None)
    G = load_generator(out, device="cpu")            # the ordinary loader, nothing special
    pairs = affine_masks(G, groups, r.group_shares, r.w_global_dim)
    assert is_block_sparse(pairs)
    dense = sum(int(m.numel()) for _, m in pairs)
    nonzero = sum(int((w != 0).sum()) for w, _ in pairs)
    assert nonzero < 0.75 * dense                     # genuinely sparse: the zeros are the blocks' complement
    logged = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["param"]) for r in logged if "psnr" in r and r.get("phase") == "ae")
    assert "probe" in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)


def test_param_probe_reads_each_groups_parameters_from_its_own_block():
    groups = tuple(swap_groups("toy-faces"))
    blocks = block_masks(groups, 256, 64)
    torch.manual_seed(0)
    probe = ParamProbe("toy-faces", blocks, groups, n_stats=256)
    assert set(probe.index) == set(groups) and all(probe.index[g] for g in groups)
    _, _, prm = render("toy-faces", np.arange(64), 16, return_params=True)
    z = (torch.from_numpy(np.stack([prm[k] for k in probe.names], 1)) - probe.mean) / probe.std
    # a code whose blocks hold their group's parameters can be read perfectly; shuffling the blocks cannot
    w = torch.zeros(64, 256)
    for i, g in enumerate(groups):
        cols = blocks[i].nonzero()[:, 0]
        idx = probe.index[g]
        w[:, cols[:len(idx)]] = z[:, idx]
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = probe.loss(w, prm)
        loss.backward()
        opt.step()
    assert float(probe.loss(w, prm).detach()) < 0.05
    eyes, hair = groups.index("eyes"), groups.index("hair")
    swapped = w.clone()
    swapped[:, blocks[eyes].bool()], swapped[:, blocks[hair].bool()] = w[:, blocks[hair].bool()], w[:, blocks[eyes].bool()]
    assert float(probe.loss(swapped, prm).detach()) > 0.2
    some = {k: v for k, v in prm.items() if k != "bg_dot_freq"}   # a batch without that parameter
    assert float(probe.loss(w, some).detach()) < 0.05


def test_recipe_checks_the_factorised_settings():
    with pytest.raises(ValueError, match="group_shares"):
        GeneratorRecipe(domain="toy-faces", w_global_dim=64).validate()
    with pytest.raises(ValueError, match="group_shares"):
        GeneratorRecipe(domain="toy-faces", w_global_dim=64, group_shares={"4": {"wheels": 1.0}}).validate()
    with pytest.raises(ValueError, match="balance_cap"):
        GeneratorRecipe(domain="toy-faces", balance_cap=-1).validate()
    assert GeneratorRecipe(domain="toy-faces", w_global_dim=64, group_shares=SHARES).validate().factorised


def test_grouped_convs_keep_a_region_block_out_of_the_other_channels():
    """With conv_masks isolating the eyes, a new eyes block changes only the eyes' feature channels of
    every layer (no demodulation or cross-channel path to the others): it reaches the pixels only
    through toRGB.  A new skin block reaches the eyes' channels too (they read the skin)."""
    from trainer.generator_blocks import conv_masks

    G = small_generator()
    apply_affine_masks(affine_masks(G, FACES, SHARES, 16))
    pairs = conv_masks(G, FACES, SHARES, {"eyes": ["skin"], "mouth": ["skin"]})
    apply_affine_masks(pairs)
    assert is_block_sparse(pairs) and sum(float(m.mean()) for _, m in pairs) < 0.95 * len(pairs)
    with pytest.raises(ValueError, match="wheels"):
        conv_masks(G, FACES, SHARES, {"wheels": []})
    ids = layer_groups(G, FACES, SHARES)
    eyes = FACES.index("eyes")
    outs = []
    hooks = [layer.conv.register_forward_hook(lambda m, i, o: outs.append(o)) for layer in G.conv_layers]
    blocks = block_masks(FACES, 64, 16)
    w_a, w_b = torch.randn(2, 64), torch.randn(2, 64)
    with torch.no_grad():
        G.synthesis(G.styles(w_a), noise_mode="const")
        G.synthesis(G.styles(swap_blocks(w_a, w_b, blocks, [eyes, eyes])), noise_mode="const")
        skin = FACES.index("skin")
        G.synthesis(G.styles(swap_blocks(w_a, w_b, blocks, [skin, skin])), noise_mode="const")
    for h in hooks:
        h.remove()
    n = len(G.conv_layers)
    for j in range(n):
        out_ids = ids[j + 1] if j + 1 < n else ids[-1]
        moved = (outs[j] - outs[n + j]).abs().amax((0, 2, 3))
        assert float(moved[out_ids != eyes].max()) == 0.0 and float(moved[out_ids == eyes].max()) > 0
        if j > 0:
            moved_skin = (outs[j] - outs[2 * n + j]).abs().amax((0, 2, 3))
            assert float(moved_skin[out_ids == eyes].max()) > 0


def test_ramp_conv_masks_fades_then_zeroes_only_the_cross_weights():
    """isolate_ramp: the masked-out conv weights follow (1 - step / ramp) with no gradient and are
    zero from step ``ramp`` on; the allowed weights are never touched."""
    from trainer.generator_blocks import ramp_conv_masks
    w = torch.nn.Parameter(torch.ones(1, 2, 3, 1, 1))
    m = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])[None, :, :, None, None]
    for step in range(1, 4):
        ramp_conv_masks([(w, m)], step, 4)
        assert torch.allclose(w[m == 0], torch.full((2,), 1 - step / 4))
    assert torch.equal(w[m == 1], torch.ones(4))
    with torch.no_grad():
        w[m == 0] = 0.3                      # a late optimiser step moves them again
    ramp_conv_masks([(w, m)], 4, 4)
    assert torch.equal(w[m == 0], torch.zeros(2)) and torch.equal(w[m == 1], torch.ones(4))


def test_isolate_ramp_is_validated():
    from trainer.generator_recipe import GeneratorRecipe
    with pytest.raises(ValueError, match="isolate_ramp"):
        GeneratorRecipe(domain="toy-faces", w_global_dim=64, group_shares=SHARES, ae_steps=10, isolate_ramp=20,
                        isolated_groups={"eyes": ["skin"]}).validate()
    with pytest.raises(ValueError, match="isolate_ramp"):
        GeneratorRecipe(domain="toy-faces", isolate_ramp=-1).validate()
