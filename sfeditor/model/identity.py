"""Model identity: content fingerprints of generators and modules (one home for all of them).

Files that live in S space (regions files, Sec. 4.2; FusionNet hierarchies, Sec. 4.5) record which
generator they were made from; :func:`fits_fingerprints` decides whether they fit another one.
Generator fingerprints hash the weights rounded to float16, so an fp32 training checkpoint and its
installed fp16 copy share one fingerprint.
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch

__all__ = ["generator_fingerprint", "synthesis_fingerprint", "deep_pixel_fingerprint", "outside_deep_pixels",
           "fits_fingerprints", "generator_identity", "module_fingerprint"]

_FP_CACHE: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def _versions(module: torch.nn.Module) -> tuple:
    return tuple((id(t), t._version) for t in module.state_dict(keep_vars=True).values())


def _weights_hash(G, skip=lambda name: False) -> str:
    h = hashlib.sha256()
    for name, t in sorted(G.state_dict().items()):
        if skip(name):
            continue
        t = t.detach().cpu()
        t = t.to(torch.float16) if t.is_floating_point() else t
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def generator_fingerprint(G) -> str:
    """sha256 of the generator's weights and buffers, rounded to float16, remembered per generator
    object until its tensors change.  ~0.1 s for a 64x64 toy, under a second at 1024."""
    ver = _versions(G)
    hit = _FP_CACHE.get(G)
    if hit is not None and hit[0] == ver:
        return hit[1]
    fp = _weights_hash(G)
    _FP_CACHE[G] = (ver, fp)
    return fp


def _mapping_entry(name: str) -> bool:
    return name == "w_avg" or name.startswith(("style.", "prior."))


def synthesis_fingerprint(G) -> str:
    """sha256 of everything but the mapping z -> w (the MLP, a mixture prior) and ``w_avg`` (fp16-rounded).

    Regions files and FusionNet hierarchies live in S space, so they fit every generator with the same
    synthesis (affine layers, convolutions, toRGB, constant input, noise): refitting the mapping (which
    codes are *sampled*) leaves them valid, and they check this fingerprint when they record it.
    """
    return _weights_hash(G, skip=_mapping_entry)


def outside_deep_pixels(G):
    """A predicate on state-dict names: true for the entries no DeepPixel and no S code depends on —
    the mapping network and the image head, which turns DeepPixels into pixels: the last conv (its
    output goes only to the last toRGB) and every toRGB's kernel and bias (not their affines: S)."""
    last = len(G.convs) - 1
    head = {f"convs.{last}.conv.weight", f"convs.{last}.activate.bias", f"convs.{last}.noise.weight",
            f"noises.noise_{last + 1}"}

    def skip(name: str) -> bool:
        if _mapping_entry(name) or name in head:
            return True
        return name.startswith(("to_rgb1.", "to_rgbs.")) and ".modulation." not in name
    return skip


def deep_pixel_fingerprint(G) -> str:
    """sha256 of what an S-space file reads from a generator (fp16-rounded, as above): the affine
    layers (w -> S) and every weight that shapes a DeepPixel (paper Sec. 4.2: the feature maps the
    conv styles modulate); not the mapping, nor the image head (the last conv, the toRGB kernels).

    A regions file is clustered on DeepPixels and a hierarchy blends S codes with masks read from
    DeepPixels, so both still fit a generator whose image head was fine-tuned (``sfeditor-train
    generator --ae-trainable``); they check this fingerprint when they record it.  (Stage 3's L_local,
    Eq. 4-5, reads pixels: retraining on the new head may give other nets, as training on a
    refitted mapping's codes may; the files stay correct to use, as they do then.)
    """
    return _weights_hash(G, skip=outside_deep_pixels(G))


def fits_fingerprints(full: str | None, synthesis: str | None, G, deep_pixel: str | None = None) -> bool:
    """Whether an S-space file (regions, hierarchy) that recorded these fingerprints fits ``G``: the
    DeepPixel fingerprint decides when recorded (a new image head changes no DeepPixel), else the
    synthesis one (a refitted mapping changes nothing in S space), else the full one; a file that
    recorded none fits."""
    if deep_pixel:
        return deep_pixel == deep_pixel_fingerprint(G)
    if synthesis:
        return synthesis == synthesis_fingerprint(G)
    if full:
        return full == generator_fingerprint(G)
    return True


def generator_identity(G, fingerprint: bool = True) -> dict:
    """What a regions file records about the generator it was made from."""
    ident = {"resolution": int(G.size), "style_size": int(G.layout.size),
             "deep_pixel_channels": int(G.layout.conv_size)}
    if fingerprint:
        ident["fingerprint"] = generator_fingerprint(G)
        ident["synthesis_fingerprint"] = synthesis_fingerprint(G)
        ident["deep_pixel_fingerprint"] = deep_pixel_fingerprint(G)
    return ident


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of any module's state dict (exact bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        t = t.reshape(-1)                     # a 0-d buffer (BatchNorm's counter) cannot be viewed as bytes
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()
