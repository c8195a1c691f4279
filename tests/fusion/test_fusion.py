"""Latent Blender, FusionNet (paper + official variants), hierarchy, losses and A.2 configs.

Small layouts and widths only: the whole file runs in a few seconds on one CPU thread.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sfeditor import StyleCode, StyleLayout
from trainer.fusion_config import NODE_PRESETS, favored, node_config, regular, short
from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig, load_fusion_net
from sfeditor.model.generator import default_channels
from sfeditor.fusion.hierarchy import FusionHierarchy, load_hierarchy
from sfeditor.regions.tree import PAPER_TREES, RegionNode, paper_tree
from sfeditor.fusion.latent_blender import BlenderConfig, LatentBlender
from trainer.losses import (align_reg_loss, fusion_loss, localization_loss, mask_loss, perturb,
                             total_loss)

torch.set_num_threads(1)

# widths 32/16/8 -> blender width W = 32; 7 conv + 4 rgb layers
LAYOUT = StyleLayout.for_channels({4: 32, 8: 32, 16: 16, 32: 8})
W = 32


def rand_code(b: int, seed: int, layout: StyleLayout = LAYOUT) -> StyleCode:
    g = torch.Generator().manual_seed(seed)
    return StyleCode.from_flat(layout, torch.randn(b, layout.size, generator=g) * 0.7 + 1.0)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial biases so every path matters (EqualLinear biases start at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 30.0)   # x lr_mul 0.01 -> ~0.3


# ---------------------------------------------------------------- references
SQ2 = math.sqrt(2.0)


def ref_mlp(x: torch.Tensor, sd: dict, prefix: str, final_act: bool = True) -> torch.Tensor:
    """EqualLinear(lr_mul 0.01) + leaky ReLU(0.2) * sqrt 2, written out."""
    n = 5
    for k in range(n):
        w, b = sd[f"{prefix}.{k}.weight"], sd[f"{prefix}.{k}.bias"]
        x = x @ (w * 0.01 / math.sqrt(w.shape[1])).t() + b * 0.01
        if k < n - 1 or final_act:
            x = torch.where(x >= 0, x, 0.2 * x) * SQ2
    return x


def onehot(i: int, rgb: bool, n_slots: int = 19, rep: int = 10) -> torch.Tensor:
    v = torch.zeros(n_slots)
    v[i] = 1
    if rgb:
        v[-1] = 1
    return torch.cat([v] * rep)


def up(t: torch.Tensor) -> torch.Tensor:          # [C] -> [W], nearest
    return F.interpolate(t[None, None], size=W, mode="nearest")[0, 0]


def pool(t: torch.Tensor, c: int) -> torch.Tensor:  # [W] -> [C], max-pool kernel W / C
    return F.max_pool1d(t[None, None], W // c)[0, 0]


def ref_paper_blend(sd, prefix, a, b, i, rgb):
    """Paper convention, one image, one layer: q = pool(sigmoid(D(...))), s' = q a + (1 - q) b."""
    x = torch.cat([up(a), up(b), onehot(i, rgb)])
    q = pool(torch.sigmoid(ref_mlp(x, sd, prefix)), a.shape[0])
    return q * a + (1 - q) * b, q


def ref_official_blend(sd, prefix, a_up, b_up, i, rgb, extra=None):
    """The official blender on width-W vectors: a + sigmoid(D([a, b, extra, onehot])) * (b - a)."""
    parts = [a_up, b_up] + ([extra] if extra is not None else []) + [onehot(i, rgb)]
    q = torch.sigmoid(ref_mlp(torch.cat(parts), sd, prefix))
    return a_up + q * (b_up - a_up)


def ref_official_fusion(sd, s0, s1, s2, only_common=False, only_segments=False, n_common=5):
    """Straightforward per-image, per-layer loop of the official FusionNet semantics."""
    out_conv, out_rgb = [], []
    bsz = len(s0) if s0 is not None else len(s1)
    for n in range(bsz):
        res = [[], []]
        for rgb, name in ((0, "conv"), (1, "rgb")):
            L0 = getattr(s0, name)
            for i in range(len(L0)):
                c = L0[i].shape[1]
                a = L0[i][n]
                bb = getattr(s1, name)[i][n] if s1 is not None else None
                al = getattr(s2, name)[i][n] if s2 is not None else None
                coarse = i < n_common
                if only_common:
                    if not coarse:
                        res[rgb].append(a)
                    else:
                        x = ref_official_blend(sd, "blender_common.disentangle_net", up(a), up(al), i, rgb == 1)
                        res[rgb].append(pool(x, c))
                elif only_segments or not coarse:
                    x = ref_official_blend(sd, "blender_segments.disentangle_net", up(a), up(bb), i, False,
                                           extra=torch.zeros(W))
                    res[rgb].append(pool(x, c))
                else:
                    x0 = pool(ref_official_blend(sd, "blender_common.disentangle_net", up(a), up(al), i, False), c)
                    x1 = pool(ref_official_blend(sd, "blender_common.disentangle_net", up(bb), up(al), i, False), c)
                    x = ref_official_blend(sd, "blender_segments.disentangle_net", up(x0), up(x1), i, False,
                                           extra=up(al))
                    res[rgb].append(pool(x, c))
        out_conv.append(res[0])
        out_rgb.append(res[1])
    conv = [torch.stack([out_conv[n][i] for n in range(bsz)]) for i in range(len(out_conv[0]))]
    rgbl = [torch.stack([out_rgb[n][i] for n in range(bsz)]) for i in range(len(out_rgb[0]))]
    return StyleCode(conv, rgbl, LAYOUT)


def official_state_dict(seed: int, width: int = W, hidden: int = 5 * W) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for blender, extra in (("blender_segments", width), ("blender_common", 0)):
        dims = [2 * width + extra + 190, hidden, hidden, hidden, width, width]
        for k in range(5):
            sd[f"{blender}.disentangle_net.{k}.weight"] = torch.randn(dims[k + 1], dims[k], generator=g) * 100
            sd[f"{blender}.disentangle_net.{k}.bias"] = torch.randn(dims[k + 1], generator=g) * 30
    return sd


def max_diff(a: StyleCode, b: StyleCode) -> float:
    return (a.flat() - b.flat()).abs().max().item()


def spy_mlp(blender: LatentBlender, record) -> None:
    """Records every call of the blender's MLP D (``mlp``: folded fast path or the modules)."""
    orig = blender.mlp

    def wrapped(x):
        record(x)
        return orig(x)
    blender.mlp = wrapped


# ---------------------------------------------------------------- blender
def test_widths_follow_paper_and_official():
    lay = StyleLayout.for_channels(default_channels(1024))
    p = FusionNetConfig.for_layout(lay, "paper").blender_configs()
    o = FusionNetConfig.for_layout(lay, "official").blender_configs()
    assert p[0].dims == (1214, 1536, 1536, 1536, 512, 512) == p[1].dims
    assert o[0].dims == (1214, 2560, 2560, 2560, 512, 512)
    assert o[1].dims == (1726, 2560, 2560, 2560, 512, 512)
    small = FusionNetConfig.for_layout(LAYOUT, "paper")
    assert (small.width, small.hidden, small.n_slots) == (32, 96, 19)


def test_blender_batched_equals_per_layer_loop():
    torch.manual_seed(0)
    lb = LatentBlender(BlenderConfig(width=W, hidden=48, convention="paper"))
    randomize(lb, 1)
    a, b = rand_code(3, 1), rand_code(3, 2)
    calls = []
    spy_mlp(lb, lambda x: calls.append(x.shape))
    with torch.no_grad():
        s, q = lb(a, b)
    assert len(calls) == 1 and calls[0][0] == 3 * LAYOUT.n_layers   # one MLP call for everything
    sd = {f"d.{k}": v for k, v in lb.disentangle_net.state_dict().items()}
    n_conv = len(LAYOUT.conv_dims)
    for n in range(3):
        for l in range(LAYOUT.n_layers):
            i, rgb = (l, False) if l < n_conv else (l - n_conv, True)
            ref_s, ref_q = ref_paper_blend(sd, "d", a.layers[l][n], b.layers[l][n], i, rgb)
            torch.testing.assert_close(s.layers[l][n], ref_s, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(q.layers[l][n], ref_q, atol=1e-5, rtol=1e-5)
    qf = q.flat()
    assert qf.min() >= 0 and qf.max() <= 1 and qf.std() > 0.01
    torch.testing.assert_close(s.flat(), qf * a.flat() + (1 - qf) * b.flat())   # Eq. 2


def test_blender_subset_copies_fill_and_checks_widths():
    lb = LatentBlender(width=W, hidden=16)
    a, b = rand_code(2, 3), rand_code(2, 4)
    with torch.no_grad():
        s, q = lb(a, b, layers=[0, 8])
    assert q.computed == [0, 8]
    for l in range(LAYOUT.n_layers):
        if l not in (0, 8):
            assert s.layers[l] is b.layers[l]       # paper convention: q = 0 selects b
    assert q.flat().shape == (2, 32 + 32)
    with pytest.raises(ValueError):
        LatentBlender(width=24, hidden=8)(a, b)      # layers of width 32 and 16 do not divide 24


# ---------------------------------------------------------------- FusionNet
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_lb_align_touches_only_coarse_layers(variant):
    net = FusionNet(FusionNetConfig.for_layout(LAYOUT, variant, n_common=3))
    randomize(net, 2)
    s1, s2, sa = rand_code(2, 5), rand_code(2, 6), rand_code(2, 7)
    with torch.no_grad():
        out = net(s1, s2, sa)
    coarse = net.coarse_layers(LAYOUT)
    n_conv = len(LAYOUT.conv_dims)
    assert coarse == [0, 1, 2, n_conv, n_conv + 1, n_conv + 2]
    for l in range(LAYOUT.n_layers):
        same1 = torch.equal(out.s1_aligned.layers[l], s1.layers[l])
        same2 = torch.equal(out.s2_aligned.layers[l], s2.layers[l])
        assert (same1 and same2) == (l not in coarse)
    assert out.q_align[0].computed == coarse and out.q_fuse.computed == list(range(LAYOUT.n_layers))
    # q_align is the weight of s_align, q_fuse the weight of s'2, in both variants (exact for full-width layers)
    qa, qf = out.q_align[0].layers[0], out.q_fuse.layers[0]
    torch.testing.assert_close(out.s1_aligned.layers[0], s1.layers[0] + qa * (sa.layers[0] - s1.layers[0]))
    torch.testing.assert_close(out.result.layers[0], out.s1_aligned.layers[0]
                               + qf * (out.s2_aligned.layers[0] - out.s1_aligned.layers[0]))


def test_fusionnet_two_mlp_calls_and_modes():
    net = FusionNet(FusionNetConfig.for_layout(LAYOUT, "paper"))
    calls = []
    for blender in (net.lb_align, net.lb_fuse):
        spy_mlp(blender, lambda x: calls.append(x.shape[0]))
    s1, s2, sa = rand_code(4, 1), rand_code(4, 2), rand_code(1, 3)     # s_align broadcasts
    with torch.no_grad():
        out = net(s1, s2, sa)
        assert calls == [2 * 4 * len(net.coarse_layers(LAYOUT)), 4 * LAYOUT.n_layers]
        stage1 = net(s1, s2, sa, fuse=False)
        assert stage1.result is None and stage1.q_fuse is None
        torch.testing.assert_close(stage1.s1_aligned.flat(), out.s1_aligned.flat())
        no_global = net(s1, s2, None, align=False)
        assert no_global.q_align is None and no_global.s1_aligned is s1
    with pytest.raises(ValueError):
        net(s1, s2, None)


def _save_official(sd, path, wrap):
    torch.save({"state_dict": sd} if wrap else sd, path)


@pytest.mark.parametrize("wrap", [False, True])
def test_official_weights_match_reference_loop(tmp_path, wrap):
    sd = official_state_dict(11)
    path = tmp_path / "all.pt"
    _save_official(sd, path, wrap)
    net = load_fusion_net(path)
    assert net.variant == "official" and net.config.hidden == 5 * W
    s0, s1, s2 = rand_code(2, 21), rand_code(2, 22), rand_code(2, 23)
    with torch.no_grad():
        full = net(s0, s1, s2)
        stage1 = net(s0, s1, s2, fuse=False)
        no_align = net(s0, s1, None, align=False)
    assert max_diff(full.result, ref_official_fusion(sd, s0, s1, s2)) <= 1e-5
    assert max_diff(stage1.s1_aligned, ref_official_fusion(sd, s0, None, s2, only_common=True)) <= 1e-5
    assert max_diff(stage1.s2_aligned, ref_official_fusion(sd, s1, None, s2, only_common=True)) <= 1e-5
    assert max_diff(no_align.result, ref_official_fusion(sd, s0, s1, None, only_segments=True)) <= 1e-5
    # the reference is not degenerate: the three inputs all matter
    assert (full.result.flat() - s0.flat()).abs().max() > 1e-2
    assert (full.result.flat() - s1.flat()).abs().max() > 1e-2


def test_official_load_errors(tmp_path):
    sd = official_state_dict(3)
    bad_shape = dict(sd)
    bad_shape["blender_common.disentangle_net.2.weight"] = torch.zeros(3, 3)
    missing = {k: v for k, v in sd.items() if not k.startswith("blender_common.disentangle_net.4")}
    extra = dict(sd, **{"other.weight": torch.zeros(2)})
    nan = dict(sd)
    nan["blender_segments.disentangle_net.1.bias"] = torch.full_like(sd["blender_segments.disentangle_net.1.bias"],
                                                                      float("nan"))
    for i, bad in enumerate([bad_shape, missing, extra, nan, {"state_dict": 3}, [1, 2]]):
        p = tmp_path / f"bad{i}.pt"
        torch.save(bad, p)
        with pytest.raises(ValueError):
            load_fusion_net(p)
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(ValueError, match="not a readable"):
        load_fusion_net(tmp_path / "garbage.pt")
    torch.save({"state_dict": sd, "opts": BlenderConfig()}, tmp_path / "pickled.pt")   # needs a global
    net = load_fusion_net(tmp_path / "pickled.pt")          # issue 40: read safely, tensors only
    _save_official(sd, tmp_path / "clean.pt", False)
    ref = load_fusion_net(tmp_path / "clean.pt").state_dict()
    assert set(net.state_dict()) == set(ref) and all(torch.equal(net.state_dict()[k], ref[k]) for k in ref)
    _save_official(sd, tmp_path / "ok.pt", False)
    with pytest.raises(ValueError, match="official"):
        load_fusion_net(tmp_path / "ok.pt", variant="paper")


# ---------------------------------------------------------------- hierarchy
def make_hierarchy(variant: str = "paper", seed: int = 0, **kw) -> FusionHierarchy:
    torch.manual_seed(seed)
    h = FusionHierarchy.with_random_nets(PAPER_TREES["faces"], FusionNetConfig.for_layout(LAYOUT, variant),
                                         layout=LAYOUT, **kw)
    for i, net in enumerate(h.nets.values()):
        randomize(net, 100 + i)
    return h


def all_codes(h: FusionHierarchy, b: int = 2, seed: int = 0) -> dict:
    return {name: rand_code(b, seed + i) for i, name in enumerate(h.node_map)}


def test_tree_parsing_formats():
    d = RegionNode.parse(PAPER_TREES["faces"])
    t = RegionNode.parse(("all", ("face", ("skin_mouth", "mouth", "skin"), "eyes"),
                    ("bg_hair_clothes", ("bg_clothes", "clothes", "bg"), "hair")))
    assert d == t and RegionNode.parse(d.to_dict()) == PAPER_TREES["faces"]
    assert paper_tree("church") == RegionNode.parse({"name": "all", "children": [{"name": "church"}, "background"]})
    assert [n.name for n in paper_tree("car").walk() if not n.is_leaf] == ["all", "car", "background"]
    for bad in [{"name": "a", "children": ["b"]}, ("a", "b", "a"), {"children": []}, 3]:
        with pytest.raises(ValueError):
            RegionNode.parse(bad)


def test_hierarchy_matches_direct_calls_bypass_and_collapse():
    h = make_hierarchy()
    c = all_codes(h)
    nets = h.nets

    def fuse(node, a, b):
        return nets[node](a, b, c[node]).result

    with torch.no_grad():
        sm = fuse("skin_mouth", c["mouth"], c["skin"])
        face = fuse("face", sm, c["eyes"])
        bhc = fuse("bg_hair_clothes", fuse("bg_clothes", c["clothes"], c["bg"]), c["hair"])
        want = fuse("all", face, bhc)
        assert max_diff(h(c), want) == 0
        # collapsed "face": the face subtree takes the face node's own code
        want_col = fuse("all", c["face"], bhc)
        assert max_diff(h(c, collapsed={"face"}), want_col) == 0
        assert "eyes" not in h.required_codes({"face"}) and "face" in h.active_parts({"face"})
        # a node without a net passes its own code
        h.set_net("skin_mouth", None)
        want_nonet = fuse("all", fuse("face", c["skin_mouth"], c["eyes"]), bhc)
        assert max_diff(h(c), want_nonet) == 0
        with pytest.raises(ValueError, match="missing codes"):
            h({k: v for k, v in c.items() if k != "eyes"})


def test_hierarchy_cache_recomputes_only_the_changed_path():
    h = make_hierarchy()
    c = all_codes(h)
    with torch.no_grad():
        first = h(c)
        assert sorted(h.last_recomputed) == sorted(h.internal_nodes)
        again = h(c)
        assert h.last_recomputed == [] and again is first
        c["eyes"] = rand_code(2, 99)
        h(c)
        assert h.last_recomputed == ["face", "all"]
        c["bg"] = rand_code(2, 98)
        h(c)
        assert h.last_recomputed == ["bg_clothes", "bg_hair_clothes", "all"]
        c["all"] = rand_code(2, 97)
        h(c)
        assert h.last_recomputed == ["all"]
        c["skin"].conv[2].add_(0.5)                  # in-place edit: version counter changes
        h(c)
        assert h.last_recomputed == ["skin_mouth", "face", "all"]
        h(c, collapsed={"face"})
        assert h.last_recomputed == ["all"]
        h(c)                                          # un-collapse: face's cached result is still valid
        assert h.last_recomputed == ["all"]
        with torch.no_grad():
            next(h.nets["bg_clothes"].parameters()).mul_(1.01)   # weights changed
        h(c)
        assert h.last_recomputed == ["bg_clothes", "bg_hair_clothes", "all"]
        assert h.recompute_counts["all"] == 8
    # content mode: an equal copy does not recompute
    hc = make_hierarchy(cache_mode="content")
    with torch.no_grad():
        hc(c)
        c2 = {k: v.clone() for k, v in c.items()}
        hc(c2)
        assert hc.last_recomputed == []
    # while autograd records, nothing is cached
    h2 = make_hierarchy()
    h2(c)
    h2(c)
    assert len(h2.last_recomputed) == 5


@pytest.mark.parametrize("half", [False, True])
def test_hierarchy_save_load_round_trip(tmp_path, half):
    h = make_hierarchy("official", seed=3)
    h.set_net("bg_clothes", None)
    c = all_codes(h, seed=40)
    path = tmp_path / "h.pt"
    h.save(path, half=half)
    state = torch.load(path, weights_only=True)
    assert state["format"] == "sfeditor-hierarchy" and state["version"] == 1 and state["variant"] == "official"
    assert state["nets"]["all"]["blender_common.disentangle_net.0.weight"].dtype == (
        torch.float16 if half else torch.float32)
    h2 = load_hierarchy(path)
    assert sorted(h2.nets) == sorted(h.nets) and h2.root == h.root and h2.layout == LAYOUT
    with torch.no_grad():
        if half:   # compare with the same weights rounded to fp16
            for net in h.nets.values():
                for p in net.parameters():
                    p.copy_(p.half().float())
        assert max_diff(h(c), h2(c)) <= 1e-5


def test_load_official_json(tmp_path):
    # official repository layout: weights/ffhq_weights.json -> "weights/ffhq/all.pt" (relative to the repo root)
    (tmp_path / "weights" / "ffhq").mkdir(parents=True)
    sds = {}
    for i, node in enumerate(["all", "bg_hair_clothes", "bg_clothes", "face", "skin_mouth"]):
        sds[node] = official_state_dict(50 + i)
        _save_official(sds[node], tmp_path / "weights" / "ffhq" / f"{node}.pt", wrap=(i % 2 == 0))
    spec = {n: f"weights/ffhq/{n}.pt" for n in sds}
    (tmp_path / "weights" / "ffhq_weights.json").write_text(json.dumps(spec))
    h = load_hierarchy(tmp_path / "weights" / "ffhq_weights.json")
    assert h.root == paper_tree("ffhq") and h.variant == "official"
    c = all_codes(h, b=1, seed=60)
    with torch.no_grad():
        got = h(c)
    face = ref_official_fusion(sds["face"], ref_official_fusion(sds["skin_mouth"], c["mouth"], c["skin"],
                                                                c["skin_mouth"]), c["eyes"], c["face"])
    bhc = ref_official_fusion(sds["bg_hair_clothes"], ref_official_fusion(sds["bg_clothes"], c["clothes"], c["bg"],
                                                                          c["bg_clothes"]), c["hair"],
                              c["bg_hair_clothes"])
    assert max_diff(got, ref_official_fusion(sds["all"], face, bhc, c["all"])) <= 1e-5
    # paths relative to the JSON's own folder, a partial hierarchy with an explicit tree
    (tmp_path / "church.json").write_text(json.dumps({"all": "weights/ffhq/all.pt"}))
    hc = load_hierarchy(tmp_path / "church.json")
    assert hc.root == paper_tree("church")
    # a partial JSON gets the paper tree (A.1) its nodes fit; names that fit several trees need the domain
    (tmp_path / "partial.json").write_text(json.dumps({"face": "weights/ffhq/face.pt"}))
    assert load_hierarchy(tmp_path / "partial.json").root == paper_tree("faces")
    (tmp_path / "ffhq_weights.json").write_text(json.dumps({"all": "weights/ffhq/all.pt"}))
    assert load_hierarchy(tmp_path / "ffhq_weights.json").root == paper_tree("faces")
    (tmp_path / "only_all.json").write_text(json.dumps({"all": str(tmp_path / "weights" / "ffhq" / "all.pt")}))
    assert load_hierarchy(tmp_path / "only_all.json").root == paper_tree("faces")     # by the weights' folder
    (tmp_path / "x" / "nets").mkdir(parents=True)
    _save_official(sds["all"], tmp_path / "x" / "nets" / "all.pt", wrap=False)
    (tmp_path / "x" / "mine.json").write_text(json.dumps({"all": "nets/all.pt"}))
    with pytest.raises(ValueError, match="fit the faces, cars, churches hierarchies.*tree="):
        load_hierarchy(tmp_path / "x" / "mine.json")
    (tmp_path / "odd.json").write_text(json.dumps({"face": "weights/ffhq/face.pt", "car": "weights/ffhq/all.pt"}))
    with pytest.raises(ValueError, match="match no official hierarchy"):
        load_hierarchy(tmp_path / "odd.json")
    hp = load_hierarchy(tmp_path / "partial.json", tree=PAPER_TREES["faces"])
    assert list(hp.nets) == ["face"] and hp.active_parts()[0] == "all"
    (tmp_path / "missing.json").write_text(json.dumps({"all": "weights/church/nope.pt"}))
    with pytest.raises(FileNotFoundError):
        load_hierarchy(tmp_path / "missing.json")
    (tmp_path / "leaf.json").write_text(json.dumps({"eyes": "weights/ffhq/all.pt"}))
    with pytest.raises(ValueError):
        load_hierarchy(tmp_path / "leaf.json", tree=PAPER_TREES["faces"])


def test_load_hierarchy_bad_files(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(ValueError):
        load_hierarchy(tmp_path / "g.pt")
    torch.save({"format": "something-else"}, tmp_path / "o.pt")
    with pytest.raises(ValueError, match="not an sfeditor hierarchy"):
        load_hierarchy(tmp_path / "o.pt")
    h = make_hierarchy()
    state = h.to_state()
    state["nets"]["all"]["blender_common.disentangle_net.0.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "s.pt")
    with pytest.raises(ValueError, match="all"):
        load_hierarchy(tmp_path / "s.pt")
    state = h.to_state()
    del state["tree"]
    with pytest.raises(ValueError, match="tree"):
        load_hierarchy(state)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError):
        load_hierarchy(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_hierarchy(tmp_path / "absent.pt")


# ---------------------------------------------------------------- losses
def test_mask_loss_by_hand():
    m1r = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    m1a = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    m2r = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    m2a = torch.tensor([[[0.0, 0.0], [0.5, 1.0]]])
    # d1 = 1, d2 = 1 + 0.5 = 1.5, denominator = 1 + 1 + 0.5 + 1 = 3.5
    assert mask_loss(m1r, m2r, m1a, m2a).item() == pytest.approx(2.5 / 3.5)
    two = mask_loss(torch.cat([m1r, m1a]), torch.cat([m2r, m2a]), torch.cat([m1a, m1a]), torch.cat([m2a, m2a]))
    assert two.item() == pytest.approx(2.5 / 3.5 / 2)            # batch mean; 2nd image has loss 0


def test_perturb_and_localization_loss_by_hand():
    s, r = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -2.0]])
    torch.testing.assert_close(perturb(s, r), torch.tensor([[1.2, 1.6]]))
    code = perturb(rand_code(1, 1), rand_code(1, 2), eps=0.1)
    torch.testing.assert_close(code.flat(), rand_code(1, 1).flat() + 0.1 * (rand_code(1, 2).flat()
                                                                            - rand_code(1, 1).flat()))
    i_res = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])          # [1, 2, 1, 2]
    i_t1 = torch.tensor([[[[1.0, 0.0]], [[3.0, 1.0]]]])
    i_t2 = torch.tensor([[[[0.0, 2.0]], [[1.0, 4.0]]]])
    m1 = torch.tensor([[[0.5, 0.0]]])
    m2 = torch.tensor([[[0.0, 1.0]]])
    # R2 term: || (0, 2), (0, 3) ||_2 / 1 = sqrt 13;  R1 term: || (0.5, 0), (1, 0) ||_2 / 0.5 = sqrt 5
    r1, r2 = localization_loss(i_res, i_t1, i_t2, m1, m2, per_region=True)
    assert (r1.item(), r2.item()) == (pytest.approx(math.sqrt(5)), pytest.approx(math.sqrt(13)))
    assert localization_loss(i_res, i_t1, i_t2, m1, m2).item() == pytest.approx(math.sqrt(5) + math.sqrt(13))
    weighted = localization_loss(i_res, i_t1, i_t2, m1, m2, region_weights=(20000, 10000))
    assert weighted.item() == pytest.approx(20000 * math.sqrt(5) + 10000 * math.sqrt(13))
    with pytest.raises(ValueError):
        localization_loss(i_res, i_t1, i_t2, torch.ones(1, 4, 4), torch.ones(1, 4, 4))


def test_align_reg_and_fusion_loss_by_hand():
    q = torch.tensor([[0.2, 0.5], [1.0, 0.0]])
    assert align_reg_loss(q).item() == pytest.approx(0.85)          # per-image sum, batch mean
    assert align_reg_loss(q, q).item() == pytest.approx(1.7)
    assert align_reg_loss(q, reduction="mean").item() == pytest.approx(0.425)
    net = FusionNet(FusionNetConfig.for_layout(LAYOUT, "paper"))
    with torch.no_grad():
        out = net(rand_code(2, 1), rand_code(2, 2), rand_code(2, 3))
    qa = out.q_align
    manual = (qa[0].flat().abs().sum(1) + qa[1].flat().abs().sum(1)).mean()
    torch.testing.assert_close(align_reg_loss(*qa), manual)
    torch.testing.assert_close(align_reg_loss(qa), manual)

    sr, s1, s2 = torch.tensor([[1.0, 2, 3]]), torch.tensor([[0.0, 2, 0]]), torch.tensor([[1.0, 0, 3]])
    w1, w2 = torch.tensor([1.0, 0.5, 0.5]), torch.tensor([[0.0, 1, 0]])
    # ||(1, 0, 1.5)||_2 = sqrt 3.25 ; ||(0, 2, 0)||_2 = 2
    assert fusion_loss(sr, s1, s2, w1, w2).item() == pytest.approx(math.sqrt(3.25) + 2)
    assert fusion_loss(sr, s1, s2, w1, w2, region_weights=(500, 250)).item() == pytest.approx(
        500 * math.sqrt(3.25) + 500)
    code = rand_code(1, 5)
    w = torch.rand(LAYOUT.size)
    torch.testing.assert_close(fusion_loss(code, code, rand_code(1, 6), w, w * 0),
                               torch.tensor(0.0))


def test_total_loss_eq9():
    terms = {"mask": torch.tensor(0.1), "local": (torch.tensor(1e-4), torch.tensor(2e-4)),
             "align_reg": torch.tensor(3.0), "fusion": torch.tensor(2.0)}
    lam = {"mask": 30000, "local": (20000, 10000), "align_reg": 6, "fusion": (375, 375)}
    tot, parts = total_loss(terms, lam, return_parts=True)
    assert tot.item() == pytest.approx(3000 + 2 + 2 + 18 + 750)
    assert parts["local"].item() == pytest.approx(4.0)
    assert total_loss({"fusion": torch.tensor(2.0)}, {"mask": 1.0}).item() == 0.0
    with pytest.raises(ValueError):
        total_loss({"fusion": torch.tensor(2.0)}, {"fusion": (500, 250)})   # needs per-region terms
    with pytest.raises(ValueError):
        total_loss({"bogus": torch.tensor(1.0)}, {})


# ---------------------------------------------------------------- configs
def test_training_presets_and_tables():
    r = regular()
    assert [s.steps for s in r.stages()] == [5000, 10000, 10000]
    s1, s2, s3 = r.stages()
    assert s1.lambdas == {"mask": 30000, "align_reg": 6, "fusion": (375, 375)} and s1.train == ("align",)
    assert not s1.use_fuse and s2.lambdas == {"fusion": (375, 375)} and s2.train == ("fuse",)
    assert s3.lambdas == {"local": (15000, 15000), "align_reg": 1, "fusion": (375, 375)} and s3.epsilon == 0.1
    assert [s.stage for s in short().stages()] == [1, 2] and short().total_steps == 15000
    assert [s.steps for s in regular(0.01).stages()] == [50, 100, 100]
    f = favored(1, "face")
    assert f.lambda_fusion == (250, 500) and f.lambda_local == (10000, 20000)
    assert node_config("ffhq", "all").lambda_fusion == (500, 250)          # face is child 1
    assert node_config("faces", "face").name == "short"
    assert {n: node_config("ffhq", n).name for n in NODE_PRESETS["ffhq"]} == {
        "all": "favored", "face": "short", "skin_mouth": "regular", "bg_hair_clothes": "regular",
        "bg_clothes": "regular"}
    assert [node_config("car", n).name for n in ("all", "car", "background")] == ["favored", "short", "short"]
    assert node_config("church", "all", steps_scale=0.1).total_steps == 2500
    with pytest.raises(ValueError):
        node_config("ffhq", "eyes")
