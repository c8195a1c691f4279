"""The toy generator recipe (trainer/generator_*.py): losses, schedule, a tiny run and its exact resume."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sfeditor.model.checkpoints import load_generator
from sfeditor.toy import region_names, render
from trainer.common import Cancelled, CancelToken
from trainer.generator import (GeneratorRecipe, PatchDiscriminator, SpikeGuard, ae_lr_factor,
                               discriminator_step, recon_loss, region_weight_map, train_generator)

torch.set_num_threads(1)


def test_lr_schedule_warms_up_holds_and_decays():
    f = [ae_lr_factor(s, 1000) for s in range(1000)]
    assert f[0] < 0.01 and f[199] == 1.0 and f[650] == 1.0
    assert abs(f[-1] - 0.1) < 0.01 and all(a >= b for a, b in zip(f[700:], f[701:]))


def test_spike_guard_skips_spikes_and_flags_a_slow_blow_up():
    rng = np.random.default_rng(0)
    steady = SpikeGuard()
    for v in 0.3 + 0.05 * rng.standard_normal(2000):
        assert steady.ok(float(v))
    assert not steady.diverged
    assert not steady.ok(50.0) and steady.skipped == 1        # one spike: skipped, not "diverged"
    slow = SpikeGuard()
    for v in 0.3 + 0.02 * rng.standard_normal(200):
        slow.ok(float(v))
    losses = 0.3 * 1.04 ** np.arange(120)                     # 4 % worse each step: no single spike
    flags = [(slow.ok(float(v)), slow.diverged) for v in losses]
    assert all(ok for ok, _ in flags) and flags[-1][1] and not flags[0][1]


def test_recon_loss_weighting():
    torch.manual_seed(0)
    t = torch.rand(2, 3, 8, 8) * 2 - 1
    p = t.clone()
    p[:, :, 2:4, 2:4] += 0.5                         # the error sits in a small region
    plain = recon_loss(p, t, 1.0)
    assert torch.allclose(recon_loss(p, t, 1.0, torch.full((2, 1, 8, 8), 3.0)), plain)   # uniform = plain
    w = torch.ones(2, 1, 8, 8)
    w[:, :, 2:4, 2:4] = 4.0
    assert recon_loss(p, t, 1.0, w) > 2 * plain       # up-weighted where the error is
    assert recon_loss(p, t, 0.0, w) > recon_loss(p, t, 0.0)


def test_region_weight_map_marks_small_regions():
    _, labels = render("toy-faces", np.arange(4), 32)
    w = region_weight_map("toy-faces", labels, ("eyes", "mouth"), 4.0)
    names = region_names("toy-faces")
    small = np.isin(labels, [names.index("eyes"), names.index("mouth")])
    assert w.shape == (4, 1, 32, 32) and small.any()
    assert torch.equal(w[:, 0] == 4.0, torch.from_numpy(small))
    assert region_weight_map("toy-faces", labels, ("eyes",), 1.0) is None


def tiny_recipe(**kw) -> GeneratorRecipe:
    base = dict(domain="toy-cars", size=16, style_dim=16, n_mlp=1, channels={4: 16, 8: 16, 16: 8}, batch=2,
                ae_steps=4, mapping_steps=2, mapping_batch=8, mix_steps=2, sample_every=1000,
                checkpoint_every=1, threads=1, device="cpu", bf16=False, region_weight=3.0)
    base.update(kw)
    return GeneratorRecipe(**base)


def test_patch_discriminator_learns_sharp_from_blurred():
    """The autoencoder's adversarial term is only useful if its discriminator can tell a blurred
    reconstruction from a render quickly (PyTorch's default init and a per-patch-summed R1 could not)."""
    torch.manual_seed(0)
    images, _ = render("toy-faces", np.arange(32), 32)
    real = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    blurred = torch.nn.functional.avg_pool2d(real, 5, 1, 2)
    D = PatchDiscriminator(width=16, downs=2)
    assert D(real).shape == (32, 1, 8, 8)
    opt = torch.optim.Adam(D.parameters(), lr=0.001, betas=(0.0, 0.99))
    for i in range(60):
        b = slice((i % 4) * 8, (i % 4) * 8 + 8)
        stats = discriminator_step(D, opt, real[b], blurred[b], 0.05, i % 4 == 0, 4)
        assert np.isfinite(list(stats.values())).all()
    with torch.no_grad():
        assert (D(real).flatten(1).mean(1) > D(blurred).flatten(1).mean(1)).float().mean() > 0.9


def test_init_from_another_run(tmp_path):
    first = train_generator(tiny_recipe(mapping_steps=0, mix_steps=0), tmp_path / "a", log=lambda *a: None)
    G_a = load_generator(first, device="cpu")
    second = train_generator(tiny_recipe(ae_steps=0, mapping_steps=0, mix_steps=0, init_from=str(tmp_path / "a")),
                             tmp_path / "b", log=lambda *a: None)
    G_b = load_generator(second, device="cpu")
    for (n, a), (_, b) in zip(G_a.state_dict().items(), G_b.state_dict().items()):
        if n != "w_avg":
            assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="no generator run"):
        train_generator(tiny_recipe(init_from=str(tmp_path / "nothing")), tmp_path / "c", log=lambda *a: None)


def test_ae_trainable_fine_tunes_only_the_named_head_and_keeps_the_deep_pixels(tmp_path):
    """--ae-trainable: only the named synthesis parameters move; the encoder, the affines (so the S
    space) and every DeepPixel (the feature maps the conv styles modulate) stay bit-identical."""
    train_generator(tiny_recipe(mapping_steps=0, mix_steps=0), tmp_path / "a", log=lambda *a: None)
    head = ("convs.3.conv.weight", "to_rgbs.1.conv.weight", "to_rgbs.1.bias")
    train_generator(tiny_recipe(ae_steps=6, mapping_steps=0, mix_steps=0, init_from=str(tmp_path / "a"),
                                ae_trainable=head, ae_lr=0.01), tmp_path / "b", log=lambda *a: None)
    G_a = load_generator(tmp_path / "a" / "generator.pt", device="cpu")
    G_b = load_generator(tmp_path / "b" / "generator.pt", device="cpu")
    moved = {n for (n, a), (_, b) in zip(G_a.state_dict().items(), G_b.state_dict().items())
             if n != "w_avg" and not torch.equal(a, b)}
    assert moved == set(head)
    enc_a = torch.load(tmp_path / "a" / "encoder.pt", weights_only=True)
    enc_b = torch.load(tmp_path / "b" / "encoder.pt", weights_only=True)
    flat = lambda d: {k: v for k, v in (d.get("state_dict", d)).items() if torch.is_tensor(v)}
    assert len(flat(enc_b)) > 4 and all(torch.equal(flat(enc_a)[k], v) for k, v in flat(enc_b).items())
    with torch.no_grad():
        s = G_a.random_styles(3, seed=0)
        img_a, dp_a = G_a.synthesis(s, return_features=True)
        img_b, dp_b = G_b.synthesis(s, return_features=True)
    assert all(torch.equal(x, y) for x, y in zip(dp_a["conv"], dp_b["conv"]))
    assert not torch.equal(img_a, img_b)
    with pytest.raises(ValueError, match="no generator parameter"):
        train_generator(tiny_recipe(ae_trainable=("nothing.",)), tmp_path / "c", log=lambda *a: None)
    # the log says whether S-space files survive; the later phases train again (here the mapping)
    lines = []
    train_generator(tiny_recipe(ae_steps=2, mapping_steps=3, mix_steps=0, init_from=str(tmp_path / "a"),
                                ae_trainable=head), tmp_path / "d", log=lines.append)
    assert any("image head only" in str(x) and "still fit" in str(x) for x in lines)
    G_d = load_generator(tmp_path / "d" / "generator.pt", device="cpu")
    assert not torch.equal(G_d.state_dict()["style.1.weight"], G_a.state_dict()["style.1.weight"])
    lines.clear()
    train_generator(tiny_recipe(ae_steps=1, mapping_steps=0, mix_steps=0, init_from=str(tmp_path / "a"),
                                ae_trainable=("to_rgbs.1",)), tmp_path / "e", log=lines.append)
    assert any("to_rgbs.1.conv.modulation.weight" in str(x) and "rebuilt" in str(x) for x in lines)


def test_gaussian_mapping_matches_the_codes_and_reruns_from_a_phase(tmp_path):
    from trainer.generator import gaussian_mapping_target

    torch.manual_seed(0)
    A = torch.randn(4, 4)
    mu, L = torch.arange(4.0), torch.linalg.cholesky(A @ A.T + torch.eye(4))
    w = gaussian_mapping_target(torch.randn(20000, 4), mu, L)
    torch.testing.assert_close(w.mean(0), mu, atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), L @ L.T, atol=0.25, rtol=0.05)

    r = tiny_recipe(mapping_steps=30, mix_steps=0, mapping_fit_images=64)
    first = load_generator(train_generator(r, tmp_path / "a", log=lambda *a: None), device="cpu")
    fits = [json.loads(line)["fit"] for line in (tmp_path / "a" / "stats.jsonl").read_text().splitlines()
            if '"fit"' in line]
    assert len(fits) == 30 and fits[-1] < fits[0]
    again = load_generator(train_generator(r, tmp_path / "a", log=lambda *a: None, from_phase="mapping"),
                           device="cpu")
    for (n, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        if n.startswith("style."):
            assert not torch.equal(a, b), n                   # the mapping trained on from its weights
        elif n != "w_avg":
            assert torch.equal(a, b), n                       # the synthesis untouched (no mix steps)
    with pytest.raises(ValueError, match="no run"):
        train_generator(r, tmp_path / "none", log=lambda *a: None, from_phase="mix")


@pytest.mark.slow
@pytest.mark.parametrize("adv,swap", [(0.0, 0.0), (0.1, 0.0), (0.0, 1.0)])
def test_tiny_run_resumes_exactly(tmp_path, adv, swap):
    full = train_generator(tiny_recipe(ae_adv_weight=adv, swap_weight=swap), tmp_path / "a", log=lambda *a: None)
    G_full = load_generator(full, device="cpu")

    token = CancelToken()

    def stop_at_3(step, total, info=None):
        if step >= 3:
            token.cancel()
    with pytest.raises(Cancelled):
        train_generator(tiny_recipe(ae_adv_weight=adv, swap_weight=swap), tmp_path / "b", cancel=token,
                        progress_callback=stop_at_3, log=lambda *a: None)
    resumed = train_generator(tiny_recipe(ae_adv_weight=adv, swap_weight=swap), tmp_path / "b", log=lambda *a: None)
    G_res = load_generator(resumed, device="cpu")
    for (n, a), (_, b) in zip(G_full.state_dict().items(), G_res.state_dict().items()):
        assert torch.equal(a, b), n


def test_seg_critic_refuses_the_judge_and_its_loss_prefers_sharp_images(tmp_path):
    import shutil

    from sfeditor.toy.oracle import default_path, load_oracle
    from trainer.generator import load_seg_critic, seg_loss

    copy = tmp_path / "copy.pt"
    shutil.copy(default_path("toy-faces"), copy)
    with pytest.raises(ValueError, match="judge"):
        load_seg_critic("toy-faces", copy, "cpu")
    net = load_oracle("toy-faces")          # any segmenter exercises the loss itself
    images, labels = render("toy-faces", np.arange(8), 64)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).requires_grad_(True)
    lab = torch.from_numpy(labels).long()
    sharp = seg_loss(net, x, lab)
    blurred = seg_loss(net, torch.nn.functional.avg_pool2d(x, 7, 1, 3), lab)
    assert blurred > 2 * sharp
    w = region_weight_map("toy-faces", labels, ("eyes", "mouth"), 4.0)
    seg_loss(net, x, lab, w).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_critic_feature_loss_is_zero_on_the_target_and_grows_with_blur():
    from sfeditor.toy.oracle import load_oracle
    from trainer.generator import critic_feature_loss

    net = load_oracle("toy-faces").eval()   # any segmenter exercises the loss itself
    feats = net.features(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8]
    images, _ = render("toy-faces", np.arange(8), 64)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    blur = [torch.nn.functional.avg_pool2d(x, k, 1, k // 2, count_include_pad=False) for k in (3, 7)]
    losses = [float(critic_feature_loss(net, b, x).detach()) for b in [x] + blur]
    assert losses[0] == 0.0 and 0 < losses[1] < losses[2]
    y = blur[0].clone().requires_grad_(True)
    critic_feature_loss(net, y, x).backward()
    assert y.grad.abs().sum() > 0


def test_feature_loss_alone_runs_without_the_semantic_loss(tmp_path):
    import json

    from sfeditor.toy.oracle import build_oracle, save_oracle

    torch.manual_seed(0)
    critic = tmp_path / "critic.pt"
    save_oracle(build_oracle("toy-cars"), critic)
    train_generator(tiny_recipe(feat_weight=0.1, seg_critic=str(critic), mix_steps=0), tmp_path / "run",
                    log=lambda *a: None)
    ae = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    ae = [r for r in ae if r.get("phase") == "ae" and "loss" in r]
    assert len(ae) == 4 and all(r["feat"] > 0 and "seg" not in r for r in ae)


def generator_cli_error(tmp_path, capsys, **recipe) -> str:
    """Run ``sfeditor-train generator --recipe FILE`` on a toy-cars recipe with ``recipe``'s keys;
    it must refuse (exit status 2) with one line on stderr, which is returned."""
    from trainer.cli import main

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"domain": "toy-cars", **recipe}))
    capsys.readouterr()
    assert main(["generator", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sfeditor-train generator: error: ") and str(path) in err and len(err.splitlines()) == 1
    return err


def test_generator_cli_checks_the_feature_loss_settings(tmp_path, capsys):
    assert "seg_critic" in generator_cli_error(tmp_path, capsys, feat_weight=0.02)
    assert "must be >= 0" in generator_cli_error(tmp_path, capsys, feat_weight=-1)


def test_swap_channel_groups_split_every_layer_evenly():
    from sfeditor.model.generator import Generator
    from trainer.generator import swap_channel_groups

    G = Generator(tiny_recipe().generator_config())
    ids = swap_channel_groups(G.layout, 5)
    assert ids.shape == (G.layout.size,)
    for part in torch.split(ids, list(G.layout.dims)):
        counts = torch.bincount(part, minlength=5)
        assert counts.max() - counts.min() <= 1


def test_region_swap_loss_reads_only_the_swapped_group_from_the_donor():
    """B's code reaches the loss through the swapped group's channels only."""
    from contextlib import nullcontext

    from sfeditor.model.generator import Generator
    from trainer.generator import region_swap_loss, swap_channel_groups

    torch.manual_seed(0)
    r = tiny_recipe()
    G = Generator(r.generator_config()).eval()
    groups = swap_channel_groups(G.layout, 5)
    seeds = np.arange(4)

    class FakeE(torch.nn.Module):   # B's code: a fixed w, perturbed below
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, xb):
            return self.w

    w_a = torch.randn(4, r.style_dim)
    w_b = torch.randn(4, r.style_dim)
    base, _ = region_swap_loss(G, FakeE(w_b), "toy-cars", 3, seeds, w_a, groups, nullcontext, 1.0, (), 1.0)
    same, _ = region_swap_loss(G, FakeE(w_b), "toy-cars", 3, seeds, w_a, groups, nullcontext, 1.0, (), 1.0)
    assert torch.equal(base, same)
    other, _ = region_swap_loss(G, FakeE(w_b + 3.0), "toy-cars", 3, seeds, w_a, groups, nullcontext, 1.0, (), 1.0)
    assert not torch.isclose(base, other)
    # with every image's group emptied of channels, the donor cannot matter at all
    none = torch.full_like(groups, 99)
    l1, _ = region_swap_loss(G, FakeE(w_b), "toy-cars", 3, seeds, w_a, none, nullcontext, 1.0, (), 1.0)
    l2, _ = region_swap_loss(G, FakeE(w_b + 3.0), "toy-cars", 3, seeds, w_a, none, nullcontext, 1.0, (), 1.0)
    assert torch.isclose(l1, l2)


def test_swap_focus_weights_exactly_the_pixels_a_swap_changes():
    from sfeditor.toy import render, render_swap
    from trainer.generator import changed_pixels, swap_batch

    seeds = np.arange(6)
    r = swap_batch("toy-faces", 2, seeds, 64)
    xa, _ = render("toy-faces", seeds, 64)
    same, _ = render_swap("toy-faces", seeds, seeds, ["eyes"] * 6, 64)
    to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1   # noqa: E731
    assert changed_pixels(to(same), to(xa)).sum() == 0          # a swap with itself changes nothing
    m = changed_pixels(to(r["y"]), to(xa))
    raw = (np.abs(r["y"].astype(int) - xa.astype(int)).max(-1) > 2)
    assert m.shape == (6, 1, 64, 64)
    assert bool(m[:, 0][torch.from_numpy(raw)].all())           # every changed pixel is weighted
    assert 0 < float(m.mean()) < 0.9                             # and not the whole image


def test_swap_focus_and_anchor_change_the_loss_and_need_the_a_renders():
    from contextlib import nullcontext

    from sfeditor.model.generator import Generator
    from sfeditor.images.imageio import from_uint8
    from sfeditor.toy import render
    from trainer.generator import region_swap_loss, swap_batch, swap_channel_groups

    torch.manual_seed(0)
    r = tiny_recipe()
    G = Generator(r.generator_config()).eval()
    E = lambda x: torch.zeros(len(x), r.style_dim)   # noqa: E731
    groups = swap_channel_groups(G.layout, 5)
    seeds = np.arange(4)
    w_a = torch.randn(4, r.style_dim)
    rendered = swap_batch("toy-cars", 3, seeds, G.config.size)
    x_a = from_uint8(render("toy-cars", seeds, G.config.size)[0])
    args = (G, E, "toy-cars", 3, seeds, w_a, groups, nullcontext, 1.0, (), 1.0)
    plain, _ = region_swap_loss(*args)
    pre, _ = region_swap_loss(*args, rendered=rendered)
    assert torch.equal(plain, pre)                   # the prefetched renders are the same data
    focused, _ = region_swap_loss(*args, rendered=rendered, x_a=x_a, focus=10.0)
    assert not torch.isclose(plain, focused)
    with pytest.raises(ValueError, match="x_a"):
        region_swap_loss(*args, focus=10.0)
    # the anchor replaces the target outside the changed pixels only: anchoring to the truth itself
    # is the plain loss, anchoring to A's render differs
    y = from_uint8(rendered["y"])
    anchored_y, _ = region_swap_loss(*args, rendered=rendered, x_a=x_a, rec_a=y)
    assert torch.isclose(anchored_y, plain)
    anchored_x, _ = region_swap_loss(*args, rendered=rendered, x_a=x_a, rec_a=x_a + 0.5)
    assert not torch.isclose(anchored_x, plain)
    with pytest.raises(ValueError, match="x_a"):
        region_swap_loss(*args, rec_a=y)
    # anchor=False: the target stays the render
    unanchored, _ = region_swap_loss(*args, rendered=rendered, x_a=x_a, rec_a=x_a + 0.5, anchor=False)
    assert torch.isclose(unanchored, plain)


def test_generator_cli_checks_the_swap_settings(tmp_path, capsys):
    assert "swap_weight and swap_focus must be >= 0" in generator_cli_error(tmp_path, capsys, swap_weight=1,
                                                                            swap_focus=-1)
    # the dropped experiments' keys are refused by name, not ignored
    for key in ("swap_leak", "channel_local", "mapping_mode"):
        assert f"unknown recipe key '{key}'" in generator_cli_error(tmp_path, capsys, swap_weight=1, **{key: 1})


def test_prefetcher_returns_each_step_in_order_and_skips_ahead():
    from trainer.generator import Prefetcher

    calls = []

    def make(s):
        calls.append(s)
        return s * s

    p = Prefetcher(make, depth=2)
    try:
        assert [p.get(s) for s in range(5)] == [0, 1, 4, 9, 16]
        assert p.get(10) == 100                      # a jump (resume) drops stale work
        assert all(s >= 10 for s in p.pending)
    finally:
        p.close()
    assert calls[:5] == [0, 1, 2, 3, 4]


def test_prefetcher_worker_processes_give_the_thread_path_data():
    import functools

    from trainer.generator import Prefetcher, ae_step_data

    make = functools.partial(ae_step_data, "toy-cars", 3, 32, True, 0)
    threads, procs = Prefetcher(make), Prefetcher(make, workers=2)
    try:
        for step in (0, 1, 5):
            a, b = threads.get(step), procs.get(step)
            for x, y in zip(a[:3], b[:3]):
                np.testing.assert_array_equal(x, y)
            assert a[3].keys() == b[3].keys()
            for k in a[3]:
                np.testing.assert_array_equal(a[3][k], b[3][k])
            assert a[4] is None and b[4] is None             # no renderer parameters unless asked
    finally:
        threads.close()
        procs.close()


def test_coverage_projects_with_the_editors_projector_and_preset():
    """evaluate-generator's coverage is the editor's inversion (domain preset), image by image."""
    from sfeditor.model.generator import Generator
    from sfeditor.images.inversion import InversionSettings, Projector
    from trainer.evaluate_generator import project_heldout

    torch.manual_seed(0)
    G = Generator(tiny_recipe().generator_config()).eval()
    with torch.no_grad():
        targets = G.synthesis(G.styles(G.sample_w(3, seed=5)), noise_mode="const")
    seen = []
    recon, settings = project_heldout(G, "toy-cars", targets, steps=12, progress=lambda i, **kw: seen.append(i))
    preset = InversionSettings.for_generator(G, "toy-cars")
    assert settings["steps"] == 12 and settings["lr"] == preset.lr and settings["space"] == "w+"
    assert recon.shape == targets.shape and seen == [1, 2, 3]
    # the same numbers the editor's projector gives for one of the images
    one = Projector(G, InversionSettings.for_generator(G, "toy-cars", steps=12), cache=False).invert(targets[1:2])
    assert torch.allclose(recon[1:2], one.render(G), atol=1e-5)
    _, default = project_heldout(G, "toy-cars", targets[:1], steps=None)
    assert default["steps"] == preset.steps               # no override: the domain's preset step count


def test_sharpness_measure_falls_with_blur():
    from trainer.generator import gradient_magnitude

    images, _ = render("toy-faces", np.arange(8), 64)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert float(gradient_magnitude(torch.zeros(2, 3, 8, 8) + 0.3)) == 0.0
    assert 0.3 < float(gradient_magnitude(blurred) / gradient_magnitude(x)) < 0.9
    assert float(gradient_magnitude(x.flip(-1))) == pytest.approx(float(gradient_magnitude(x)))


def test_diversity_measures_see_a_collapsed_sampler():
    """evaluate-generator's diversity numbers: a sampler that draws one face over and over is far from
    the renders; another set of renders is close."""
    from sfeditor.toy import region_names
    from sfeditor.toy.oracle import load_oracle
    from trainer.evaluate_generator import area_distance, frechet_distance, oracle_feature_stats

    oracle = load_oracle("toy-faces", device="cpu")
    a, lab_a = render("toy-faces", np.arange(200), 64)
    b, lab_b = render("toy-faces", 1000 + np.arange(200), 64)
    collapsed, lab_c = a[:1].repeat(200, 0), lab_a[:1].repeat(200, 0)
    st_a = oracle_feature_stats(oracle, a)
    assert abs(frechet_distance(st_a, st_a)) < 1e-6
    fd_b = frechet_distance(st_a, oracle_feature_stats(oracle, b))
    fd_c = frechet_distance(st_a, oracle_feature_stats(oracle, collapsed))
    assert fd_c > 5 * fd_b
    names = region_names("toy-faces")
    assert area_distance(lab_a, lab_a, names) == {n: 0.0 for n in names}
    far, near = area_distance(lab_c, lab_a, names), area_distance(lab_b, lab_a, names)
    assert far["hair"] > 2 * near["hair"] and far["bg"] > 2 * near["bg"]


def test_colour_r2_sees_a_region_tinted_by_another():
    from trainer.evaluate_generator import region_colour_r2

    rng = np.random.default_rng(0)
    n, names = 200, ("skin", "eyes", "bg")
    labels = np.zeros((n, 8, 8), np.int64)
    labels[:, 2:4, 2:6] = 1
    labels[:, 6:, :] = 2
    skin, bg, own = rng.random((n, 3)), rng.random((n, 3)), rng.random((n, 3))
    for eyes, want in ((own, (-0.2, 0.2)), (0.3 + 0.6 * skin, (0.95, 1.0))):
        img = np.where((labels == 0)[..., None], skin[:, None, None], 0.0)
        img = img + np.where((labels == 1)[..., None], eyes[:, None, None], 0.0)
        img = img + np.where((labels == 2)[..., None], bg[:, None, None], 0.0)
        r2 = region_colour_r2((img * 255).round().astype(np.uint8), labels, names, "eyes")
        assert want[0] <= r2 <= want[1], r2
