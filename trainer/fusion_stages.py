"""The three FusionNet training stages of StyleFusion (paper Sec. 4.4, "Multi-Step Training").

One function per concept:

* :func:`node_regions` - the node's two regions R1, R2 (leaf sets of its children, ``region_of``);
* :func:`sample_codes` - z1, z2, z_align, z_rnd -> w (domain truncation, A.6) -> s1, s2, s_align, s_rnd;
* :func:`prepare_targets` - what the losses compare against, computed without gradients:
  the fusion weights w_R1, w_R2 (Eq. 8 from M, Eq. 1, of the images of s1 and s2) and,
  for stage 1, the soft masks of I_align;
* :func:`stage1_align_loss` - LB_align only (FusionNet without LB_fuse):
  L_mask (Eq. 3) on the images of s'1 and s'2, L_alignReg (Eq. 6), L_fusion (Eq. 7) on s'1, s'2;
* :func:`stage2_fuse_loss` - LB_fuse only (LB_align frozen): L_fusion of the fused
  result against the intermediate codes s'1, s'2;
* :func:`stage3_joint_loss` - both blenders: L_local (Eq. 4-5), L_alignReg, L_fusion;
* :func:`set_trainable` - freezes everything the stage does not train.

Hierarchy semantics (Sec. 4.5): the FusionNet of node N fuses ``s1`` (whose image
provides region R1 = the leaves under N's first child), ``s2`` (R2 = the leaves
under the second child) and N's own global code ``s_align``, with freshly sampled
codes for its two sub-regions.  The image the mask and localization losses look at
is the image the whole tree makes with N's output in N's slot and its trained
ancestors fixed in the loop (``NodeContext.chain``, :mod:`trainer.fusion_parents`),
or N's own output ``G(FN_N(s1, s2, s_align))`` for the root and for recipes that
set ``parent_in_loop`` false (the shipped v4.2 hierarchies were trained that way).

Masks: the mask loss needs differentiable masks (A.5): soft masks of the region
model (soft-min over centroid distances, summed over each region's clusters) at
the DeepPixel resolution, for both sides of Eq. 3 (so an image aligned with
I_align gives exactly 0).  The localization loss uses the *binary* masks of
I_result that Eq. 5 names (hard nearest-centroid masks, no gradient: they only
select where a change is measured).  M (Eq. 1) uses hard masks too.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from sfeditor.regions.correlation import correlation
from trainer.fusion_config import StageConfig
from sfeditor.fusion.fusion_net import FusionNet
from trainer.losses import align_reg_loss, fusion_loss, localization_loss, mask_loss, perturb, total_loss
from sfeditor.fusion.latent_blender import BlendCoefficients
from sfeditor.regions.tree import find_node, region_of
from sfeditor.model.style_code import StyleCode

from .fusion_masks import RegionScorer

Features = dict


# ------------------------------------------------------------------ the node
@dataclass(frozen=True)
class NodeRegions:
    """An internal node and the leaf sets of its two children (R1 = child 1, R2 = child 2)."""

    node: str
    child1: str
    child2: str
    leaves1: tuple[str, ...]
    leaves2: tuple[str, ...]


def node_regions(tree, node: str) -> NodeRegions:
    """R1, R2 of ``node`` in a regions tree (:class:`sfeditor.regions.tree.RegionNode`)."""
    try:
        n = find_node(tree, node)
    except KeyError as e:      # a mistyped --node: say which nodes exist
        raise ValueError(e.args[0]) from None
    if n.is_leaf:
        raise ValueError(f"{node!r} is a leaf region; FusionNets are trained for internal nodes only")
    c1, c2 = n.children
    return NodeRegions(node, c1.name, c2.name, tuple(sorted(region_of(tree, c1.name))),
                       tuple(sorted(region_of(tree, c2.name))))


class NodeContext:
    """The frozen generator and region model seen through one node's two regions.

    ``bf16`` runs the generator passes under ``torch.autocast(..., bfloat16)``;
    masks, M and all losses are computed in float32.  ``checkpoint`` recomputes the generator's
    layers in the backward pass instead of keeping their activations (``Generator.synthesis``), and
    stage 3's backward pass runs one code's images at a time (:meth:`synth_images`).
    """

    def __init__(self, G, region_model, regions: NodeRegions, truncation: float = 1.0, bf16: bool = False,
                 temperature: float | None = None, noise_mode: str = "const", fast_masks: bool = True,
                 chain=None, local_reference: int | None = None, checkpoint: bool = False):
        self.G, self.model, self.regions = G, region_model, regions
        self.checkpoint = bool(checkpoint)
        self.chain = chain                        # frozen ancestors (trainer.fusion_parents.ParentChain) or None
        self.local_reference = local_reference    # Eq. 5 normalised to this image size (None: literal)
        self.truncation, self.bf16, self.temperature, self.noise_mode = float(truncation), bool(bf16), temperature, \
            noise_mode
        self.names = [regions.child1, regions.child2]     # region names the region model understands
        # the same masks as the region model, without the [B, C_conv, 64, 64] DeepPixel tensor (fusion_masks.py)
        self.scorer = RegionScorer(region_model, self.names) if fast_masks else None

    @property
    def device(self) -> torch.device:
        return self.G.device

    def amp(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def lift(self, s: StyleCode, codes: "CodeBatch") -> StyleCode:
        """The code the whole tree makes with ``s`` in this node's slot (``s`` itself without a chain)."""
        if self.chain is None:
            return s
        return self.chain.lift(s, codes.parents)

    def synth(self, s: StyleCode) -> tuple[torch.Tensor, Features]:
        """Images ``[B, 3, H, W]`` and synthesis features, both float32 (gradients flow to ``s``)."""
        with self.amp():
            img, feats = self.G.synthesis(s, self.noise_mode, return_features=True, checkpoint=self.checkpoint)
        return img.float(), {k: [f.float() for f in v] for k, v in feats.items()}

    def synth_images(self, s: StyleCode, parts: int) -> tuple[torch.Tensor, Features]:
        """Like :meth:`synth`, for a loss that reads only the images (the features carry no
        gradient).  With ``checkpoint`` the backward pass runs ``parts`` images at a time
        (:func:`trainer.synthesis_by_parts.synthesis_by_parts`): a stage-3 step at 1024 px then keeps
        one image's activations instead of three."""
        if not (self.checkpoint and torch.is_grad_enabled() and self.noise_mode == "const"):
            img, feats = self.synth(s)
            return img, {k: [f.detach() for f in v] for k, v in feats.items()}
        from .synthesis_by_parts import synthesis_by_parts

        return synthesis_by_parts(self.G, s, chunk=parts, amp=self.amp, checkpoint=True)

    def soft_masks(self, feats: Features) -> torch.Tensor:
        """``[B, 2, h, w]`` differentiable masks of R1, R2 at the DeepPixel size (A.5)."""
        if self.scorer is not None:
            return self.scorer.soft_masks(feats, self.temperature)
        return self.model.soft_masks(regions=self.names, temperature=self.temperature, size=self.model.size,
                                     features=feats)

    def hard_masks(self, feats: Features, size: int | None = None) -> torch.Tensor:
        """``[B, 2, H, W]`` binary masks of R1, R2 (image size by default)."""
        if self.scorer is not None:
            return self.scorer.hard_masks(feats, size=size if size is not None else self.G.size)
        return self.model.hard_masks(regions=self.names, size=size, features=feats)

    def fusion_weights(self, feats: Features) -> torch.Tensor:
        """``[B, 2, |S|]``: Eq. 8, ``w_R(c) = 2 max(M[R, c], 0.5) - 1`` with M (Eq. 1) of each image."""
        U = self.hard_masks(feats, size=self.model.size)
        M = correlation(feats, U)
        return 2 * torch.clamp(M, min=0.5) - 1


def slice_features(feats: Features, index) -> Features:
    return {k: [f[index] for f in v] for k, v in feats.items()}


# ------------------------------------------------------------------ sampling
@dataclass
class CodeBatch:
    """The four codes of one training step (Sec. 4.4)."""

    s1: StyleCode
    s2: StyleCode
    s_align: StyleCode
    s_rnd: StyleCode
    parents: object = None      # the ancestors' context codes (trainer.fusion_parents.ParentContext)

    def __len__(self) -> int:
        return len(self.s1)


@torch.no_grad()
def sample_codes(G, n: int, truncation: float, generator: torch.Generator | None = None) -> CodeBatch:
    """z1, z2, z_align, z_rnd ~ N(0, I) (drawn on the CPU from ``generator``), mapped with truncation psi."""
    z = torch.randn(4 * n, G.style_dim, generator=generator).to(G.device)
    s = G.styles(G.mapping(z, truncation))
    return CodeBatch(s[0:n], s[n:2 * n], s[2 * n:3 * n], s[3 * n:4 * n])


@dataclass
class Targets:
    """No-gradient quantities of a step: fusion weights (Eq. 8) and the masks of I_align (stage 1)."""

    w1: torch.Tensor                       # [B, |S|] weights of R1 from the image of s1
    w2: torch.Tensor                       # [B, |S|] weights of R2 from the image of s2
    m_align: torch.Tensor | None = None    # [B, 2, h, w] soft masks of R1, R2 in I_align


@torch.no_grad()
def prepare_targets(ctx: NodeContext, codes: CodeBatch, align_masks: bool = False) -> Targets:
    """A synthesis pass over s1, s2 (and one over the tree's image of s_align when ``align_masks``)."""
    b = len(codes)
    lifted = ctx.chain is not None and len(ctx.chain) > 0
    parts = [codes.s1, codes.s2] + ([codes.s_align] if align_masks and not lifted else [])
    _, feats = ctx.synth(StyleCode.cat(parts))
    w = ctx.fusion_weights(slice_features(feats, slice(0, 2 * b)))   # Eq. 8 from the inputs' own images
    m_align = None
    if align_masks:                          # I_align: the tree's image with s_align in the node's slot
        fa = ctx.synth(ctx.lift(codes.s_align, codes))[1] if lifted else slice_features(feats, slice(2 * b, 3 * b))
        m_align = ctx.soft_masks(fa)
    return Targets(w[:b, 0], w[b:, 1], m_align)


# -------------------------------------------------------------------- stages
@dataclass
class StageLoss:
    """Eq. 9 for one step: ``total`` (with graph), the raw terms and the weighted parts (floats, for the log)."""

    total: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


def _q_slice(q: BlendCoefficients, index) -> BlendCoefficients:
    return BlendCoefficients([t if t is None else t[index] for t in q.layers], q.layout)


def _q_means(out) -> dict[str, float]:
    """Mean blend coefficients of a FusionNet call, for the log (``sfeditor.fusion.blend_stats`` explains them):
    ``q_align`` = share of the global code in s'1, s'2; ``q_fuse`` = share of s'2 in the result.
    A q_align that falls to 0 means the alignment was switched off; q_fuse at 0 or 1, a collapsed fusion."""
    log = {}
    with torch.no_grad():
        if out.q_align is not None:
            log["q_align"] = float(torch.cat([out.q_align[0].flat(), out.q_align[1].flat()]).float().mean())
        if out.q_fuse is not None:
            log["q_fuse"] = float(out.q_fuse.flat().float().mean())
    return log


def _finish(terms: dict, lambdas: dict, out=None) -> StageLoss:
    total, parts = total_loss(terms, lambdas, return_parts=True)
    log: dict[str, float] = {} if out is None else _q_means(out)
    for name, t in terms.items():
        if isinstance(t, (tuple, list)):
            log[f"{name}_r1"], log[f"{name}_r2"] = float(t[0].detach()), float(t[1].detach())
            log[name] = log[f"{name}_r1"] + log[f"{name}_r2"]
        else:
            log[name] = float(t.detach())
    for name, v in parts.items():
        log[f"weighted_{name}"] = float(v.detach())
    log["loss"] = float(total.detach())
    return StageLoss(total, log)


def stage1_align_loss(ctx: NodeContext, net: FusionNet, codes: CodeBatch, targets: Targets,
                      cfg: StageConfig, align: bool = True) -> StageLoss:
    """Stage 1: ``L_mask + L_alignReg + L_fusion`` on the intermediate codes s'1, s'2 (LB_fuse unused).

    L_mask follows Eq. 3 for each intermediate image I'_i = G(s'_i):
    ``(|m1(I'_i) - m1(I_align)| + |m2(I'_i) - m2(I_align)|) / |m1(I_align) + m2(I_align)|``,
    summed over i = 1, 2 (both images must take the layout of I_align).
    L_fusion: ``|w_R1 (s'1 - s1)| + |w_R2 (s'2 - s2)|`` (s'1 keeps R1 of s1, s'2 keeps R2 of s2).
    """
    if not align:
        raise ValueError("stage 1 trains LB_align: it cannot run with the alignment disabled")
    if targets.m_align is None:
        raise ValueError("stage 1 needs the masks of I_align (prepare_targets(..., align_masks=True))")
    b = len(codes)
    out = net(codes.s1, codes.s2, codes.s_align, align=True, fuse=False)
    s1p, s2p = out.s1_aligned, out.s2_aligned
    _, feats = ctx.synth(ctx.lift(StyleCode.cat([s1p, s2p]), codes))
    m = ctx.soft_masks(feats)                                                  # [2B, 2, h, w]
    ma = targets.m_align
    l_mask = (mask_loss(m[:b, 0], m[:b, 1], ma[:, 0], ma[:, 1])
              + mask_loss(m[b:, 0], m[b:, 1], ma[:, 0], ma[:, 1]))
    l_reg = align_reg_loss(*out.q_align)
    f1 = fusion_loss(s1p, codes.s1, codes.s2, targets.w1, targets.w2, per_region=True)[0]
    f2 = fusion_loss(s2p, codes.s1, codes.s2, targets.w1, targets.w2, per_region=True)[1]
    return _finish({"mask": l_mask, "align_reg": l_reg, "fusion": (f1, f2)}, cfg.lambdas, out)


def stage2_fuse_loss(ctx: NodeContext, net: FusionNet, codes: CodeBatch, targets: Targets,
                     cfg: StageConfig, align: bool = True) -> StageLoss:
    """Stage 2: ``L_fusion`` of s_result = LB_fuse(s'1, s'2) against the intermediate codes s'1, s'2.

    ``|w_R1 (s_result - s'1)| + |w_R2 (s_result - s'2)|``; LB_align is frozen, so s'1, s'2 are
    fixed targets (with the alignment disabled, "No Global", s'i = si).
    """
    out = net(codes.s1, codes.s2, codes.s_align if align else None, align=align, fuse=True)
    s1p, s2p = out.s1_aligned.detach(), out.s2_aligned.detach()
    f = fusion_loss(out.result, s1p, s2p, targets.w1, targets.w2, per_region=True)
    return _finish({"fusion": f}, cfg.lambdas, out)


def stage3_joint_loss(ctx: NodeContext, net: FusionNet, codes: CodeBatch, targets: Targets,
                      cfg: StageConfig, align: bool = True) -> StageLoss:
    """Stage 3: ``L_local + L_alignReg + L_fusion`` with both blenders.

    One FusionNet call on the stacked triples (s1, s2), (s~1, s2), (s1, s~2) (Eq. 4,
    ``s~i = si + eps (s_rnd - si)``) and one synthesis pass give I_result, I~1, I~2;
    L_local (Eq. 5) measures them inside the binary masks m1, m2 of I_result.
    L_alignReg and L_fusion (Eq. 7 against s1, s2; against s'1, s'2 without gradient when
    ``cfg.fusion_target == "aligned"``) use the unperturbed triple.
    """
    b = len(codes)
    s1t, s2t = perturb(codes.s1, codes.s_rnd, cfg.epsilon), perturb(codes.s2, codes.s_rnd, cfg.epsilon)
    a = StyleCode.cat([codes.s_align] * 3) if align else None
    out = net(StyleCode.cat([codes.s1, s1t, codes.s1]), StyleCode.cat([codes.s2, codes.s2, s2t]), a,
              align=align, fuse=True)
    img, feats = ctx.synth_images(ctx.lift(out.result, codes), parts=b)
    m = ctx.hard_masks(slice_features(feats, slice(0, b)), size=img.shape[-1])   # [B, 2, H, W] of I_result
    l_local = localization_loss(img[:b], img[b:2 * b], img[2 * b:], m[:, 0], m[:, 1], per_region=True,
                                reference_size=ctx.local_reference)
    terms: dict = {"local": l_local}
    if align:
        terms["align_reg"] = align_reg_loss(*(_q_slice(q, slice(0, b)) for q in out.q_align))
    if cfg.fusion_target == "aligned":      # stage 2's targets s'1, s'2 (fixed: they do not pull LB_align back)
        t1, t2 = out.s1_aligned[0:b].detach(), out.s2_aligned[0:b].detach()
    else:                                   # Eq. 7 as written: the inputs s1, s2
        t1, t2 = codes.s1, codes.s2
    terms["fusion"] = fusion_loss(out.result[0:b], t1, t2, targets.w1, targets.w2, per_region=True)
    return _finish(terms, cfg.lambdas, out)


LossFn = Callable[..., StageLoss]
STAGE_LOSSES: dict[int, LossFn] = {1: stage1_align_loss, 2: stage2_fuse_loss, 3: stage3_joint_loss}
STAGE_NAMES = {1: "align", 2: "fuse", 3: "joint"}


def stage_needs_align_masks(stage: int) -> bool:
    return stage == 1


def stage_loss(stage: int, ctx: NodeContext, net: FusionNet, codes: CodeBatch, cfg: StageConfig,
               align: bool = True, targets: Targets | None = None) -> StageLoss:
    """Targets (if not given) and the stage's loss for one batch of codes."""
    if targets is None:
        targets = prepare_targets(ctx, codes, align_masks=stage_needs_align_masks(stage))
    return STAGE_LOSSES[stage](ctx, net, codes, targets, cfg, align=align)


# ----------------------------------------------------------------- freezing
def trained_blenders(cfg: StageConfig, align: bool = True) -> tuple[str, ...]:
    """Which blenders the stage updates (``"align"`` = LB_align, ``"fuse"`` = LB_fuse)."""
    return tuple(x for x in cfg.train if x != "align" or align)


def set_trainable(net: FusionNet, blenders: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """``requires_grad`` only for the given blenders; returns their parameters (optimizer order)."""
    for p in net.lb_align.parameters():
        p.requires_grad_("align" in blenders)
    for p in net.lb_fuse.parameters():
        p.requires_grad_("fuse" in blenders)
    return [p for p in net.parameters() if p.requires_grad]


__all__ = ["NodeRegions", "node_regions", "NodeContext", "CodeBatch", "sample_codes", "Targets", "prepare_targets",
           "StageLoss", "stage1_align_loss", "stage2_fuse_loss", "stage3_joint_loss", "STAGE_LOSSES", "stage_loss",
           "set_trainable", "trained_blenders", "slice_features"]
