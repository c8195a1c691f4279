"""The toy generator's losses and discriminators (``sfeditor-train generator``).

* reconstruction: L1 + L1 of image gradients, small regions' pixels re-weighted (:func:`recon_loss`);
* semantic and perceptual: a frozen segmentation critic's cross-entropy and features
  (:func:`seg_loss`, :func:`critic_feature_loss`);
* adversarial: a patch discriminator on reconstructions, an image discriminator in the mixing
  phase (:func:`discriminator_step`);
* region swap: one group of style channels per region (:func:`region_swap_loss`);
* mapping: the Gaussian the mapping MLP regresses onto (:func:`gaussian_mapping_target`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sfeditor.images.metrics import psnr
from sfeditor.model.generator import Generator
from sfeditor.images.imageio import from_uint8
from sfeditor.model.style_code import StyleCode
from sfeditor.toy import region_names

from .generator_blocks import layer_groups, swap_blocks
from .generator_data import swap_batch

class ImageDiscriminator(nn.Module):
    """A small residual-free conv discriminator for 64x64 images."""

    def __init__(self, size: int = 64, width: int = 32):
        super().__init__()
        layers, ch, res = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)], width, size
        while res > 4:
            nxt = min(ch * 2, 256)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch, res = nxt, res // 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * 16, 1))

    def forward(self, x):
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """A PatchGAN-style discriminator: one logit per ~30 px patch (8x8 logits at 64x64).

    Used on the autoencoder's reconstructions: an L1 loss averages away what
    it cannot place exactly (eyes, mouths, patterns); a local realism term
    asks for sharp, present details instead (as VQGAN-style autoencoders do).
    """

    def __init__(self, width: int = 32, downs: int = 3):
        super().__init__()
        layers, ch = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)], width
        for _ in range(downs):
            nxt = min(ch * 2, 256)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch = nxt
        layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(ch, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        for m in self.net:   # He init for leaky ReLU: PyTorch's default shrinks the signal layer by layer
            if isinstance(m, nn.Conv2d):  # and the logits then learn very slowly
                nn.init.kaiming_normal_(m.weight, a=0.2)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def discriminator_step(D: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                       r1_gamma: float, with_r1: bool, r1_every: int = 1, clip: float = 5.0) -> dict:
    """One non-saturating logistic discriminator step, with (lazy) R1 on the real images.

    Run it in fp32: R1's double backward in bfloat16 blew the discriminator up (logits ~1e3) in a
    trial; the gradient clip guards against what is left."""
    real = real.detach().requires_grad_(with_r1)
    d_real = D(real).float()
    d_fake = D(fake.detach()).float()
    logits = {"d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}
    loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    r1 = torch.zeros(())
    if with_r1:
        # per image: the mean patch logit (a sum over 64 patches would make R1 ~64x stronger)
        (grad,) = torch.autograd.grad(d_real.flatten(1).mean(1).sum(), real, create_graph=True)
        r1 = grad.pow(2).flatten(1).sum(1).mean()
        loss = loss + 0.5 * r1_gamma * r1_every * r1
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(D.parameters(), clip)
    opt.step()
    return {**logits, "r1": float(r1.detach())}



def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute finite-difference gradient of ``[B, 3, H, W]`` images (both directions): the
    *sharpness* measure of the model card, read as a ratio against renders (1.0 = as crisp as them)."""
    dy, dx = image_gradients(x)
    return (dy.abs().mean() + dx.abs().mean()) / 2


SMALL_REGIONS = {"toy-faces": ("eyes", "mouth"), "toy-cars": ("wheels",)}


def _wmean(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return x.mean()
    w = weight.expand_as(x)
    return (x * w).sum() / w.sum()


def recon_loss(pred: torch.Tensor, target: torch.Tensor, grad_weight: float,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 + ``grad_weight`` x L1 of image gradients; ``weight`` [B, 1, H, W] re-weights pixels (a
    weighted mean, so the loss scale does not change), e.g. up-weighting small regions that a plain
    L1 gives up (eyes, mouths, wheels)."""
    loss = _wmean((pred - target).abs(), weight)
    if grad_weight:
        wy = wx = None
        if weight is not None:
            wy, wx = torch.maximum(weight[..., 1:, :], weight[..., :-1, :]), \
                torch.maximum(weight[..., :, 1:], weight[..., :, :-1])
        for (a, b), w in zip(zip(image_gradients(pred), image_gradients(target)), (wy, wx)):
            loss = loss + grad_weight * _wmean((a - b).abs(), w)
    return loss


def region_weight_map(domain: str, labels: np.ndarray, regions: tuple, factor: float) -> torch.Tensor | None:
    """[B, 1, H, W]: ``factor`` on the pixels of ``regions`` (renderer labels), 1 elsewhere."""
    if factor == 1.0 or not regions:
        return None
    names = region_names(domain)
    ids = [names.index(r) for r in regions]
    m = np.isin(labels, ids)
    return torch.from_numpy(np.where(m, np.float32(factor), np.float32(1.0)))[:, None]


def balanced_weight_map(domain: str, labels: np.ndarray, cap: float, crop_weight: float = 0.0,
                        small: tuple = (), pad: int = 2) -> torch.Tensor:
    """[B, 1, H, W] region-balanced pixel weights (issue 38): a pixel of region k weighs
    1 / (K * area_k) (K regions, area as a share of the image), capped at ``cap`` and at least 1/cap,
    so every region counts about the same in the loss whatever its size; ``crop_weight`` is added
    inside the bounding box (grown by ``pad`` px) of each of the ``small`` regions: the eye and
    mouth crops, whose surroundings (lids, lips) are what the balanced weight alone leaves soft."""
    names = region_names(domain)
    b, h, w = labels.shape
    k = len(names)
    out = np.ones((b, h, w), np.float32)
    for i in range(b):
        area = np.bincount(labels[i].ravel(), minlength=k)[:k] / float(h * w)
        per = np.clip(1.0 / (k * np.maximum(area, 1e-6)), 1.0 / cap, cap).astype(np.float32)
        out[i] = per[labels[i]]
        for r in small:
            ys, xs = np.nonzero(labels[i] == names.index(r))
            if len(ys):
                out[i, max(ys.min() - pad, 0):ys.max() + pad + 1, max(xs.min() - pad, 0):xs.max() + pad + 1] += crop_weight
    return torch.from_numpy(out)[:, None]


def pixel_weights(recipe, labels: np.ndarray, small: tuple) -> torch.Tensor | None:
    """The reconstruction weights a recipe asks for: region-balanced (``balance_cap`` > 0) or the
    older small-regions factor (``region_weight``)."""
    if recipe.balance_cap > 0:
        return balanced_weight_map(recipe.domain, labels, recipe.balance_cap, recipe.crop_weight, small)
    return region_weight_map(recipe.domain, labels, small, recipe.region_weight)


def synth_w(G: Generator, w: torch.Tensor) -> torch.Tensor:
    return G.synthesis(G.styles(w), noise_mode="const")


def load_seg_critic(domain: str, path: str | Path, device) -> nn.Module:
    """A frozen segmentation network (the oracle's architecture, trained on renders with another seed
    and data stream) whose cross-entropy against the renderer's labels is the semantic loss.

    The shipped oracle itself is refused: it is the independent judge of generated images (issue 3),
    and a generator trained against it would be judged by its own teacher."""
    import hashlib

    from sfeditor.toy.oracle import default_path, load_oracle

    path = Path(path)
    judge = default_path(domain)
    if judge.is_file() and path.is_file() and \
            hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(judge.read_bytes()).digest():
        raise ValueError(f"{path} is the shipped region oracle, the judge of generated images; train a "
                         f"separate critic: sfeditor-train oracle --recipe oracle-critic-{domain} --out critic.pt")
    critic = load_oracle(domain, path=path).to(device).eval()
    for p in critic.parameters():
        p.requires_grad_(False)
    return critic


def seg_loss(critic: nn.Module, image: torch.Tensor, labels: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel cross-entropy of the critic's segmentation of ``image`` against the renderer's ``labels``
    ([B, H, W] int64), optionally re-weighted per pixel like the reconstruction loss."""
    ce = F.cross_entropy(critic(image), labels, reduction="none")
    return _wmean(ce[:, None], weight)


def critic_feature_loss(critic: nn.Module, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Perceptual loss with the segmentation critic as the feature network (LPIPS's recipe without
    its learnt weights): per level, each pixel's feature vector unit-normalised over channels, the
    mean absolute difference between ``image``'s and ``target``'s; summed over the critic's four
    encoder levels.  It asks for the edges and shapes the critic sees, not the mean colour."""
    with torch.no_grad():
        ref = critic.features(target)
    loss = image.new_zeros(())
    for a, b in zip(critic.features(image), ref):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-6)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-6)
        loss = loss + (a - b).abs().sum(1).mean()
    return loss


def swap_channel_groups(layout, n_groups: int) -> torch.Tensor:
    """[|S|] group id of every style channel: channel c of each layer belongs to group c mod n.

    The region-swap loss gives each group one job: group 0 the pose ("global"), group k the k-th
    region.  Real StyleGAN2 S spaces hold such region-local channels (StyleSpace; the paper's
    Sec. 4.2 relies on them); an autoencoder-trained toy generator does not grow them by itself
    (``bench/locality_bound.py``: 0 channels owned by eyes or mouth), so the loss asks for them."""
    return torch.cat([torch.arange(d) % n_groups for d in layout.dims])


def changed_pixels(y: torch.Tensor, x: torch.Tensor, tol: float = 0.02) -> torch.Tensor:
    """[B, 1, H, W] float mask of the pixels where a swap's target ``y`` differs from A's own render
    ``x`` (both in [-1, 1]), grown by one pixel: the pixels the swapped group must change."""
    diff = (y - x).abs().amax(1, keepdim=True) > tol
    return F.max_pool2d(diff.float(), 3, stride=1, padding=1)


def region_swap_loss(G: Generator, E: nn.Module, domain: str, step: int, seeds_a: np.ndarray,
                     w_a: torch.Tensor, groups: torch.Tensor, amp, grad_weight: float, small: tuple,
                     region_weight: float, critic=None, seg_weight: float = 0.0,
                     seed: int = 0, rendered: dict | None = None, x_a: torch.Tensor | None = None,
                     focus: float = 0.0, rec_a: torch.Tensor | None = None,
                     anchor: bool = True, blocks: torch.Tensor | None = None,
                     weights=None, w_b: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Region-swap reconstruction: A's style code with one group's channels taken from B's must
    synthesise the renderer's A-with-B's-region image (or B's pose: group 0;
    ``sfeditor.toy.render_swap``).  ``w_a`` are the encoder codes of the renders of ``seeds_a`` (the
    autoencoder batch, reused); B is rendered and encoded here (or taken from ``rendered``, see
    :func:`swap_batch`).  ``focus`` > 0 (needs ``x_a``, A's renders) multiplies the loss weight of
    the pixels the swap changes by 1 + focus, so a swap of a small region (eyes: ~2 % of the image)
    is not drowned by the pixels that stay.  ``rec_a`` (A's reconstruction, detached; needs ``x_a``)
    anchors the pixels the swap leaves alone to what the model draws for A rather than to the
    render: their loss then measures only what the swapped group leaks outside its region (the
    generator-side counterpart of the localization loss, Eq. 5), not A's reconstruction error;
    ``anchor=False`` keeps the render as the target there.  ``blocks`` ([n_groups, style_dim], a
    factorised code: :mod:`trainer.generator_blocks`) swaps block k of w instead of S group k, so
    the swapped code is a real code; ``weights(labels)`` replaces the small-regions pixel weights;
    ``w_b`` gives B's codes (a parameter code's) instead of encoding B's renders.
    Returns (loss, PSNR of the swaps against the renderer's truth)."""
    dev = groups.device
    n = len(seeds_a)
    r = rendered if rendered is not None else swap_batch(domain, step, seeds_a, G.config.size, seed)
    gi, lab = r["gi"], r["lab"]
    xb, y = from_uint8(r["xb"]).to(dev), from_uint8(r["y"]).to(dev)
    with amp():
        if w_b is None:
            w_b = E(xb)
        if blocks is not None:
            out = synth_w(G, swap_blocks(w_a, w_b, blocks, gi)).float()
        else:
            take = (groups[None, :] == torch.as_tensor(gi, device=dev)[:, None]).float()
            s = G.styles(torch.cat([w_a, w_b])).flat().float()
            s_mix = StyleCode.from_flat(G, take * s[n:] + (1 - take) * s[:n])
            out = G.synthesis(s_mix, noise_mode="const").float()
    wmap = weights(lab) if weights is not None else region_weight_map(domain, lab, small, region_weight)
    wmap = None if wmap is None else wmap.to(dev)
    if (focus > 0 or rec_a is not None) and x_a is None:
        raise ValueError("region_swap_loss: focus and rec_a need x_a (A's renders)")
    changed = changed_pixels(y, x_a.to(dev)) if x_a is not None else None
    if focus > 0:
        f = 1 + focus * changed
        wmap = f if wmap is None else wmap * f
    anchored = rec_a is not None and anchor
    target = changed * y + (1 - changed) * rec_a.detach().to(dev) if anchored else y
    loss = recon_loss(out, target, grad_weight, wmap)
    if critic is not None and seg_weight > 0:
        loss = loss + seg_weight * seg_loss(critic, out, torch.from_numpy(lab).long().to(dev), wmap)
    with torch.no_grad():
        p = float(psnr(out, y).mean())
    return loss, p


class ParamProbe(nn.Module):
    """Linear read-outs of the renderer's parameters from the blocks of a factorised w (generator v5).

    Measured on v4.2 and on a v5 run without it: the mean colour of the eyes (mouth) is predicted from
    the encoder's w with R² 0.09-0.15 (0.05-0.08), skin and hair with 0.98: the autoencoder's code
    does not hold the small regions, so no generator design can draw them from it.  This probe asks
    block k of w to hold region k's parameters (``sfeditor.toy.param_group``; the global block the
    pose), linearly: a standardised-MSE loss through one linear layer per group.  Training only."""

    def __init__(self, domain: str, blocks: torch.Tensor, groups: tuple[str, ...], n_stats: int = 2048):
        super().__init__()
        from sfeditor.toy import param_group, render

        from .generator_data import HELDOUT_SEED_OFFSET

        _, _, prm = render(domain, HELDOUT_SEED_OFFSET + 900_000 + np.arange(n_stats), size=16, return_params=True)
        self.names = sorted(prm)
        vals = np.stack([prm[k] for k in self.names], 1).astype(np.float32)
        self.register_buffer("mean", torch.from_numpy(vals.mean(0)))
        self.register_buffer("std", torch.from_numpy(vals.std(0) + 1e-3))
        self.groups = groups
        self.index = {g: [i for i, k in enumerate(self.names) if param_group(domain, k) == g] for g in groups}
        self.register_buffer("blocks", blocks.float().clone())
        self.heads = nn.ModuleList([nn.Linear(int(blocks[i].sum()), max(1, len(self.index[g])))
                                    for i, g in enumerate(groups)])

    def loss(self, w: torch.Tensor, params: dict) -> torch.Tensor:
        """Mean standardised squared error of every parameter read from its group's block of ``w``.

        The renderer samples some parameters only for some batches (a dot pattern's frequency when a
        background has dots); a parameter missing from ``params`` is left out of the mean."""
        present = torch.tensor([k in params for k in self.names], device=w.device)
        vals = np.stack([np.asarray(params[k], np.float32) if k in params else np.zeros(len(w), np.float32)
                         for k in self.names], 1)
        z = (torch.from_numpy(vals).to(w.device) - self.mean) / self.std
        total, count = w.new_zeros(()), 0
        for i, g in enumerate(self.groups):
            idx = self.index[g]
            if not idx:
                continue
            keep = present[idx].float()
            pred = self.heads[i](w[:, self.blocks[i].bool()])
            total = total + ((pred - z[:, idx]).pow(2) * keep).sum()
            count += int(keep.sum()) * len(w)
        return total / max(count, 1)


def gaussian_mapping_target(z: torch.Tensor, mu: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """w = mu + L z' with z' the PixelNorm-ed z the mapping network sees: a Gaussian with the codes'
    mean and covariance."""
    zn = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    return mu + zn @ L.T


def silence_specs(G: Generator, groups: tuple[str, ...], group_shares: dict, isolated,
                  domain: str, fine_from: int = 0) -> list[tuple[int, torch.Tensor, int]]:
    """(conv index, channel mask [C], region label) for every conv layer output that has channels of
    an isolated group: what :func:`silence_loss` reads.  Outputs of maps smaller than ``fine_from`` px
    are left out (their channels do not read the group's block: ``affine_masks(fine_from=...)``)."""
    ids = layer_groups(G, groups, group_shares)
    n_conv, names = len(G.conv_layers), region_names(domain)
    specs = []
    res = G.layout.conv_res[1:] + (G.size,)          # the map each conv writes (the next layer's input)
    for j in range(n_conv):
        out_ids = ids[j + 1] if j + 1 < n_conv else ids[n_conv + len(G.rgb_layers) - 1]
        if res[j] < fine_from:
            continue
        for g in isolated:
            sel = out_ids == groups.index(g)
            if bool(sel.any()):
                specs.append((j, sel, names.index(g)))
    return specs


def region_cells(region: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inside, outside) cells of a ``size`` px map for a region mask [B, H, W]: inside = the cells
    holding any of its pixels, outside = the cells beyond one cell of dilation of those ([B, 1, h, w])."""
    inside = F.adaptive_max_pool2d(region.float()[:, None], size)
    return inside, 1 - F.max_pool2d(inside, 3, stride=1, padding=1)


def silence_loss(features: list[torch.Tensor], labels: torch.Tensor, specs, from_res: int = 16,
                 relative: bool = False) -> torch.Tensor:
    """Mean |activation| of an isolated group's channels outside its region (generator v5 try 5).

    ``features``: every conv layer's output of this step ([B, C, h, w]); ``labels`` [B, H, W], the
    renderer's.  Outside = the cells of the map with none of the region's pixels, after a one-cell
    dilation; maps coarser than ``from_res`` have no inside (a 4 or 8 px map cannot draw a region of
    2 % of the image, so the group's channels there must stay silent).

    Why (``experiments/group_leak.py`` on try 4): the eyes' channels were half as active outside the
    eyes as inside, and their code modulates them there too (StyleGAN2 Eq. 1-3), so a new eyes code
    changed every pixel a little; a share of 0.85 needs that change below ~1/250 of the inside's.  A
    channel that is zero outside its region cannot carry its code there, whatever the weights.

    ``relative``: each layer's term is divided by the group's mean |activation| inside its region (the
    cells holding region pixels; not differentiated), so scaling a group down does not lower it: with the
    plain term, try 6 first shrank the eyes channels inside and out alike (inside |x| 0.19 -> 0.07), which
    the next layer's demodulation and the toRGB weights undo.  Layers with no inside cell in the batch
    keep the plain term."""
    total, n = features[0].new_zeros(()), 0
    for j, sel, k in specs:
        x = features[j][:, sel.to(features[j].device)]
        h = x.shape[-1]
        inside = None
        if h < from_res:
            outside = torch.ones_like(x[:, :1])
        else:
            inside, outside = region_cells(labels == k, h)
        a = x.float().abs()
        term = (a * outside).sum() / (outside.sum() * x.shape[1]).clamp_min(1)
        if relative and inside is not None and bool(inside.sum() > 0):
            scale = ((a * inside).sum() / (inside.sum() * x.shape[1])).detach().clamp_min(1e-3)
            term = term / scale
        total = total + term
        n += 1
    return total / max(n, 1)
