"""Generator v5's parameter code (trainer/generator_param_code.py): block k of w is a function of group
k's renderer parameters only, so a region swap of parameters is a block swap of codes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sfeditor.model.checkpoints import load_generator
from sfeditor.toy import render, swap_groups
from trainer.generator import GeneratorRecipe, train_generator
from trainer.generator_blocks import affine_masks, block_masks, conv_masks, is_block_sparse
from trainer.generator_param_code import ParamCode, param_codes

torch.set_num_threads(1)


def test_each_block_reads_only_its_groups_parameters():
    groups = tuple(swap_groups("toy-faces"))
    blocks = block_masks(groups, 256, 64)
    torch.manual_seed(0)
    P = ParamCode("toy-faces", blocks, groups, n_stats=256)
    assert P.categories.get("hair_style") == 6                 # a choice is one-hot, not a number
    a, b = np.arange(8), 1000 + np.arange(8)
    _, _, pa = render("toy-faces", a, 16, return_params=True)
    _, _, pb = render("toy-faces", b, 16, return_params=True)
    wa, wb = P(pa), P(pb)
    for i, g in enumerate(groups):
        mixed = {k: (pb[k] if k in P.members[g] else pa[k]) for k in pa}
        w = P(mixed)
        own = blocks[i].bool()
        assert torch.allclose(w[:, own], wb[:, own]) and torch.allclose(w[:, ~own], wa[:, ~own])
    fewer = {k: v for k, v in pa.items() if k != "bg_dot_freq"}          # a batch without that parameter
    assert torch.isfinite(P(fewer)).all()


def test_parameter_codes_match_a_swap_of_the_renderers_parameters():
    """render_swap redraws one group from the donor: its parameters are A's with that group's from B."""
    groups = tuple(swap_groups("toy-cars"))
    blocks = block_masks(groups, 64, 16)
    P = ParamCode("toy-cars", blocks, groups, hidden=16, n_stats=128)
    a, b = np.arange(4), 50 + np.arange(4)
    _, _, pa = render("toy-cars", a, 16, return_params=True)
    _, _, pb = render("toy-cars", b, 16, return_params=True)
    wheels = groups.index("wheels")
    swapped = {k: (pb[k] if k in P.members["wheels"] else pa[k]) for k in pa}
    w_swap = P(pa).clone()
    w_swap[:, blocks[wheels].bool()] = P(pb)[:, blocks[wheels].bool()]
    assert torch.allclose(P(swapped), w_swap)
    assert param_codes(P, "toy-cars", 64, "cpu").shape == (64, 64)


def test_parameter_code_run_trains_encoder_and_writes_a_plain_generator(tmp_path):
    groups = tuple(swap_groups("toy-cars"))
    shares = {"4": {g: 1.0 for g in groups}}
    r = GeneratorRecipe(domain="toy-cars", size=16, style_dim=16, n_mlp=1, channels={4: 16, 8: 16, 16: 8},
                        batch=2, ae_steps=3, mapping_steps=2, mapping_batch=8, mapping_fit_images=64, mix_steps=0,
                        sample_every=1000, checkpoint_every=1, threads=1, device="cpu", bf16=False,
                        w_global_dim=4, group_shares=shares, balance_cap=4.0, param_code=True,
                        encoder_every=2, swap_weight=1.0, swap_focus=2.0, swap_anchor=True,
                        isolated_groups={"wheels": ["car_body"]}, isolate_ramp=2, silence_weight=0.5,
                        silence_relative=True).validate()
    out = train_generator(r, tmp_path / "run", log=lambda *a: None)
    G = load_generator(out, device="cpu")
    assert is_block_sparse(affine_masks(G, groups, r.group_shares, r.w_global_dim))
    assert is_block_sparse(conv_masks(G, groups, r.group_shares, r.isolated_groups))   # the wheels kept apart
    logged = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    enc = [x["enc"] for x in logged if x.get("phase") == "ae" and "enc" in x]
    assert len(enc) == 2 and all(np.isfinite(enc))             # steps 0 and 2 (encoder_every 2)
    assert all(np.isfinite(x["swap"]) for x in logged if x.get("phase") == "ae" and "psnr" in x)
    assert all(x["silence"] > 0 for x in logged if x.get("phase") == "ae" and "psnr" in x)
    assert "P" in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    # init_from another run: the parameter code is first fitted to that run's encoder codes
    lines = []
    r2 = GeneratorRecipe(**{**r.__dict__, "init_from": str(tmp_path / "run"), "param_code_distill": 2,
                            "ae_steps": 1})
    torch.save({k: v for k, v in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True).items()
                if k != "P"}, tmp_path / "run" / "checkpoint.pt")       # a run without a parameter code
    train_generator(r2, tmp_path / "run2", log=lines.append)
    assert any("distilled" in line for line in lines)
    # ... unless that run has one: a parameter-code run continues with its own
    lines.clear()
    r3 = GeneratorRecipe(**{**r2.__dict__, "init_from": str(tmp_path / "run2")})
    train_generator(r3, tmp_path / "run3", log=lines.append)
    assert any("carried over" in line for line in lines) and not any("distilled" in line for line in lines)


def test_recipe_refuses_what_a_parameter_code_makes_redundant():
    shares = {"4": {g: 1.0 for g in swap_groups("toy-faces")}}
    with pytest.raises(ValueError, match="factorised"):
        GeneratorRecipe(domain="toy-faces", param_code=True).validate()
    with pytest.raises(ValueError, match="param_weight"):
        GeneratorRecipe(domain="toy-faces", w_global_dim=64, group_shares=shares, param_code=True,
                        param_weight=1.0, mix_steps=0).validate()
    with pytest.raises(ValueError, match="mix_steps"):
        GeneratorRecipe(domain="toy-faces", w_global_dim=64, group_shares=shares, param_code=True).validate()


def test_silence_loss_reads_only_the_groups_channels_outside_their_region():
    """silence_loss: zero when the group's channels are zero outside its (dilated) region, whatever the
    other channels do; positive for activity outside; maps coarser than from_res have no inside."""
    from trainer.generator_losses import silence_loss

    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 4:6, 4:6] = 3                                   # the region: 2 x 2 pixels
    sel = torch.tensor([True, False])
    x = torch.zeros(1, 2, 16, 16)
    x[0, 1] = 5.0                                             # another group's channel: not read
    x[0, 0, 3:7, 3:7] = 1.0                                   # inside the one-pixel dilation
    assert float(silence_loss([x], labels, [(0, sel, 3)])) == 0.0
    x[0, 0, 12, 12] = 2.0
    assert float(silence_loss([x], labels, [(0, sel, 3)])) == pytest.approx(2.0 / (256 - 16))
    coarse = torch.ones(1, 2, 4, 4)                           # 4 px < from_res: all of it is outside
    assert float(silence_loss([coarse], labels, [(0, sel, 3)])) == pytest.approx(1.0)
    # relative: over the group's mean activity inside the region, so scaling the group changes nothing
    x[0, 0, 4:6, 4:6] = 4.0
    rel = float(silence_loss([x], labels, [(0, sel, 3)], relative=True))
    assert rel == pytest.approx(2.0 / (256 - 16) / 4.0)
    assert float(silence_loss([x * 0.1], labels, [(0, sel, 3)], relative=True)) == pytest.approx(rel)
    assert float(silence_loss([coarse], labels, [(0, sel, 3)], relative=True)) == pytest.approx(1.0)
