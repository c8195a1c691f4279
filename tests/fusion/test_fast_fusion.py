"""Fast fusion (folded inference weights, :meth:`LatentBlender.mlp`) must give the reference's result.

* float32: the fast path is bit-for-bit the module path (``torch.equal``), small and real-size layouts;
* against an independent per-image, per-layer re-implementation of the official FusionNet arithmetic:
  max |diff| <= 1e-5 on the fused S code (codes ~1; float32 summation order differs there);
* bf16 folded weights (used only where the CPU runs bf16 natively): max |diff| <= 0.05 * max |a - b|;
* weights changed in place (training steps, ``load_state_dict``) are never served stale;
* the training path (autograd recording) keeps running the modules, with gradients.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sfeditor import StyleCode, StyleLayout
from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig
from sfeditor.model.generator import default_channels
from sfeditor.fusion.hierarchy import FusionHierarchy, load_hierarchy, resolve_precision
from sfeditor.regions.tree import paper_tree

torch.set_num_threads(1)

SMALL = StyleLayout.for_channels({4: 32, 8: 32, 16: 16, 32: 8})
REAL = StyleLayout.for_channels(default_channels(1024))          # |S| = 9088, 17 conv + 9 rgb layers


def codes_for(h: FusionHierarchy, layout: StyleLayout, b: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {n: StyleCode.from_flat(layout, 1 + 0.5 * torch.randn(b, layout.size, generator=g)) for n in h.node_map}


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial biases (EqualLinear biases start at 0) so the bias fold matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 30.0)


def make(layout: StyleLayout, variant: str, seed: int, **cfg) -> FusionHierarchy:
    torch.manual_seed(seed)
    h = FusionHierarchy.with_random_nets(paper_tree("faces"), FusionNetConfig.for_layout(layout, variant, **cfg),
                                         layout=layout)
    randomize(h, seed + 1)
    return h.eval()


def reference(h: FusionHierarchy, codes: dict) -> torch.Tensor:
    """The same hierarchy through its modules (scales applied per call), fast path off."""
    h.set_fast_inference(False)
    try:
        with torch.no_grad():
            return h(codes, use_cache=False).flat()
    finally:
        h.set_fast_inference(True)


def module_calls(h: FusionHierarchy) -> list:
    """Counts calls of the blender MLP modules (the fast path never calls them)."""
    calls = []
    for b in h.blenders():
        b.disentangle_net.register_forward_hook(lambda *a: calls.append(1))
    return calls


# ------------------------------------------ an independent re-implementation of the official arithmetic
def _official_blend(sd: dict, prefix: str, a, b, i: int, W: int, extra=None) -> torch.Tensor:
    x = torch.cat([a, b] + ([extra] if extra is not None else []))
    ind = torch.zeros(19)
    ind[i] = 1
    x = torch.cat([x, ind.repeat(10)])
    for k in range(5):
        w, bias = sd[f"{prefix}.{k}.weight"], sd[f"{prefix}.{k}.bias"]
        x = F.linear(x, w * (0.01 / math.sqrt(w.shape[1]))) + bias * 0.01
        x = F.leaky_relu(x, 0.2) * math.sqrt(2)
    return a + torch.sigmoid(x) * (b - a)


def official_net(sd: dict, s0: StyleCode, s1: StyleCode, s2: StyleCode, W: int) -> StyleCode:
    """Official FusionNet forward (full mode), one image and one layer at a time."""
    def up(v):
        return v.repeat_interleave(W // v.shape[0])

    def pool(v, c):
        return v.view(c, W // c).amax(1)

    conv, rgb = [], []
    for out, name in ((conv, "conv"), (rgb, "rgb")):
        for i, (a, b, al) in enumerate(zip(getattr(s0, name), getattr(s1, name), getattr(s2, name))):
            rows = []
            for n in range(a.shape[0]):
                c = a.shape[1]
                if i >= 5:
                    x = _official_blend(sd, "blender_segments.disentangle_net", up(a[n]), up(b[n]), i, W,
                                        torch.zeros(W))
                else:
                    x0 = pool(_official_blend(sd, "blender_common.disentangle_net", up(a[n]), up(al[n]), i, W), c)
                    x1 = pool(_official_blend(sd, "blender_common.disentangle_net", up(b[n]), up(al[n]), i, W), c)
                    x = _official_blend(sd, "blender_segments.disentangle_net", up(x0), up(x1), i, W, up(al[n]))
                rows.append(pool(x, c))
            out.append(torch.stack(rows))
    return StyleCode(conv, rgb, s0.layout)


def official_hierarchy(h: FusionHierarchy, codes: dict, W: int) -> torch.Tensor:
    sds = {n: {k: v.detach() for k, v in net.state_dict().items()} for n, net in h.nets.items()}

    def visit(node):
        if node.is_leaf:
            return codes[node.name]
        c0, c1 = (visit(ch) for ch in node.children)
        return official_net(sds[node.name], c0, c1, codes[node.name], W)
    return visit(h.root).flat()


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_path_is_bit_identical_small(variant, batch):
    h = make(SMALL, variant, seed=3)
    c = codes_for(h, SMALL, batch, seed=4)
    calls = module_calls(h)
    with torch.no_grad():
        got = h(c, use_cache=False).flat()
    assert not calls, "a no-grad call ran the modules instead of the folded weights"
    ref = reference(h, c)
    assert calls, "the reference must run the modules"
    assert torch.equal(got, ref)


def test_fast_path_real_layout_bit_identical_and_official(tmp_path):
    """Real-size S layout (1024: 26 layers, W = 512, 19 slots), narrow hidden layers to stay small,
    loaded the way users load it: official weight files + weights JSON through load_hierarchy."""
    h0 = make(REAL, "official", seed=5, hidden=96)
    (tmp_path / "weights" / "ffhq").mkdir(parents=True)
    for name, net in h0.nets.items():
        torch.save({"state_dict": net.state_dict()}, tmp_path / "weights" / "ffhq" / f"{name}.pt")
    (tmp_path / "weights" / "ffhq_weights.json").write_text(
        json.dumps({n: f"weights/ffhq/{n}.pt" for n in h0.nets}))
    h = load_hierarchy(tmp_path / "weights" / "ffhq_weights.json", precision="float32")
    assert h.inference_dtype == torch.float32
    assert all(b._folded is not None for b in h.blenders()), "load_hierarchy folds at load"
    c = codes_for(h, REAL, 2, seed=6)
    with torch.no_grad():
        got = h(c, use_cache=False).flat()
    assert torch.equal(got, reference(h, c))
    off = official_hierarchy(h, c, W=512)
    assert (got - off).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_fast_path_official_width_real_layout():
    """One official-width FusionNet (1726/2560 x 3/512, 38 M parameters) at the real 1024 layout."""
    torch.manual_seed(7)
    cfg = FusionNetConfig.for_layout(REAL, "official")
    net = FusionNet(cfg).eval()
    randomize(net, 8)
    g = torch.Generator().manual_seed(9)
    s = [StyleCode.from_flat(REAL, 1 + 0.5 * torch.randn(1, REAL.size, generator=g)) for _ in range(3)]
    with torch.no_grad():
        got = net(*s).result.flat()
        for b in (net.blender_common, net.blender_segments):
            b.fast_inference = False
        ref = net(*s).result.flat()
    assert torch.equal(got, ref)
    sd = {k: v.detach() for k, v in net.state_dict().items()}
    assert (got - official_net(sd, *s, W=512).flat()).abs().max().item() <= 1e-5


def test_weight_changes_are_never_served_stale():
    h = make(SMALL, "official", seed=11)
    c = codes_for(h, SMALL, 2, seed=12)
    with torch.no_grad():
        before = h(c, use_cache=False).flat()
    # a training step changes the weights in place
    opt = torch.optim.SGD(h.parameters(), lr=10.0)
    loss = h(c, use_cache=False).flat().square().mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = h(c, use_cache=False).flat()
    assert not torch.equal(before, after)
    assert torch.equal(after, reference(h, c))
    # load_state_dict from another hierarchy
    other = make(SMALL, "official", seed=13)
    h.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(h(c, use_cache=False).flat(), reference(other, c))


def test_training_path_runs_modules_with_gradients():
    h = make(SMALL, "paper", seed=21).train()
    c = codes_for(h, SMALL, 2, seed=22)
    calls = module_calls(h)
    out = h(c, use_cache=False).flat()
    assert calls and out.requires_grad
    out.sum().backward()
    w = h.nets["all"].blender_segments.disentangle_net[0].weight
    assert w.grad is not None and w.grad.abs().sum() > 0
    # frozen weights with grad mode on (an editor call outside no_grad): the fast path, same numbers
    h.requires_grad_(False)
    calls.clear()
    got = h(c, use_cache=False).flat()
    assert not calls and torch.equal(got, reference(h, c))


def test_bf16_weights_within_tolerance():
    h = make(SMALL, "official", seed=31)
    c = codes_for(h, SMALL, 2, seed=32)
    ref = reference(h, c)
    assert h.prepare_inference("bfloat16") == torch.bfloat16 == h.inference_dtype
    with torch.no_grad():
        got = h(c, use_cache=False).flat()
    assert got.dtype == torch.float32
    spread = max((c[a].flat() - c[b].flat()).abs().max().item() for a in c for b in c)
    diff = (got - ref).abs().max().item()
    assert 0 < diff <= 0.05 * spread
    assert h.prepare_inference("float32") == torch.float32
    with torch.no_grad():
        assert torch.equal(h(c, use_cache=False).flat(), ref)


def test_precision_choice(monkeypatch):
    monkeypatch.delenv("SFEDITOR_FUSION_PRECISION", raising=False)
    assert resolve_precision("float32", "cpu") == torch.float32
    assert resolve_precision("bfloat16", "cpu") == torch.bfloat16
    from sfeditor.model.device import bf16_is_fast
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if bf16_is_fast("cpu") else torch.float32)
    monkeypatch.setenv("SFEDITOR_FUSION_PRECISION", "bfloat16")
    assert resolve_precision("auto", "cpu") == torch.bfloat16
    assert resolve_precision("float32", "cpu") == torch.float32          # an explicit choice wins
    monkeypatch.setenv("SFEDITOR_FUSION_PRECISION", "fp8")
    with pytest.raises(ValueError, match="SFEDITOR_FUSION_PRECISION"):
        resolve_precision("auto", "cpu")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("half", "cpu")


def test_editor_render_path_uses_the_fast_path():
    """The editor's render service fuses compositions through the folded weights, same numbers."""
    from editor_core_helpers import TREE2, composition, tiny_generator, tiny_hierarchy

    from sfeditor.editor.render_service import fuse_composition

    G = tiny_generator()
    H = tiny_hierarchy(G, TREE2, seed=41)
    randomize(H, 42)
    comp = composition(TREE2)
    calls = module_calls(H)
    fused, recomputed, used, _ = fuse_composition(G, H, comp)
    assert used and recomputed and not calls
    H.set_fast_inference(False)
    ref, _, _, _ = fuse_composition(G, H, comp)
    assert calls and torch.equal(fused.flat(), ref.flat())
