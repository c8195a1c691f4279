"""Train StyleFusion FusionNets (``sfeditor-train fusion`` / ``sfeditor-train hierarchy``).

:func:`train_node` trains the FusionNet of one internal node of the regions tree
through the multi-step schedule of Sec. 4.4 (the stages live in
:mod:`trainer.fusion_stages`) with a configuration of Appendix A.2 (Regular /
Short / Favored, ``steps_scale`` for shorter trials); :func:`train_hierarchy`
trains every internal node, parents first (Sec. 4.5), and collects the nets
into one hierarchy file (:meth:`sfeditor.fusion.hierarchy.FusionHierarchy.save`).

Hierarchical training - what is trained with what
    Sec. 4.5 trains the tree top-down and keeps a parent fixed while its
    children train.  Read literally (recipe ``parent_in_loop``, the default),
    a child's image losses (Eq. 3 in stage 1, Eq. 5 in stage 3) are taken on
    the image the whole tree makes: the child's output code fills its slot,
    fresh random codes fill the other branches, each ancestor's trained net
    (frozen, differentiable) fuses them with its own global code
    (:mod:`trainer.fusion_parents`); Eq. 3's target I_align is the tree's
    image with the child's s_align in its slot.  L_fusion (Eq. 7) and Eq. 8's
    weights stay on the child's own codes.  ``parent_in_loop`` false trains
    every node on its own output ``G(FN(s1, s2, s_align))`` (how the shipped
    v4.2 toy hierarchies were trained).  Parents are trained first, nets
    already trained are never touched again, and each node has its own
    resumable run folder, so a node can be retrained alone once its
    ancestors are in the hierarchy file.

Eq. 5's normalisation (recipe ``local_norm``): ``"resolution"`` (default)
scores an edit as if drawn at 1024 px, so A.2's lambda_local means the same
on a 64 px toy as on FFHQ (literally, the same per-pixel change scores 16x
higher at 64 px); ``"literal"`` is Eq. 5 as written (:func:`trainer.losses.localization_loss`).

Optimisation: Adam (default lr 0.5: the paper gives none; the blenders' EqualLinear
layers have lr_mul 0.01, so the effective step is 0.01 x lr, about a plain Adam
at 2e-4 on the hidden layers), a fresh optimizer per stage over exactly the
blenders that stage trains (the others have ``requires_grad`` off), no clipping;
a step whose gradient is not finite is skipped (logged as ``skipped``).

Run folder (one per node): ``options.json``, ``stats.jsonl`` (every loss term,
raw and weighted, every step), ``samples/stage{k}-{step}.png`` (rows: s1, s2,
s_align, s'1, s'2, result), atomic ``checkpoint.pt`` (weights, optimizer,
stage, step, RNG states of every rank), and when done ``net.pt`` (the
FusionNet, loadable with :func:`sfeditor.fusion.fusion_net.load_fusion_net`).  A run
that is killed or cancelled resumes exactly: the weights after the resumed run
equal those of an uninterrupted one.

Multi-GPU: under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1) every
process trains on its own batches (``batch`` per process, different sampling
seeds), gradients are averaged with one all-reduce per step (a flat buffer;
the trained blenders change from stage to stage and stage 3 runs the net on a
stacked batch, so the plain all-reduce is simpler than re-wrapping DDP per
stage and identical in effect), loss terms and the cancel flag are averaged
too, and only rank 0 writes.  NCCL on CUDA, gloo on CPU.  Exact resume needs the
same number of processes.  Launch with ``--`` before the module, otherwise
torchrun takes ``--node`` for its own ``--node-rank``::

    torchrun --nproc_per_node=4 -m -- trainer.cli fusion --domain toy-faces --node all
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from sfeditor.model.device import choose_bf16, pick_device as _core_pick_device

from sfeditor.atomic import atomic_torch_save
from trainer.fusion_config import StageConfig, TrainingConfig, favored, node_config, regular, short
from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig
from sfeditor.fusion.hierarchy import FusionHierarchy, load_hierarchy
from sfeditor.regions.tree import RegionNode
from sfeditor.images.imageio import make_grid, save_png, to_uint8
from sfeditor.regions.tree import find_node, internal_nodes
from sfeditor.model.style_code import StyleCode


from .common import CancelToken, Cancelled, Progress, RunDir, load_checked_state, run_cancellable
from .fusion_stages import (NodeContext, node_regions, sample_codes, set_trainable, stage_loss,
                            trained_blenders)

RUN_FORMAT = "sfeditor-fusion-run"
RUN_VERSION = 1
CONFIGS = ("regular", "short", "favored")
ABLATIONS = ("full", "no_global", "no_stage1", "no_stage2", "no_stage3")
LOCAL_NORMS = ("resolution", "literal")
#: the image size Eq. 5 is normalised to with local_norm "resolution" (FFHQ's, where A.2's lambdas were set)
LOCAL_REFERENCE_SIZE = 1024
#: recipe ``checkpoint`` None: activation checkpointing from this generator size on (the official config-f
#: models). Measured at batch 1 without it (bench/fullsize_chain.py): 3.6 GB at 256, 6.2 GB at 512, 11.6 GB
#: at 1024 (over issue 40's 8 GB); with it (and stage 3's backward image by image) 6.4 GB at 1024.  Toy
#: generators (64, 128 px) need little and would only run slower
CHECKPOINT_FROM = 256
#: recipe fields a resumed run must share with the checkpoint
RESUME_KEYS = ("domain", "node", "config", "favor", "ablation", "variant", "hidden", "coarse_layers", "batch", "seed",
               "lr", "stage3_target", "align_reg3", "local_scale", "local_lambdas", "local_norm", "parent_in_loop")
#: recipe fields that only stage 3 reads: a run may take its stages 1-2 from a run that differs only here
STAGE3_ONLY_KEYS = ("ablation", "stage3_target", "align_reg3", "local_scale", "local_lambdas", "local_norm")
#: recipe fields stages 1-2 depend on (what ``stage3_from`` must share with its source)
STAGE12_KEYS = tuple(k for k in RESUME_KEYS if k not in STAGE3_ONLY_KEYS) + (
    "steps_scale", "betas", "truncation", "temperature", "generator", "regions")


@dataclass
class FusionRecipe:
    """Everything one node's training depends on (saved in ``options.json``)."""

    domain: str = "toy-faces"
    node: str = "all"
    config: str = ""              # "" = the A.2 table (trainer.fusion_config.node_config); or regular/short/favored
    favor: str = ""               # favoured child for "favored" ("" = the table's, else child 1)
    steps_scale: float = 1.0
    ablation: str = "full"        # Sec. 7 variants (ABLATIONS)
    variant: str = "paper"        # FusionNet variant: "paper" | "official"
    hidden: int = 0               # MLP width; 0 = the variant's (3W paper, 5W official); smaller ships smaller
    coarse_layers: int = 5        # layers LB_align blends, per list (conv and tRGB): the official n_common
    stage3_target: str = "inputs"     # stage 3's L_fusion against s1, s2 ("inputs", Eq. 7) or s'1, s'2 ("aligned")
    align_reg3: float | None = None   # stage 3's lambda_alignReg (None = A.2's 1)
    local_scale: float = 1.0          # factor on A.2's lambda_local
    local_lambdas: dict[str, float] = field(default_factory=dict)   # child -> lambda_local, replaces A.2's
    #                                                                  (before local_scale)
    local_norm: str = "resolution"    # Eq. 5 scored as if drawn at 1024 px ("resolution") or as written ("literal")
    parent_in_loop: bool = True       # Sec. 4.5: a child's losses on the whole tree's image, ancestors fixed
    batch: int = 4                # per process
    lr: float = 0.5               # Adam; EqualLinear lr_mul 0.01 scales the effective step by 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    truncation: float | None = None     # None = the domain's (A.6: faces 0.7, cars 0.5)
    temperature: float | None = None    # soft-mask temperature; None = the regions file's
    generator: str = ""           # checkpoint path or shipped domain; "" = the domain's
    regions: str = ""             # regions file; "" = the domain's
    sample_every: int = 500
    sample_count: int = 8
    checkpoint_every: int = 100
    threads: int = 0
    device: str = "auto"
    bf16: bool = False            # bfloat16 autocast for the generator passes
    checkpoint: bool | None = None    # recompute the generator's layers in the backward pass (less memory, one
    #                                   more forward); None = on for generators of CHECKPOINT_FROM px and more

    def __post_init__(self) -> None:
        if self.config not in ("",) + CONFIGS:
            raise ValueError(f"config must be one of {CONFIGS}, got {self.config!r}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.batch < 1 or self.steps_scale <= 0 or self.lr <= 0:
            raise ValueError("batch, steps_scale and lr must be positive")
        if self.local_norm not in LOCAL_NORMS:
            raise ValueError(f"local_norm must be one of {LOCAL_NORMS}, got {self.local_norm!r}")
        if self.coarse_layers < 0:
            raise ValueError("coarse_layers must be >= 0")
        TrainingConfig().with_stage3(self.stage3_target, self.align_reg3, self.local_scale)   # validates them
        self.local_lambdas = {str(k): float(v) for k, v in dict(self.local_lambdas).items()}
        if not all(math.isfinite(v) and v >= 0 for v in self.local_lambdas.values()):
            raise ValueError("local_lambdas must be finite and >= 0")
        self.betas = tuple(float(b) for b in self.betas)


# ----------------------------------------------------------------- configs
def training_config(domain: str, tree, node: str, config: str = "", favor: str = "",
                    steps_scale: float = 1.0) -> TrainingConfig:
    """The A.2 configuration of ``node``: the paper's table unless ``config`` names a preset.

    Favored lambdas are (R1, R2) pairs in the order of ``tree``'s children.

    The table's Favored entries name a child of the paper's tree; a node of another tree that lacks
    that child (a fresh regions file of a paper domain, still ``cluster_<id>`` under ``all``) takes
    Regular, like a node the table does not list (the full-size chain test, issue 40, stopped here
    with "favor must name a child" though no favour was asked for).
    """
    nr = node_regions(tree, node)
    children = [nr.child1, nr.child2]
    if not config:
        try:
            tc = node_config(domain, node, steps_scale)
        except ValueError:
            return regular(steps_scale)
        if tc.name != "favored":
            return tc
        if not favor and tc.favored not in children:
            return regular(steps_scale)
        config, favor = "favored", favor or tc.favored or ""
    if config == "regular":
        return regular(steps_scale)
    if config == "short":
        return short(steps_scale)
    fav = favor or children[0]
    if fav not in children:
        raise ValueError(f"favor must name a child of {node!r} ({', '.join(children)}), got {fav!r}")
    return favored(children.index(fav), fav, steps_scale)


def local_pair(nr, local_lambdas: dict) -> tuple[float | None, float | None] | None:
    """``{child: lambda_local}`` as the (R1, R2) override of :meth:`TrainingConfig.with_stage3`."""
    if not local_lambdas:
        return None
    children = (nr.child1, nr.child2)
    unknown = sorted(set(local_lambdas) - set(children))
    if unknown:
        raise ValueError(f"local_lambdas names {', '.join(unknown)}: not a child of the node "
                         f"(children: {', '.join(children)})")
    return tuple(local_lambdas.get(c) for c in children)


def plan_stages(tc: TrainingConfig, ablation: str = "full") -> tuple[list[StageConfig], bool]:
    """The stages to run and whether LB_align is used (Sec. 7 ablations drop a stage or the global code)."""
    skip = {"no_global": {1}, "no_stage1": {1}, "no_stage2": {2}, "no_stage3": {3}}.get(ablation, set())
    stages = [replace(st, steps=0) if st.stage in skip else st for st in tc.stages()]
    return stages, ablation != "no_global"


def has_stage3(recipe: "FusionRecipe", tree) -> bool:
    """Whether ``recipe`` trains a stage 3 (not Short, not No Stage 3): what ``stage3_from`` needs."""
    tc = training_config(recipe.domain, tree, recipe.node, recipe.config, recipe.favor, recipe.steps_scale)
    return _runs_stage3(plan_stages(tc, recipe.ablation)[0])


def _runs_stage3(stages) -> bool:
    return any(st.stage == 3 and st.steps > 0 for st in stages)


# -------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """The core's choice (GPU when present), on this process's GPU under torchrun."""
    dev = _core_pick_device(pref)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def dist_setup(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else a single process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    dev = pick_device(device, local)
    if world <= 1 or not dist.is_available():
        return DistInfo(0, 1, dev)
    here = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        here = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev, here)


def dist_shutdown() -> None:
    """Leave the process group, if one was joined (end of a CLI command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sync_step(info: DistInfo, params: list[torch.nn.Parameter], terms: dict[str, float],
              stop: bool) -> tuple[dict[str, float], bool, bool]:
    """Average gradients, loss terms and the stop flag over the ranks (one all-reduce).

    Returns ``(terms, finite, stop)``; ``finite`` is false when any rank's gradient
    is NaN/inf, so that every rank skips the same optimizer step.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not info.distributed:
        finite = all(bool(torch.isfinite(p.grad).all()) for p in params)
        return terms, finite, stop
    import torch.distributed as dist

    keys = sorted(terms)
    grads = [p.grad.reshape(-1) for p in params]
    extra = torch.tensor([terms[k] for k in keys] + [float(stop)], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat(grads + [extra])
    dist.all_reduce(flat)
    flat /= info.world
    finite = bool(torch.isfinite(flat).all())
    off = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[off:off + n].view_as(p))
        off += n
    vals = flat[off:].tolist()
    return {k: v for k, v in zip(keys, vals[:-1])}, finite, vals[-1] > 0


def gather_states(info: DistInfo, state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's sampler state (rank order), on every rank."""
    if not info.distributed:
        return [state]
    import torch.distributed as dist

    out: list = [None] * info.world
    dist.all_gather_object(out, state)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


# ----------------------------------------------------------------- assets
def load_assets(recipe: FusionRecipe, device: torch.device, G=None, regions=None):
    """The frozen generator and the regions file (given objects win over the recipe's names)."""
    from sfeditor.model.checkpoints import load_generator
    from sfeditor.regions.regions_file import RegionsFile, load_regions

    if G is None:
        G = load_generator(recipe.generator or recipe.domain, device=device)
    G = G.to(device).eval().requires_grad_(False)
    if regions is None:
        regions = load_regions(recipe.regions or recipe.domain)
    if not isinstance(regions, RegionsFile):
        regions = load_regions(regions)
    return G, regions


def hierarchy_tree(regions):
    return RegionNode.parse(regions.tree)


def update_hierarchy_file(path: str | os.PathLike, tree, node: str, net: FusionNet, layout=None,
                          half: bool = False, generator_fingerprint: str | None = None,
                          synthesis_fingerprint: str | None = None,
                          deep_pixel_fingerprint: str | None = None) -> FusionHierarchy:
    """Put ``net`` at ``node`` of the hierarchy file at ``path`` (created when missing); atomic.

    The read-modify-write holds ``path``'s lock (:mod:`sfeditor.locks`), so node runs finishing
    together each add their net; one waiting longer than 10 minutes stops, naming the holder.
    """
    from sfeditor.locks import acquire

    path = Path(path)
    with acquire(path, f"hierarchy file {path}", timeout=600.0):
        return _update_hierarchy_file_locked(path, tree, node, net, layout, half, generator_fingerprint,
                                             synthesis_fingerprint, deep_pixel_fingerprint)


def _update_hierarchy_file_locked(path: Path, tree, node: str, net: FusionNet, layout, half: bool,
                                  generator_fingerprint, synthesis_fingerprint, deep_pixel_fingerprint):
    root = RegionNode.parse(tree)
    if path.exists():
        h = load_hierarchy(path, precision=None)      # edited and saved, not run: fold lazily
        if h.root != root:
            raise ValueError(f"{path}: holds a hierarchy for another region tree")
    else:
        h = FusionHierarchy(root, config=net.config, layout=layout)
    h.set_net(node, FusionNet(net.config))
    h.nets[node].load_state_dict(net.state_dict())
    if layout is not None:
        h.layout = layout
    if generator_fingerprint:
        h.meta["generator_fingerprint"] = generator_fingerprint
    if synthesis_fingerprint:
        h.meta["synthesis_fingerprint"] = synthesis_fingerprint
    if deep_pixel_fingerprint:
        h.meta["deep_pixel_fingerprint"] = deep_pixel_fingerprint
    h.save(path, half=half)
    return h


# ------------------------------------------------------------------ samples
@torch.no_grad()
def sample_grid(ctx: NodeContext, net: FusionNet, codes, align: bool = True, chunk: int | None = None) -> np.ndarray:
    """Rows: images of s1, s2, s_align, s'1, s'2 and the fused result.

    The ``6 x len(codes)`` images are rendered ``chunk`` at a time (default: all at once); training
    passes its batch, so the grid never needs more memory than a step. In one batch, the grid of a
    config-f 256 run with 2 samples (12 images) took the run's peak to 6.4 GB, against 3.6 GB for its
    steps at batch 1, and a 1024 grid of the default 8 samples would need tens of GB
    (tests/model/test_fullsize_chain.py, issue 40).
    """
    out = net(codes.s1, codes.s2, codes.s_align if align else None, align=align, fuse=True)
    stack = StyleCode.cat([codes.s1, codes.s2, codes.s_align, out.s1_aligned, out.s2_aligned, out.result])
    step = max(1, chunk or len(stack))
    with ctx.amp():
        img = torch.cat([ctx.G.synthesis(stack[i:i + step], ctx.noise_mode).float()
                         for i in range(0, len(stack), step)])
    grid = make_grid(to_uint8(img), cols=len(codes), scale=2)
    return np.concatenate([_banner(grid.shape[1], "rows: s1 | s2 | s_align | s'1 | s'2 | result"), grid])


def _banner(width: int, text: str, height: int = 16) -> np.ndarray:
    import cv2

    bar = np.full((height, width, 3), 24, dtype=np.uint8)
    cv2.putText(bar, text, (3, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (235, 235, 235), 1, cv2.LINE_AA)
    return bar


# -------------------------------------------------------------------- log
def truncate_log(run: RunDir, stage: int, step: int) -> None:
    """Drop log lines written after the checkpoint at (stage, step): a resumed log has no duplicates."""
    run.filter_log(lambda r: (int(r.get("stage", 0)), int(r.get("step", 0))) <= (stage, step))


# ------------------------------------------------------------------- train
def _recipe_dict(recipe: FusionRecipe) -> dict:
    d = asdict(recipe)
    d["betas"] = list(d["betas"])
    return d


def asset_fingerprints(G, regions) -> dict:
    """What a node's training depends on besides its recipe: the generator's weights (its mapping
    too: training samples codes through it) and the regions file's centroids and labels.  Stored in
    each checkpoint, so a run is never resumed on other assets (the recipe's file names may be the
    same while the files changed)."""
    import hashlib

    from sfeditor.model.identity import generator_fingerprint

    h = hashlib.sha256(np.ascontiguousarray(regions.centroids, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(regions.membership(), dtype=np.float32).tobytes())
    h.update(repr(regions.tree).encode())
    return {"generator": generator_fingerprint(G), "regions": "sha256:" + h.hexdigest()}


def train_node(recipe: FusionRecipe, out: str | os.PathLike, *, resume: bool = True,
               cancel: CancelToken | None = None, progress_callback=None, G=None, regions=None,
               hierarchy: str | os.PathLike | None = None, half: bool = False, log=print,
               progress_stream="stderr", stage3_from: str | os.PathLike | None = None,
               parents: dict | None = None) -> FusionNet:
    """Train (or resume, or just reload when finished) the FusionNet of ``recipe.node``.

    ``G`` / ``regions`` override the recipe's generator / regions names (tests, notebooks).
    ``hierarchy``: a hierarchy file to put the finished net into (rank 0).
    ``progress_callback(step, total, info)`` is called after every step (global step count);
    it may set ``cancel.requested``.  Raises :class:`Cancelled` after checkpointing on cancel.
    ``progress_stream``: where the progress bar goes (``"stderr"``, a file object, or None for none).
    ``stage3_from``: a finished No Stage 3 run of the same recipe (stage 3's settings may differ);
    a new run starts its stage 3 from there instead of repeating stages 1-2 (see :func:`stage3_start`).
    ``parents``: trained nets by node name, for ``recipe.parent_in_loop`` (Sec. 4.5); the nets in
    ``hierarchy`` (when it exists) are used too.
    """
    cancel = cancel or CancelToken()
    if progress_stream == "stderr":
        progress_stream = sys.stderr
    info = dist_setup(recipe.device)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    G, regions = load_assets(recipe, info.device, G, regions)
    bf16_warning = choose_bf16(recipe.bf16, info.device)[1] if recipe.bf16 else None
    if bf16_warning and info.is_main:
        log(f"warning: {bf16_warning}")
    from sfeditor.regions.masks import RegionModel

    nr = node_regions(regions.tree, recipe.node)
    tc = training_config(recipe.domain, regions.tree, recipe.node, recipe.config, recipe.favor, recipe.steps_scale)
    tc = tc.with_stage3(recipe.stage3_target, recipe.align_reg3, recipe.local_scale,
                        local_pair(nr, recipe.local_lambdas))
    stages, align = plan_stages(tc, recipe.ablation)
    if recipe.truncation is not None:
        truncation, why = recipe.truncation, "--truncation"
    else:
        from sfeditor.model.truncation import truncation_for

        truncation, why = truncation_for(recipe.domain, recipe.generator or None)
    if info.is_main:
        log(f"truncation psi = {truncation:g} ({why})")
    chain = parent_chain(recipe, regions.tree, hierarchy, parents, info.device)
    if chain is not None and info.is_main:
        log(f"{recipe.node}: trained with its ancestors fixed in the loop "
            f"({', '.join(a.name for a in chain.ancestors)}; Sec. 4.5)")
    checkpoint = recipe.checkpoint if recipe.checkpoint is not None else G.size >= CHECKPOINT_FROM
    ctx = NodeContext(G, RegionModel(G, regions), nr, truncation, recipe.bf16, recipe.temperature, chain=chain,
                      local_reference=LOCAL_REFERENCE_SIZE if recipe.local_norm == "resolution" else None,
                      checkpoint=checkpoint)

    torch.manual_seed(recipe.seed)
    net = FusionNet(FusionNetConfig.for_layout(G.layout, recipe.variant, hidden=recipe.hidden,
                                               n_common=recipe.coarse_layers)).to(info.device)
    sampler = torch.Generator().manual_seed(recipe.seed * 1_000_003 + 7_919 * (info.rank + 1))
    run = RunDir(out) if info.is_main else None
    ckpt_path = Path(out) / "checkpoint.pt"

    stage_no, step, done, opt_state = stages[0].stage, 0, False, None
    assets = asset_fingerprints(G, regions)
    state = None
    if resume and ckpt_path.exists():
        state = load_checked_state(ckpt_path)     # CRCs, sizes and content hash checked first
    elif stage3_from is not None:
        state = stage3_start(stage3_from, recipe, stages)
        if run is not None and (Path(stage3_from) / "stats.jsonl").exists():
            shutil.copyfile(Path(stage3_from) / "stats.jsonl", run.path / "stats.jsonl")
        log(f"{out}: stages 1-2 taken from {stage3_from}")
    if state is not None:
        if state.get("format") != RUN_FORMAT:
            raise ValueError(f"{ckpt_path}: not a FusionNet training checkpoint")
        old = state.get("recipe", {})
        defaults = _recipe_dict(FusionRecipe())      # keys added later count as their defaults
        diff = [k for k in RESUME_KEYS if old.get(k, defaults.get(k)) != _recipe_dict(recipe).get(k)]
        if diff:
            raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)}); "
                             "use another --out or --restart")
        changed = [k for k, v in state.get("assets", {}).items() if assets.get(k) != v]
        if changed:
            raise ValueError(f"{out} holds a run trained on another {' and another '.join(changed)} "
                             f"({', '.join(changed)} fingerprint differs); use another --out or --restart")
        if len(state["rng"]["sampler"]) != info.world:
            raise ValueError(f"{ckpt_path} was written by {len(state['rng']['sampler'])} processes, "
                             f"this run has {info.world}: exact resume needs the same number")
        net.load_state_dict(state["net"])
        stage_no, step, done, opt_state = int(state["stage"]), int(state["step"]), bool(state["done"]), state["opt"]
        sampler.set_state(state["rng"]["sampler"][info.rank])
        torch.set_rng_state(state["rng"]["torch"])
        if run is not None:
            truncate_log(run, stage_no, step)
            log(f"resuming {out} at stage {stage_no}, step {step}" if not done else f"{out}: already trained")
    elif run is not None and (run.path / "stats.jsonl").exists():
        (run.path / "stats.jsonl").unlink()
    if run is not None:
        run.write_options({"recipe": _recipe_dict(recipe), "training": tc.to_dict(),
                           "stages": [{"stage": s.stage, "steps": s.steps, "train": list(trained_blenders(s, align)),
                                       "lambdas": s.lambdas} for s in stages],
                           "align": align, "truncation": truncation, "world_size": info.world,
                           "regions": asdict(nr), "net": net.config.to_dict(),
                           "generator": G.config.to_dict()})

    fixed = sample_codes(G, recipe.sample_count, truncation, torch.Generator().manual_seed(recipe.seed + 424_242))
    totals = {s.stage: s.steps for s in stages}
    total_steps = sum(totals.values())
    before = {s.stage: sum(totals[t.stage] for t in stages if t.stage < s.stage) for s in stages}
    opt: torch.optim.Optimizer | None = None

    def checkpoint(st_no: int, st_step: int, finished: bool = False) -> None:
        states = gather_states(info, sampler.get_state())
        if run is None:
            return
        run.save({"format": RUN_FORMAT, "version": RUN_VERSION, "recipe": _recipe_dict(recipe),
                  "stage": st_no, "step": st_step, "done": finished, "assets": assets, "net": net.state_dict(),
                  "opt": None if (opt is None or finished) else opt.state_dict(),
                  "rng": {"torch": torch.get_rng_state(), "sampler": states}})

    bar = None
    if info.is_main and not done:
        g0 = before.get(stage_no, 0) + step
        bar = Progress(total_steps, f"{recipe.domain}/{recipe.node}", start=g0, stream=progress_stream,
                       callback=progress_callback)
    t_start = time.time()
    for st in stages:
        if done or st.stage < stage_no:
            continue
        if st.stage > stage_no:
            stage_no, step, opt_state = st.stage, 0, None
        if step >= st.steps:
            continue
        params = set_trainable(net, trained_blenders(st, align))
        opt = torch.optim.Adam(params, lr=recipe.lr, betas=recipe.betas)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
            opt_state = None
        while step < st.steps:
            t0 = time.time()
            codes = sample_codes(G, recipe.batch, truncation, sampler)
            if chain is not None:
                codes.parents = chain.sample(G, recipe.batch, truncation, sampler)
            loss = stage_loss(st.stage, ctx, net, codes, st, align=align)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            terms, finite, stop = sync_step(info, params, loss.terms, cancel.requested)
            if finite:
                opt.step()
            step += 1
            g = before[st.stage] + step
            if run is not None:
                run.log({"stage": st.stage, "phase": f"stage{st.stage}", "step": step, "global_step": g,
                         **terms, "skipped": not finite, "sec_per_step": round(time.time() - t0, 4),
                         "time": round(time.time() - t_start, 2)})
            if bar is not None:
                bar.update(g, stage=st.stage, loss=terms.get("loss", float("nan")))
            if not info.distributed:
                stop = stop or cancel.requested
            if run is not None and (step % recipe.sample_every == 0 or step == st.steps):
                grid = sample_grid(ctx, net, fixed, align, chunk=recipe.batch)
                save_png(run.path / "samples" / f"stage{st.stage}-{step:06d}.png", grid)
            if step % recipe.checkpoint_every == 0 or step == st.steps or stop:
                checkpoint(st.stage, step)
            if stop:
                raise Cancelled(f"stopped at stage {st.stage}, step {step}; rerun the same command to resume")
        stage_no = st.stage
    if not done:
        checkpoint(stage_no, step, finished=True)
    net.requires_grad_(False).eval()
    if run is not None:
        atomic_torch_save({"state_dict": net.state_dict(), "config": net.config.to_dict(), "node": recipe.node,
                           "children": [nr.child1, nr.child2], "ablation": recipe.ablation,
                           "training": tc.to_dict()}, run.path / "net.pt")
        if hierarchy is not None:
            from sfeditor.model.identity import deep_pixel_fingerprint, generator_fingerprint, synthesis_fingerprint

            update_hierarchy_file(hierarchy, regions.tree, recipe.node, net, G.layout, half=half,
                                  generator_fingerprint=generator_fingerprint(G),
                                  synthesis_fingerprint=synthesis_fingerprint(G),
                                  deep_pixel_fingerprint=deep_pixel_fingerprint(G))
            log(f"{recipe.node}: net written to {run.path / 'net.pt'} and {hierarchy}")
    barrier(info)
    return net


def parent_chain(recipe: FusionRecipe, tree, hierarchy=None, parents: dict | None = None, device=None):
    """The frozen ancestors of ``recipe.node`` (:class:`trainer.fusion_parents.ParentChain`), or None for
    the root and for ``parent_in_loop`` false.  Nets come from ``parents`` and the ``hierarchy`` file."""
    from .fusion_parents import ParentChain, ancestors_of

    needed = [name for name, _ in ancestors_of(tree, recipe.node)] if recipe.parent_in_loop else []
    if not needed:
        return None
    nets, where = {}, "this run"
    missing = [n for n in needed if n not in (parents or {})]
    if missing and hierarchy is not None and Path(hierarchy).exists():   # read the file only when needed
        nets, where = dict(load_hierarchy(hierarchy, precision=None).nets), str(hierarchy)
    nets.update(parents or {})
    chain = ParentChain.from_nets(tree, recipe.node, nets, where)
    for a in chain.ancestors:
        a.net.to(device if device is not None else "cpu")
    return chain


def stage3_start(source: str | os.PathLike, recipe: FusionRecipe, stages) -> dict:
    """The state a run of ``recipe`` has when its stage 3 begins, from a finished No Stage 3 run.

    Sec. 7's No Stage 3 runs stages 1-2 exactly as the full model does (the same seed and sampler,
    stage 3 given 0 steps), so its final checkpoint is the full model before stage 3: a stage-3
    sweep (λ_local, λ_alignReg, the L_fusion target) or the ablation's full variant need not
    repeat stages 1-2. Returns a checkpoint dict for ``recipe`` (stage 3, step 0, fresh Adam).
    Raises ValueError naming what does not match.
    """
    path = Path(source) / "checkpoint.pt"
    if not path.exists():
        raise ValueError(f"stage3_from {source}: no checkpoint.pt there")
    state = load_checked_state(path)
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise ValueError(f"{path}: not a FusionNet training checkpoint")
    old = state.get("recipe", {})
    if old.get("ablation") != "no_stage3" or not state.get("done") or (state.get("stage"), state.get("step")) != (3, 0):
        raise ValueError(f"stage3_from {source}: not a finished No Stage 3 run (ablation "
                         f"{old.get('ablation')!r}, stage {state.get('stage')}, step {state.get('step')}, "
                         f"done {state.get('done')})")
    if recipe.ablation != "full" or not _runs_stage3(stages):
        raise ValueError("stage3_from needs a run with a stage 3 (the full model, not Short or an ablation)")
    defaults, new = _recipe_dict(FusionRecipe()), _recipe_dict(recipe)
    diff = [k for k in STAGE12_KEYS if old.get(k, defaults.get(k)) != new.get(k)]
    if diff:
        raise ValueError(f"stage3_from {source}: its stages 1-2 ran with other settings ({', '.join(diff)})")
    return {**state, "recipe": new, "done": False, "opt": None}


def train_hierarchy(recipe: FusionRecipe, out_root: str | os.PathLike, *, nodes: list[str] | None = None,
                    resume: bool = True, cancel: CancelToken | None = None, progress_callback=None, G=None,
                    regions=None, half: bool = False, hierarchy: str | os.PathLike | None = None,
                    node_configs: dict[str, tuple[str, str]] | None = None, log=print) -> FusionHierarchy:
    """Train every internal node (or ``nodes``), parents first; each in ``out_root/<node>``.

    Each node takes its A.2 configuration (``recipe.config`` "" ) unless the recipe names one, or
    ``node_configs`` gives that node its own ``(config, favoured child)``.
    The nets are collected in ``hierarchy`` (default ``out_root/hierarchy.pt``).
    Returns the hierarchy (in memory, on every rank).
    """
    info = dist_setup(recipe.device)
    G, regions = load_assets(recipe, info.device, G, regions)
    order = [n.name for n in internal_nodes(regions.tree)]
    if nodes is not None:
        unknown = sorted(set(nodes) - set(order))
        if unknown:
            raise ValueError(f"not internal nodes of the region tree: {unknown} (nodes: {', '.join(order)})")
        order = [n for n in order if n in set(nodes)]
    node_configs = dict(node_configs or {})
    unknown = sorted(set(node_configs) - {n.name for n in internal_nodes(regions.tree)})
    if unknown:
        raise ValueError(f"node_configs names nodes that are not internal nodes of the tree: {unknown}")
    # a child names its node (region names are unique in the tree): each node takes its children's lambda_local
    children = {name: {c.name for c in find_node(regions.tree, name).children} for name in order}
    unknown = sorted(set(recipe.local_lambdas) - set().union(*children.values()))
    if unknown:
        raise ValueError(f"local_lambdas names {', '.join(unknown)}: not a child of a node being trained "
                         f"({', '.join(order)})")
    out_root = Path(out_root)
    hierarchy = Path(hierarchy) if hierarchy is not None else out_root / "hierarchy.pt"
    nets = {}
    for name in order:
        log(f"== node {name} ==")
        node_recipe = replace(recipe, node=name, local_lambdas={c: v for c, v in recipe.local_lambdas.items()
                                                                  if c in children[name]})
        if name in node_configs:
            config, favor = node_configs[name]
            node_recipe = replace(node_recipe, config=config, favor=favor)
        nets[name] = train_node(node_recipe, out_root / name, resume=resume, cancel=cancel,
                                progress_callback=progress_callback, G=G, regions=regions, hierarchy=hierarchy,
                                half=half, log=log, parents=nets)
    cfg = next(iter(nets.values())).config if nets else None
    return FusionHierarchy(regions.tree, nets, config=cfg, layout=G.layout)


# --------------------------------------------------------------------- CLI
@dataclass
class FusionJob:
    """``sfeditor-train fusion``'s recipe keys beside :class:`FusionRecipe`'s."""

    half: bool = False            # store the hierarchy file in float16
    stage3_from: str = ""         # start stage 3 from a finished no_stage3 run of the same stage 1-2 settings


@dataclass
class HierarchyJob:
    """``sfeditor-train hierarchy``'s recipe keys beside :class:`FusionRecipe`'s."""

    half: bool = False                                   # store the hierarchy file in float16
    nodes: list[str] = field(default_factory=list)       # only these internal nodes (still parents first)
    node_configs: dict[str, str] = field(default_factory=dict)   # node -> "short" | "favored:hair" | ...

    def __post_init__(self) -> None:
        for node, text in self.node_configs.items():
            _node_config_arg(f"{node}={text}")          # raises ValueError naming the entry

    def configs(self) -> dict[str, tuple[str, str]]:
        return dict(_node_config_arg(f"{n}={t}") for n, t in self.node_configs.items())


def _fusion_recipe(args: argparse.Namespace, job_cls, node: str | None):
    """The command's FusionRecipe and job settings: ``--recipe`` with the run flags on top."""
    from .recipe import RecipeError, flag_overrides, load_recipe, read_recipe_file

    raw = read_recipe_file(args.recipe) if args.recipe else {}
    overrides = {**flag_overrides(args), "generator": args.generator, "regions": args.regions, "node": node}
    recipe, job = load_recipe(args.recipe, FusionRecipe, job_cls, overrides=overrides)
    if args.domain is None and "domain" not in raw:
        raise RecipeError("give --domain (or a recipe with a domain)")
    if args.steps_scale != 1.0:
        from .recipe import check_steps_scale

        recipe = replace(recipe, steps_scale=recipe.steps_scale * check_steps_scale(args.steps_scale))
    bf16 = args.bf16 if args.bf16 is not None else raw.get("bf16")
    return replace(recipe, bf16=choose_bf16(bf16, pick_device(recipe.device))[0]), job


def _recipe_from_args(args: argparse.Namespace, node: str) -> FusionRecipe:
    """The FusionRecipe a ``fusion`` / ``hierarchy`` command line asks for (recipe file + flags)."""
    return _fusion_recipe(args, FusionJob if getattr(args, "command", "") == "fusion" else HierarchyJob, node)[0]


def cmd_fusion(args: argparse.Namespace) -> int:
    recipe, job = _fusion_recipe(args, FusionJob, args.node)
    if not recipe.node:
        raise ValueError("give --node (or a recipe with a node)")
    root = Path(f"runs/fusion-{recipe.domain}")
    if recipe.ablation != "full":
        out = Path(args.out) if args.out else Path(f"runs/fusion-{recipe.domain}-ablation") / recipe.ablation
        hierarchy = args.hierarchy
    else:
        out = Path(args.out) if args.out else root / recipe.node
        hierarchy = args.hierarchy or root / "hierarchy.pt"
    try:
        return run_cancellable(lambda cancel: train_node(recipe, out, resume=not args.restart, cancel=cancel,
                                                         hierarchy=hierarchy, half=job.half,
                                                         stage3_from=job.stage3_from or None))[1]
    finally:
        dist_shutdown()


def _node_config_arg(text: str) -> tuple[str, tuple[str, str]]:
    node, sep, rest = text.partition("=")
    config, _, favor = rest.partition(":")
    if not sep or not node or config not in CONFIGS or (favor and config != "favored"):
        raise ValueError(f"{text!r}: expected NODE=CONFIG or NODE=favored:CHILD "
                         f"(CONFIG one of {', '.join(CONFIGS)})")
    return node, (config, favor)


def cmd_hierarchy(args: argparse.Namespace) -> int:
    recipe, job = _fusion_recipe(args, HierarchyJob, "all")
    out = Path(args.out) if args.out else Path(f"runs/fusion-{recipe.domain}")
    try:
        return run_cancellable(lambda cancel: train_hierarchy(recipe, out, nodes=job.nodes or None,
                                                              resume=not args.restart, cancel=cancel, half=job.half,
                                                              hierarchy=args.hierarchy,
                                                              node_configs=job.configs()))[1]
    finally:
        dist_shutdown()


def _run_args(p: argparse.ArgumentParser) -> None:
    """The day-to-day flags of ``fusion`` and ``hierarchy``; every other setting is the recipe's."""
    from .recipe import add_run_flags

    add_run_flags(p, domain_required=False, what="FusionNet")
    p.add_argument("--generator", help="generator checkpoint (default: the recipe's, else the domain's)")
    p.add_argument("--regions", help="regions file (default: the recipe's, else the domain's)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for the generator passes (default: the recipe's, else on where the "
                        "CPU/GPU runs bf16 natively)")
    p.add_argument("--hierarchy", help="hierarchy file to collect the nets in "
                                       "(default runs/fusion-<domain>/hierarchy.pt)")


def add_parsers(sub) -> None:
    """Register ``fusion`` and ``hierarchy`` (``evaluate`` is :mod:`trainer.fusion_eval`'s, ``ablation``
    :mod:`trainer.fusion_ablation`'s)."""
    f = sub.add_parser("fusion", help="train one node's FusionNet (Sec. 4.4 stages, A.2 configs; resumable)",
                       description="Train one node's FusionNet from a recipe (trainer/recipes/hierarchy-*.json; "
                                   "keys: FusionRecipe and FusionJob in trainer/fusion.py). The flags override it.")
    _run_args(f)
    f.add_argument("--node", help="internal node of the region tree, e.g. all, face, car (default: the recipe's)")
    f.add_argument("--out", help="run folder (default runs/fusion-<domain>/<node>)")
    f.set_defaults(func=cmd_fusion)

    h = sub.add_parser("hierarchy", help="train every FusionNet of the region tree, parents first (Sec. 4.5)",
                       description="Train every FusionNet of the tree, parents first, from a recipe "
                                   "(trainer/recipes/hierarchy-*.json; keys: FusionRecipe and HierarchyJob in "
                                   "trainer/fusion.py). The flags override it.")
    _run_args(h)
    h.add_argument("--out", help="root folder (default runs/fusion-<domain>); one run folder per node")
    h.set_defaults(func=cmd_hierarchy)


__all__ = ["FusionRecipe", "FusionJob", "HierarchyJob", "train_node", "train_hierarchy", "training_config", "plan_stages", "update_hierarchy_file",
           "sample_grid", "dist_setup", "dist_shutdown", "sync_step", "add_parsers", "ABLATIONS", "CONFIGS"]
