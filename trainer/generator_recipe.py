"""The toy generator's recipe (``sfeditor-train generator --recipe FILE``): every setting of a run.

The fields are the recipe file's keys (:mod:`trainer.recipe` loads and checks them); a run records
its recipe in ``options.json`` and in ``generator.pt``'s metadata.  The three phases they drive are
described in :mod:`trainer.generator_loop`; the losses in :mod:`trainer.generator_losses`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sfeditor.model.generator import GeneratorConfig

DOMAINS = ("toy-faces", "toy-cars")
MAPPING_FITS = ("encoder", "projected", "projected-mean", "mixture")


@dataclass
class GeneratorRecipe:
    domain: str = "toy-faces"
    # architecture
    size: int = 64
    style_dim: int = 256
    n_mlp: int = 4
    channels: dict = field(default_factory=lambda: {4: 256, 8: 256, 16: 128, 32: 64, 64: 32})
    # phase 1: autoencoder
    batch: int = 16
    ae_steps: int = 8000
    ae_lr: float = 0.0015
    clip_grad: float = 2.0
    grad_weight: float = 1.0
    region_weight: float = 1.0      # reconstruction-loss weight of the small regions' pixels (renderer labels)
    weighted_regions: tuple = ()    # () = the domain's small regions (generator_losses.SMALL_REGIONS)
    ae_adv_weight: float = 0.0      # patch-discriminator term on the autoencoder's reconstructions (0 = off)
    ae_adv_start: int = 0           # autoencoder step from which the discriminator is used
    ae_adv_ramp: int = 500          # steps over which its (adaptive) weight ramps from 0 to ae_adv_weight
    r1_gamma: float = 0.05          # R1 weight of the patch discriminator (lazy, every r1_every steps;
                                    # StyleGAN2's heuristic 0.0002 * res^2 / batch)
    r1_every: int = 4
    init_from: str = ""             # start G and E from another run's weights (fine-tuning); "" = random;
                                    # that run's layers may be narrower (trainer.generator_widen)
    seg_weight: float = 0.0         # semantic loss: a frozen segmentation critic on the reconstructions
    seg_critic: str = ""            # its weights (trained on renders with another seed; never the judge)
    feat_weight: float = 0.0        # perceptual loss on the critic's features (critic_feature_loss)
    swap_weight: float = 0.0        # region-swap loss (0 = off): see swap_channel_groups
    swap_focus: float = 0.0         # extra loss weight of the pixels a swap changes (see region_swap_loss)
    swap_anchor: bool = False       # pixels a swap leaves alone must match A's reconstruction (region_swap_loss)
    ae_trainable: tuple = ()        # () = train G and E; else only G's parameters whose names start with
                                    # one of these prefixes (E frozen): see trainable_parameters
    # v5: factorised code and block-sparse affines (trainer.generator_blocks); 0 = a dense affine
    w_global_dim: int = 0           # width of w_global; the regions share the rest of style_dim evenly
    group_shares: dict = field(default_factory=dict)  # {res: {group: share}}: each layer's channels per
                                    # group, by the resolution it draws at (largest key <= res applies)
    balance_cap: float = 0.0        # region-balanced reconstruction: pixel weight 1/(K * area of its
                                    # region), capped at this (0 = off; replaces region_weight)
    crop_weight: float = 0.0        # extra weight inside the small regions' bounding boxes (eye/mouth crops)
    isolated_groups: dict = field(default_factory=dict)  # {group: [groups it reads]}: the convolutions keep
                                    # these groups' feature channels apart (trainer.generator_blocks.conv_masks)
    silence_weight: float = 0.0     # isolated groups' channels must be zero outside their region
                                    # (generator_losses.silence_loss; 0 = off)
    silence_relative: bool = False  # the silence term over the group's activity inside its region
                                    # (generator_losses.silence_loss(relative=True))
    isolated_from: int = 0          # the isolated groups' own blocks reach only the layers of maps of at least
                                    # this many px; coarser ones read w_global only (generator_blocks.affine_masks)
    isolate_ramp: int = 0           # steps over which the cross-group conv weights fade to zero (0 = masked at
                                    # once; trainer.generator_blocks.ramp_conv_masks)
    param_weight: float = 0.0       # each block of w must hold its group's renderer parameters (linear probe,
                                    # generator_losses.ParamProbe; needs w_global_dim > 0)
    param_code: bool = False        # w is computed from the renderer's parameters, one MLP per block
                                    # (trainer.generator_param_code); the encoder learns to regress it
    param_code_distill: int = 400   # with init_from: steps fitting those MLPs to the old encoder's codes first
    encoder_every: int = 1          # param_code: the encoder's regression step every this many steps (it is ~30 %
                                    # of a step on the CPU and does not feed the generator's training)
    # phase 2: mapping z -> w (a Gaussian fit regressed into the mapping MLP, or a mixture prior)
    mapping_steps: int = 3000
    mapping_batch: int = 256
    mapping_fit_images: int = 4096  # codes the Gaussian is fitted to (whole batches of 64 renders)
    mapping_fit: str = "encoder"    # their source: "encoder" codes, "projected" into W, or "projected-mean"
                                    # (projected codes' mean, encoder codes' covariance): trainer.mapping_fit;
                                    # "mixture": no regression, a Gaussian-mixture prior over the encoder codes
                                    # replaces the mapping MLP (trainer.mapping_fit.fit_mixture)
    mapping_components: int | list[int] = 64   # "mixture": Gaussians in the prior (sfeditor.model.latent_prior);
                                    # a list: each is fitted, the best on held-out codes kept
    mapping_rank: int = 64          # "mixture": principal directions kept per component
    mapping_project_steps: int = 100  # projected fits: Adam steps per batch of 64 (~1.1 s each on 2 cores)
    mapping_project_lr: float = 0.0   # projected fits: their learning rate (0 = the domain's inversion preset)
    mapping_fit_lr: float = 5.0     # Adam lr of that regression (EqualLinear lr_mul 0.01 and 1/sqrt(fan-in)
                                    # scale it down ~1600x; at 0.01 only the mean was learnt)
    # phase 3: style-mixing fine-tune
    mix_steps: int = 1500
    mix_lr: float = 0.0005
    adv_weight: float = 0.05
    # run
    seed: int = 0
    sample_every: int = 250
    checkpoint_every: int = 100
    threads: int = 0
    data_workers: int = 1           # processes rendering the training batches (1 = a background thread)
    device: str = "auto"
    bf16: bool | None = None        # bfloat16 autocast; None: where it is native (4.4x faster), not where emulated

    def __post_init__(self) -> None:
        self.channels = {int(k): int(v) for k, v in dict(self.channels).items()}
        self.weighted_regions = tuple(self.weighted_regions)
        self.isolated_groups = {str(g): [str(r) for r in reads] for g, reads in dict(self.isolated_groups).items()}
        self.ae_trainable = tuple(self.ae_trainable)
        self.group_shares = {str(int(r)): {str(g): float(v) for g, v in dict(t).items()}
                             for r, t in dict(self.group_shares).items()}

    @property
    def component_choices(self) -> tuple[int, ...]:
        """``mapping_components`` as a tuple (one number or the candidates to choose from)."""
        c = self.mapping_components
        return (int(c),) if isinstance(c, (int, float)) else tuple(int(k) for k in c)

    @property
    def factorised(self) -> bool:
        return self.w_global_dim > 0

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(size=self.size, style_dim=self.style_dim, n_mlp=self.n_mlp,
                               channels={int(k): int(v) for k, v in self.channels.items()}, lr_mlp=0.01)

    def validate(self) -> "GeneratorRecipe":
        """Refuse settings that cannot run, with the recipe key named (ValueError); returns self."""
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, not {self.domain!r}")
        if self.mapping_fit not in MAPPING_FITS:
            raise ValueError(f"mapping_fit must be one of {', '.join(MAPPING_FITS)}, not {self.mapping_fit!r}")
        for k in ("ae_steps", "mapping_steps", "mix_steps", "ae_adv_start"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, not {getattr(self, k)}")
        if self.batch < 1 or self.mapping_batch < 1:
            raise ValueError("batch and mapping_batch must be >= 1")
        if self.mapping_fit_images < 64:
            raise ValueError(f"mapping_fit_images must be >= 64 (whole batches of 64), not {self.mapping_fit_images}")
        ks = self.component_choices
        if not ks or min(ks) < 1 or self.mapping_rank < 1:
            raise ValueError("mapping_components (a number or a list of numbers) and mapping_rank must be >= 1")
        if self.mapping_fit == "mixture" and self.mapping_fit_images < 16 * max(ks):
            raise ValueError(f"mapping_fit mixture with {max(ks)} components needs at least "
                             f"{16 * max(ks)} mapping_fit_images")
        if self.mapping_project_steps < 1 or self.mapping_project_lr < 0:
            raise ValueError("mapping_project_steps must be >= 1 and mapping_project_lr >= 0")
        if self.data_workers < 1:
            raise ValueError(f"data_workers must be >= 1, not {self.data_workers}")
        if self.swap_weight < 0 or self.swap_focus < 0:
            raise ValueError(f"swap_weight and swap_focus must be >= 0, not {self.swap_weight}, {self.swap_focus}")
        if self.factorised:
            from sfeditor.toy import swap_groups

            from .generator_blocks import block_sizes

            groups = tuple(swap_groups(self.domain))
            block_sizes(groups, self.style_dim, self.w_global_dim)
            if not self.group_shares or "4" not in self.group_shares:
                raise ValueError("w_global_dim needs group_shares with an entry for resolution 4")
            for r, t in self.group_shares.items():
                bad = set(t) - set(groups)
                if bad or any(v < 0 for v in t.values()) or not any(v > 0 for v in t.values()):
                    raise ValueError(f"group_shares[{r}] must give non-negative shares to groups of "
                                     f"{', '.join(groups)} (some positive)")
        if self.balance_cap < 0 or self.crop_weight < 0 or self.param_weight < 0:
            raise ValueError("balance_cap, crop_weight and param_weight must be >= 0")
        if self.silence_weight < 0:
            raise ValueError(f"silence_weight must be >= 0, not {self.silence_weight}")
        if self.silence_weight > 0 and not self.isolated_groups:
            raise ValueError("silence_weight needs isolated_groups (the groups whose channels it silences)")
        if self.isolated_from and (self.isolated_from < 4 or self.isolated_from & (self.isolated_from - 1)):
            raise ValueError(f"isolated_from must be 0 or a power of two >= 4, not {self.isolated_from}")
        if self.isolate_ramp < 0:
            raise ValueError(f"isolate_ramp must be >= 0, not {self.isolate_ramp}")
        if self.isolated_groups and self.isolate_ramp > self.ae_steps:
            raise ValueError(f"isolate_ramp ({self.isolate_ramp}) must end within ae_steps ({self.ae_steps}), "
                             "so the saved generator is masked")
        if self.isolated_groups and not self.factorised:
            raise ValueError("isolated_groups needs a factorised code (w_global_dim > 0)")
        if self.param_weight > 0 and not self.factorised:
            raise ValueError("param_weight needs a factorised code (w_global_dim > 0)")
        if self.param_code:
            if not self.factorised:
                raise ValueError("param_code needs a factorised code (w_global_dim > 0)")
            if self.param_weight > 0:
                raise ValueError("param_code makes param_weight redundant (each block is its group's "
                                 "parameters): set it to 0")
            if self.mix_steps > 0 or self.ae_adv_weight > 0 or self.ae_trainable:
                raise ValueError("param_code trains G and E in the autoencoder phase only: mix_steps and "
                                 "ae_adv_weight must be 0 and ae_trainable empty")
            if self.mapping_fit in ("projected", "projected-mean"):
                raise ValueError("param_code fits the mapping to parameter codes: mapping_fit must be "
                                 "'encoder' (one Gaussian) or 'mixture'")
        if self.encoder_every < 1:
            raise ValueError(f"encoder_every must be >= 1, not {self.encoder_every}")
        if self.param_code_distill < 0:
            raise ValueError(f"param_code_distill must be >= 0, not {self.param_code_distill}")
        if self.feat_weight < 0:
            raise ValueError(f"feat_weight must be >= 0, not {self.feat_weight}")
        if self.feat_weight > 0 and not self.seg_critic:
            raise ValueError("feat_weight needs seg_critic (its features are the perceptual loss's)")
        if self.seg_weight > 0 and not self.seg_critic:
            raise ValueError("seg_weight needs seg_critic (sfeditor-train oracle --recipe oracle-critic-D --out FILE)")
        return self

    def scaled(self, factor: float) -> "GeneratorRecipe":
        """The same recipe with every phase's steps multiplied by ``factor`` (``--steps-scale``)."""
        if factor == 1.0:
            return self
        from dataclasses import replace

        return replace(self, ae_steps=max(1, int(self.ae_steps * factor)) if self.ae_steps else 0,
                       ae_adv_start=int(self.ae_adv_start * factor),
                       mapping_steps=max(1, int(self.mapping_steps * factor)) if self.mapping_steps else 0,
                       mix_steps=int(self.mix_steps * factor))
