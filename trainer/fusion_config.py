"""FusionNet training configurations (paper Sec. 4.4 "Multi-Step Training", Appendix A.2).

Three presets (:func:`regular`, :func:`short`, :func:`favored`) and the per-domain
table saying which one trains each node of the official hierarchies.

Stages (Sec. 4.4):
  1. train LB_align only, FusionNet without LB_fuse; losses mask, alignReg, fusion
     (on s'1, s'2 and their images);
  2. train LB_fuse only; fusion loss on the intermediate codes s'1, s'2;
  3. train both; losses local, alignReg, fusion.

Lambdas (A.2, Regular): mask 30,000; local 15,000 with eps 0.1; alignReg 6 in stage 1
and 1 in stage 3; fusion 375 in all stages.  Per-region lambdas are (R1, R2) pairs
(R1 = child 1 of the node); Favored gives the favoured region fusion 500 / local 20,000
and the other 250 / 10,000.

Stage 3's L_fusion: the paper writes Eq. 7 against the inputs s1, s2 and does not say
whether stage 3 keeps stage 2's intermediate targets s'1, s'2.  ``stage3_fusion_target``
chooses: ``"inputs"`` (Eq. 7 as written, the default) or ``"aligned"`` (s'1, s'2 as
fixed targets, as in stage 2).  Against the inputs, L_fusion pulls every channel LB_align
took from the global code back to s1 / s2; on the toy generators that erases the
alignment within a few hundred steps (measured in ``resources/hierarchies/README.md``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from sfeditor.regions.tree import paper_tree

REGULAR_STEPS = (5_000, 10_000, 10_000)
FUSION_TARGETS = ("inputs", "aligned")


@dataclass(frozen=True)
class StageConfig:
    """One training stage: which blenders train, with which LB's, and the loss lambdas."""

    stage: int
    steps: int
    train: tuple[str, ...]            # subset of ("align", "fuse")
    use_fuse: bool                    # False in stage 1 (FusionNet runs without LB_fuse)
    lambdas: dict                     # loss name -> float or (R1, R2)
    epsilon: float = 0.1              # perturbation strength of Eq. 4 (used with "local")
    fusion_target: str = "inputs"     # stage 3: L_fusion against s1, s2 ("inputs") or s'1, s'2 ("aligned")


@dataclass(frozen=True)
class TrainingConfig:
    name: str = "regular"
    stage_steps: tuple[int, ...] = REGULAR_STEPS     # 2 entries = Short (no stage 3)
    lambda_mask: float = 30_000.0
    lambda_local: tuple[float, float] = (15_000.0, 15_000.0)
    epsilon: float = 0.1
    lambda_align_reg_stage1: float = 6.0
    lambda_align_reg_stage3: float = 1.0
    lambda_fusion: tuple[float, float] = (375.0, 375.0)
    favored: str | None = None          # name of the favoured region (Favored)
    steps_scale: float = 1.0
    stage3_fusion_target: str = "inputs"    # see the module docstring

    def __post_init__(self) -> None:
        if len(self.stage_steps) not in (1, 2, 3) or any(s < 0 for s in self.stage_steps):
            raise ValueError("stage_steps must hold 1 to 3 non-negative step counts")
        if self.steps_scale <= 0:
            raise ValueError("steps_scale must be positive")
        if self.stage3_fusion_target not in FUSION_TARGETS:
            raise ValueError(f"stage3_fusion_target must be one of {FUSION_TARGETS}")

    @property
    def n_stages(self) -> int:
        return len(self.stage_steps)

    def scaled(self, steps_scale: float) -> "TrainingConfig":
        return replace(self, steps_scale=steps_scale)

    def steps(self, stage: int) -> int:
        base = self.stage_steps[stage - 1]
        return 0 if base == 0 else max(1, round(base * self.steps_scale))

    @property
    def total_steps(self) -> int:
        return sum(self.steps(i + 1) for i in range(self.n_stages))

    def stage(self, stage: int) -> StageConfig:
        if not 1 <= stage <= self.n_stages:
            raise ValueError(f"{self.name} has stages 1..{self.n_stages}")
        if stage == 1:
            lam = {"mask": self.lambda_mask, "align_reg": self.lambda_align_reg_stage1,
                   "fusion": self.lambda_fusion}
            return StageConfig(1, self.steps(1), ("align",), False, lam, self.epsilon)
        if stage == 2:
            return StageConfig(2, self.steps(2), ("fuse",), True, {"fusion": self.lambda_fusion}, self.epsilon)
        lam = {"local": self.lambda_local, "align_reg": self.lambda_align_reg_stage3, "fusion": self.lambda_fusion}
        return StageConfig(3, self.steps(3), ("align", "fuse"), True, lam, self.epsilon, self.stage3_fusion_target)

    def with_stage3(self, fusion_target: str | None = None, align_reg: float | None = None,
                    local_scale: float = 1.0, local: tuple[float | None, float | None] | None = None
                    ) -> "TrainingConfig":
        """Stage-3 settings on top of a preset: L_fusion's target, lambda_alignReg, lambda_local.

        ``local`` replaces the preset's (R1, R2) lambda_local pair (None in a slot keeps the
        preset's value); ``local_scale`` then multiplies both.
        """
        if local_scale <= 0:
            raise ValueError("local_scale must be positive")
        kw: dict = {}
        pair = tuple(self.lambda_local)
        if local is not None:
            if len(local) != 2 or any(x is not None and not (math.isfinite(x) and x >= 0) for x in local):
                raise ValueError("lambda_local overrides must be an (R1, R2) pair of finite values >= 0")
            pair = tuple(float(x) if x is not None else old for x, old in zip(local, pair))
        if fusion_target is not None:
            kw["stage3_fusion_target"] = fusion_target
        if align_reg is not None:
            if align_reg < 0:
                raise ValueError("the stage-3 alignReg lambda must be >= 0")
            kw["lambda_align_reg_stage3"] = float(align_reg)
        if local_scale != 1.0 or pair != tuple(self.lambda_local):
            kw["lambda_local"] = tuple(float(x) * local_scale for x in pair)
        return replace(self, **kw) if kw else self

    def stages(self) -> list[StageConfig]:
        return [self.stage(i + 1) for i in range(self.n_stages)]

    def to_dict(self) -> dict:
        return asdict(self)


def regular(steps_scale: float = 1.0) -> TrainingConfig:
    """Regular: 5k / 10k / 10k steps (A.2)."""
    return TrainingConfig("regular", steps_scale=steps_scale)


def short(steps_scale: float = 1.0) -> TrainingConfig:
    """Short: Regular without stage 3 (so the localization loss is never used)."""
    return TrainingConfig("short", stage_steps=REGULAR_STEPS[:2], steps_scale=steps_scale)


def favored(region_index: int, region: str | None = None, steps_scale: float = 1.0) -> TrainingConfig:
    """Favored toward child ``region_index`` (0 = R1, 1 = R2): fusion 500 / 250, local 20,000 / 10,000."""
    if region_index not in (0, 1):
        raise ValueError("region_index must be 0 (R1) or 1 (R2)")
    fus = (500.0, 250.0) if region_index == 0 else (250.0, 500.0)
    loc = (20_000.0, 10_000.0) if region_index == 0 else (10_000.0, 20_000.0)
    return TrainingConfig("favored", lambda_local=loc, lambda_fusion=fus, favored=region, steps_scale=steps_scale)


#: A.2: node -> (preset, favoured child or None), per domain of the official hierarchies
NODE_PRESETS: dict[str, dict[str, tuple[str, str | None]]] = {
    "ffhq": {"all": ("favored", "face"), "face": ("short", None), "skin_mouth": ("regular", None),
             "bg_hair_clothes": ("regular", None), "bg_clothes": ("regular", None)},
    "car": {"all": ("favored", "car"), "car": ("short", None), "background": ("short", None)},
    # the paper favours "the building region"; in the official tree that is the "church" leaf
    "church": {"all": ("favored", "church")},
}
_DOMAIN_ALIASES = {"faces": "ffhq", "face": "ffhq", "toy-faces": "ffhq", "cars": "car", "toy-cars": "car",
                   "churches": "church"}


def node_config(domain: str, node: str, steps_scale: float = 1.0) -> TrainingConfig:
    """The A.2 configuration training ``node`` of ``domain``'s official hierarchy."""
    key = _DOMAIN_ALIASES.get(domain, domain)
    if key not in NODE_PRESETS:
        raise ValueError(f"no A.2 table for domain {domain!r} (known: {', '.join(NODE_PRESETS)})")
    try:
        preset, fav = NODE_PRESETS[key][node]
    except KeyError:
        raise ValueError(f"{domain}: no FusionNet node {node!r} (nodes: {', '.join(NODE_PRESETS[key])})") from None
    if preset == "regular":
        return regular(steps_scale)
    if preset == "short":
        return short(steps_scale)
    children = [c.name for n in paper_tree(key).walk() if n.name == node for c in n.children]
    return favored(children.index(fav), fav, steps_scale)
