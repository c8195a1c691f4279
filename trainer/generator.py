"""Train a toy-domain StyleGAN2 on this CPU (``sfeditor-train generator --recipe FILE``).

The trainer lives in four modules; this one gathers their public names so that
``from trainer.generator import train_generator, GeneratorRecipe, ...`` keeps working:

* :mod:`trainer.generator_recipe` - :class:`GeneratorRecipe`, every setting of a run (the recipe
  file's keys; the shipped ones are in ``trainer/recipes/``);
* :mod:`trainer.generator_data` - deterministic renders, region swaps, the prefetcher;
* :mod:`trainer.generator_losses` - reconstruction, semantic/feature, adversarial, region-swap and
  mapping losses and the discriminators;
* :mod:`trainer.generator_loop` - :func:`train_generator`: the autoencoder, mapping and mixing
  phases, one method each, resumable from ``checkpoint.pt``.
"""
from __future__ import annotations

from .generator_data import (HELDOUT_SEED_OFFSET, TRAIN_SEED_OFFSET, Prefetcher, ae_step_data, rendered_batch,
                             step_seeds, swap_batch, swap_donor_seeds)
from .generator_loop import (PHASES, GeneratorTraining, SpikeGuard, ae_lr_factor, code_gaussian, describe_trainable,
                             load_generator_state, load_init_weights, mixture_prior, projected_codes_of,
                             projected_gaussian, train_generator, trainable_parameters)
from .generator_losses import (SMALL_REGIONS, ImageDiscriminator, PatchDiscriminator, changed_pixels,
                               critic_feature_loss, discriminator_step, gaussian_mapping_target, gradient_magnitude,
                               image_gradients, load_seg_critic, psnr, recon_loss, region_swap_loss, region_weight_map,
                               seg_loss, swap_channel_groups, synth_w)
from .generator_recipe import GeneratorRecipe

__all__ = ["HELDOUT_SEED_OFFSET", "TRAIN_SEED_OFFSET", "Prefetcher", "ae_step_data", "rendered_batch", "step_seeds",
           "swap_batch", "swap_donor_seeds", "PHASES", "GeneratorTraining", "SpikeGuard", "ae_lr_factor",
           "code_gaussian", "describe_trainable", "load_generator_state", "load_init_weights", "mixture_prior",
           "projected_codes_of", "projected_gaussian", "train_generator", "trainable_parameters", "SMALL_REGIONS",
           "ImageDiscriminator", "PatchDiscriminator", "changed_pixels", "critic_feature_loss", "discriminator_step",
           "gaussian_mapping_target", "gradient_magnitude", "image_gradients", "load_seg_critic", "psnr", "recon_loss",
           "region_swap_loss", "region_weight_map", "seg_loss", "swap_channel_groups", "synth_w", "GeneratorRecipe"]
