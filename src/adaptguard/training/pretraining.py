"""Pretraining a base model from scratch (the tiny and micro models, on the built-in shapes world).

Latent models train in Stable Diffusion's order: the VAE first, its latent scale measured on
the data, then the UNet and text encoder on cached latents with the VAE frozen.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torchvision
from diffusers import AutoencoderKL
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.utils.data import DataLoader

from adaptguard.core.artifacts import RESUME_DIR
from adaptguard.core.config import Validated, setting
from adaptguard.core.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule, train_loader
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training.autoencoder import AutoencoderModule, cache_latents, latent_scale
from adaptguard.training.loop import fit
from adaptguard.training.module import DenoisingModule, OptimConfig

log = logging.getLogger(__name__)
PRETRAIN_SPLIT = "pretrain"


@dataclass
class PretrainConfig(Validated):
    """How a base model learns the built-in shapes world."""

    config_key = "model.pretrain"

    steps: int = setting(6000, ge=1, doc="the UNet stage's optimizer steps (latent models: on cached latents)")
    batch_size: int = setting(32, ge=1, doc="the UNet stage's batch")
    lr: float = setting(1e-3, gt=0, doc="the UNet stage's learning rate (AdamW)")
    warmup_steps: int = setting(200, ge=0, doc="learning-rate warm-up steps")
    lr_scheduler: str = setting("cosine", doc="any `diffusers.optimization` schedule name")
    caption_dropout: float = setting(0.1, ge=0, le=1, doc="share of empty captions (classifier-free guidance)")
    dataset_size: int = setting(16384, ge=1, doc="shapes images in the pretraining split")
    checkpoint_every: int = setting(250, ge=1, doc="steps between resumable checkpoints (does not change the weights)")
    ema_decay: float | None = setting(
        0.999,
        gt=0,
        lt=1,
        doc="exponential moving average of the weights (Lightning's `EMAWeightAveraging`); null: none. Keep "
        "decay^steps small: 0.999 over 1500 steps keeps 22 % of the random init",
    )
    # latent models only: the VAE stage that runs first
    vae_steps: int = setting(1500, ge=1, doc="latent models: optimizer steps of the VAE stage that runs first")
    vae_batch_size: int = setting(16, ge=1, doc="latent models: the VAE stage's batch")
    vae_lr: float = setting(1e-3, gt=0, doc="latent models: the VAE stage's learning rate")
    kl_weight: float = setting(
        1e-4, ge=0, doc="VAE loss: MSE + L1 reconstruction + this × KL (the latent's KL sum per image element)"
    )
    vae_crop: int | None = setting(
        None, ge=8, doc="the VAE trains on random crops of this size (it is convolutional); null: whole images"
    )


def pretrain(model: DiffusionModel, data: CaptionedImageDataModule, cfg: PretrainConfig, ctx: RunContext, work: Path):
    """Train every weight of ``model`` on ``data``'s ``pretrain`` split; writes ``work/model`` and a sample grid.

    Checkpoints go to ``work/checkpoints`` (kept by the cache when a build is killed) so a rerun resumes.
    """
    log.info("pretraining the base model: %d steps (cached afterwards; resumable)", cfg.steps)
    if model.is_latent:
        loader = _latent_loader(model, data, cfg, ctx, work)
    else:
        loader = data.dataloader(PRETRAIN_SPLIT, cfg.batch_size)
    model.requires_grad_(True)
    if model.vae is not None:
        model.vae.requires_grad_(False)
    optim = OptimConfig(lr=cfg.lr, lr_scheduler=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps)
    module = DenoisingModule(
        model, optim, caption_dropout=cfg.caption_dropout, log_prefix="pretrain", max_steps=cfg.steps
    )
    ckpt = work / RESUME_DIR / "pretrain"
    callbacks = [EMAWeightAveraging(decay=cfg.ema_decay)] if cfg.ema_decay else []
    fit(module, loader, cfg.steps, ctx, label="pretrain", lr_key="model.pretrain.lr", checkpoint_dir=ckpt,
        checkpoint_every=cfg.checkpoint_every, callbacks=callbacks)  # fmt: skip
    model.requires_grad_(False)
    model.save(work / "model")
    prompts = data.captions(PRETRAIN_SPLIT, 64, seed=1)
    images = model.sample(prompts, generator=ctx.generator(1))
    torchvision.utils.save_image(images * 0.5 + 0.5, work / "model" / "samples.png", nrow=8)
    (work / "model" / "samples.txt").write_text("\n".join(prompts) + "\n")


def _latent_loader(model: DiffusionModel, data: CaptionedImageDataModule, cfg: PretrainConfig, ctx: RunContext,
                   work: Path) -> DataLoader:  # fmt: skip
    """Train the VAE (once: ``work/vae`` survives an interruption), set its scale, cache the split's latents."""
    vae_dir = work / RESUME_DIR / "vae"  # the trained VAE survives an interruption; it ends up in work/model
    if (vae_dir / "config.json").is_file():
        model.vae = AutoencoderKL.from_pretrained(vae_dir).to(model.device)
    else:
        log.info("pretraining the VAE: %d steps", cfg.vae_steps)
        model.vae.requires_grad_(True)
        module = AutoencoderModule(model.vae, cfg.vae_lr, cfg.kl_weight, cfg.vae_steps, cfg.warmup_steps, cfg.vae_crop)
        fit(module, data.dataloader(PRETRAIN_SPLIT, cfg.vae_batch_size), cfg.vae_steps, ctx, label="pretrain vae",
            lr_key="model.pretrain.vae_lr",
            checkpoint_dir=work / RESUME_DIR / "vae_fit", checkpoint_every=cfg.checkpoint_every)  # fmt: skip
    model.vae.requires_grad_(False).eval()
    latents = cache_latents(model.vae, data.dataset(PRETRAIN_SPLIT), progress=ctx.progress)
    if not (vae_dir / "config.json").is_file():
        model.vae.register_to_config(scaling_factor=latent_scale(latents, ctx.generator(0)))
        model.vae.save_pretrained(vae_dir)
        shutil.rmtree(work / RESUME_DIR / "vae_fit", ignore_errors=True)
    log.info("VAE latent scale: %.4f", model.vae.config.scaling_factor)
    return train_loader(latents, cfg.batch_size)
