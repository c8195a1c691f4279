"""synthesis_by_parts: the images, features and style-code gradients of a plain synthesis, with a
backward pass that runs a few images at a time (issue 40: a stage-3 step at 1024 px)."""
from __future__ import annotations

import torch

from sfeditor.model.style_code import StyleCode
from tests.editor_core_helpers import small_generator
from trainer.synthesis_by_parts import synthesis_by_parts


def test_same_images_features_and_gradients_as_the_plain_synthesis():
    G = small_generator().requires_grad_(False)
    torch.manual_seed(1)
    s = G.styles(torch.randn(3, G.style_dim))
    target = torch.randn(3, 3, G.size, G.size)

    def grads(by_parts: bool):
        code = StyleCode([t.clone().requires_grad_() for t in s.conv], [t.clone().requires_grad_() for t in s.rgb],
                         s.layout)
        if by_parts:
            img, feats = synthesis_by_parts(G, code, chunk=1)
        else:
            img, feats = G.synthesis(code, "const", return_features=True)
        ((img - target) ** 2 * torch.linspace(0.5, 2, 3)[:, None, None, None]).sum().backward()
        return img.detach(), feats, [t.grad for t in code.layers]

    img0, feats0, g0 = grads(False)
    img1, feats1, g1 = grads(True)
    torch.testing.assert_close(img1, img0)
    assert all(not f.requires_grad for v in feats1.values() for f in v)
    for a, b in zip(feats0["conv"] + feats0["rgb"], feats1["conv"] + feats1["rgb"]):
        torch.testing.assert_close(b, a.detach())
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in g1)
