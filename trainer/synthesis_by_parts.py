"""Synthesis whose backward pass runs a few images at a time (memory of a full-size FusionNet step).

A stage-3 step (Sec. 4.4, Eq. 4-5) renders three images per code with gradients.  At 1024 px
even with every layer recomputed in the backward pass (``Generator.synthesis(checkpoint=True)``) it
peaked at 8.8-9.5 GB on the CPU, over issue 40's 8 GB bound: the layer inputs of all three images
are kept, and the 1024 px layers' recomputed activations and their gradients exist for the whole
batch at once.  :func:`synthesis_by_parts` renders the batch without autograd; its backward pass
then re-renders ``chunk`` images at a time with autograd on and pulls the incoming image gradient
through them.  The gradient with respect to the style code is the same (to float rounding: the
per-sample convolutions do not mix images); the cost is one more forward pass.
"""
from __future__ import annotations

import torch

from sfeditor.model.style_code import StyleCode


class _SynthesisByParts(torch.autograd.Function):
    @staticmethod
    def forward(fctx, render, chunk, keep, *layers):
        fctx.render, fctx.chunk = render, chunk
        fctx.save_for_backward(*layers)
        img, feats = render(list(layers), True)
        keep["features"] = feats
        return img

    @staticmethod
    def backward(fctx, grad):
        layers = fctx.saved_tensors
        grads = [torch.zeros_like(t) if fctx.needs_input_grad[3 + i] else None for i, t in enumerate(layers)]
        b = layers[0].shape[0]
        for i in range(0, b, fctx.chunk):
            part = [t[i:i + fctx.chunk].detach().requires_grad_(g is not None) for t, g in zip(layers, grads)]
            wanted = [p for p in part if p.requires_grad]
            with torch.enable_grad():
                img, _ = fctx.render(part, False)
                got = iter(torch.autograd.grad(img, wanted, grad[i:i + fctx.chunk], allow_unused=True))
            for acc, p in zip(grads, part):
                if p.requires_grad:
                    g = next(got)
                    if g is not None:
                        acc[i:i + fctx.chunk] = g
        return (None, None, None, *grads)


def synthesis_by_parts(G, s: StyleCode, chunk: int = 1, amp=None, checkpoint: bool = True):
    """``(images, features)`` of ``G.synthesis(s, "const", return_features=True)``; gradients reach
    ``s`` through a backward pass over ``chunk`` images at a time (each with ``checkpoint``).  The
    features carry no gradient (they feed the masks, which take none).  ``amp``: a context factory
    (bf16 autocast) wrapped around every synthesis; images and features come back as float32."""
    import contextlib

    amp = amp or contextlib.nullcontext
    n_conv, layout = len(s.conv), s.layout

    def render(layers, with_features):
        code = StyleCode(layers[:n_conv], layers[n_conv:], layout)
        with amp():
            if with_features:
                with torch.no_grad():
                    img, feats = G.synthesis(code, "const", return_features=True)
                return img.float(), {k: [f.float() for f in v] for k, v in feats.items()}
            return G.synthesis(code, "const", checkpoint=checkpoint).float(), None

    keep: dict = {}
    img = _SynthesisByParts.apply(render, max(1, int(chunk)), keep, *s.layers)
    return img, keep["features"]
