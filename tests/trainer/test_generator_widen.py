"""Widening a trained toy generator for a warm start (trainer/generator_widen.py): the wider network
draws the same images, keeps every channel in its group, and a run can start from a narrower one."""
from __future__ import annotations

import pytest
import torch

from sfeditor.model.checkpoints import load_generator
from sfeditor.model.generator import Generator, GeneratorConfig
from sfeditor.toy import swap_groups
from trainer.generator import GeneratorRecipe, train_generator
from trainer.generator_blocks import (affine_masks, apply_affine_masks, channel_groups, conv_masks,
                                      is_block_sparse, rescale_masked_init)
from trainer.generator_losses import synth_w
from trainer.generator_widen import channel_map, needs_widening, widen_state

torch.set_num_threads(1)

FACES = tuple(swap_groups("toy-faces"))
SHARES = {"4": {"global": 0.4, "bg": 0.1, "hair": 0.2, "clothes": 0.1, "skin": 0.1, "eyes": 0.05, "mouth": 0.05},
          "16": {"global": 0.1, "bg": 0.1, "hair": 0.1, "clothes": 0.1, "skin": 0.1, "eyes": 0.3, "mouth": 0.2}}
ISOLATED = {"eyes": ["skin"], "mouth": ["skin"]}


def grouped(channels: dict, seed: int) -> tuple[Generator, list, list]:
    """A small factorised generator as a v5 run builds it: masked, rescaled affines, isolated groups."""
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(size=32, style_dim=64, n_mlp=1, channels=channels))
    aff = affine_masks(G, FACES, SHARES, 16, tuple(ISOLATED), 16)
    rescale_masked_init(aff)
    convs = conv_masks(G, FACES, SHARES, ISOLATED)
    apply_affine_masks(convs)
    return G, aff, convs


def test_widened_generator_draws_the_same_images_with_every_channel_in_its_group():
    old, _, _ = grouped({4: 64, 8: 64, 16: 32, 32: 16}, seed=0)
    with torch.no_grad():                       # a "trained" look: toRGB and biases away from their init
        for layer in old.rgb_layers:
            layer.conv.weight.normal_()
        for layer in old.conv_layers:
            layer.activate.bias.normal_(0, 0.1)
    new, aff, convs = grouped({4: 64, 8: 64, 16: 64, 32: 48}, seed=1)
    sd = old.state_dict()
    assert needs_widening(sd, new) and not needs_widening(sd, old)
    new.load_state_dict(widen_state(sd, new, FACES, SHARES))
    apply_affine_masks(aff)
    apply_affine_masks(convs)
    w = torch.randn(4, 64)
    with torch.no_grad():
        a, b = synth_w(old, w), synth_w(new, w)
    assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max())
    # group k's old channels are group k's first channels in the wider layer
    for res, d_old, d_new in ((16, 32, 64), (32, 16, 48)):
        m = channel_map(d_old, d_new, res, FACES, SHARES)
        assert torch.equal(channel_groups(d_old, res, FACES, SHARES), channel_groups(d_new, res, FACES, SHARES)[m])
        assert len(set(m.tolist())) == d_old
    # the new channels are computed but unread until training gives them a use
    conv = new.convs[-1].conv.weight[0]              # [O, I, k, k] at 32 px
    unread = torch.ones(48, dtype=torch.bool)
    unread[channel_map(16, 48, 32, FACES, SHARES)] = False
    assert float(conv[:, unread].detach().abs().max()) == 0 and float(conv[unread].detach().abs().max()) > 0
    assert float(new.rgb_layers[-1].conv.weight[0, :, unread].detach().abs().max()) == 0
    assert is_block_sparse(aff)


def test_widening_refuses_a_shrink_or_a_group_that_would_lose_channels():
    with pytest.raises(ValueError, match="shrink"):
        channel_map(32, 16, 16, FACES, SHARES)
    fewer_eyes = {**SHARES, "16": {**SHARES["16"], "eyes": 0.02}}
    wider = Generator(GeneratorConfig(size=32, style_dim=64, n_mlp=1, channels={4: 64, 8: 64, 16: 48, 32: 24}))
    with pytest.raises(ValueError, match="'eyes'"):
        widen_state(grouped({4: 64, 8: 64, 16: 32, 32: 16}, 0)[0].state_dict(), wider, FACES, fewer_eyes,
                    old_shares=SHARES)
    deeper = Generator(GeneratorConfig(size=64, style_dim=64, n_mlp=1,
                                       channels={4: 64, 8: 64, 16: 32, 32: 16, 64: 16}))
    with pytest.raises(ValueError, match="resolution"):
        widen_state(grouped({4: 64, 8: 64, 16: 32, 32: 16}, 0)[0].state_dict(), deeper, FACES, SHARES)


def test_a_run_starts_from_a_narrower_run(tmp_path):
    groups = tuple(swap_groups("toy-cars"))
    shares = {"4": {g: 1.0 for g in groups}}
    r = GeneratorRecipe(domain="toy-cars", size=16, style_dim=16, n_mlp=1, channels={4: 16, 8: 16, 16: 8},
                        batch=2, ae_steps=2, mapping_steps=2, mapping_batch=8, mapping_fit_images=64, mix_steps=0,
                        sample_every=1000, checkpoint_every=1, threads=1, device="cpu", bf16=False,
                        w_global_dim=4, group_shares=shares, param_code=True, swap_weight=1.0,
                        isolated_groups={"wheels": ["car_body"]}, silence_weight=0.5).validate()
    train_generator(r, tmp_path / "run", log=lambda *a: None)
    lines = []
    r2 = GeneratorRecipe(**{**r.__dict__, "init_from": str(tmp_path / "run"), "ae_steps": 1,
                            "channels": {4: 16, 8: 16, 16: 16}}).validate()
    out = train_generator(r2, tmp_path / "run2", log=lines.append)
    assert any("widened" in line for line in lines)
    G = load_generator(out, device="cpu")
    assert G.config.channels[16] == 16
    assert is_block_sparse(conv_masks(G, groups, r2.group_shares, r2.isolated_groups))
