"""Pretraining a base model from scratch (the tiny and micro models, on the built-in shapes world).

Latent models train in Stable Diffusion's order: the VAE first, its latent scale measured on
the data, then the UNet and text encoder on cached latents with the VAE frozen.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torchvision
from diffusers import AutoencoderKL
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from torch.utils.data import DataLoader

from adaptguard.core.artifacts import RESUME_DIR
from adaptguard.core.config import Validated, setting
from adaptguard.core.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule, train_loader
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training.autoencoder import AutoencoderModule, cache_latents, latent_mean, latent_scale
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
    curve_every: int | None = setting(
        None,
        ge=1,
        doc="steps between points of the pretraining curve (training loss, and FID and prompt fidelity of the "
        "averaged weights on `curve_samples` eval images) in the model folder's curve.json; null: none. It does "
        "not change the weights",
    )
    curve_samples: int = setting(64, ge=2, doc="images sampled per pretraining-curve point")


Probe = Callable[[DiffusionModel], dict[str, float]]


class _CurveModule(DenoisingModule):
    """The denoising objective with a validation step that does nothing: the curve is measured by
    :class:`PretrainCurve` in Lightning's validation loop, where ``EMAWeightAveraging`` swaps in the averaged
    weights (the ones that get saved)."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        return None


class PretrainCurve(Callback):
    """Every ``curve_every`` steps (a validation epoch): the training loss and ``probe`` of the model, into
    ``path`` (a JSON list by step; a resumed run keeps the points before its checkpoint)."""

    def __init__(self, probe: Probe, path: Path) -> None:
        self.probe, self.path = probe, path
        self.points = {p["step"]: p for p in json.loads(path.read_text())} if path.is_file() else {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step = trainer.global_step
        loss = trainer.callback_metrics.get("pretrain/loss")
        point = {"step": step, **({"loss": float(loss)} if loss is not None else {}), **self.probe(pl_module.model)}
        self.points = {s: p for s, p in self.points.items() if s < step} | {step: point}
        self.path.write_text(json.dumps(sorted(self.points.values(), key=lambda p: p["step"]), indent=1))
        log.info("pretraining curve, step %d: %s", step, {k: round(v, 4) for k, v in point.items() if k != "step"})


def pretrain(
    model: DiffusionModel,
    data: CaptionedImageDataModule,
    cfg: PretrainConfig,
    ctx: RunContext,
    work: Path,
    probe: Probe | None = None,
):
    """Train every weight of ``model`` on ``data``'s ``pretrain`` split; writes ``work/model`` and a sample grid.

    Checkpoints go to ``work/checkpoints`` (kept by the cache when a build is killed) so a rerun resumes.
    ``probe`` (with ``cfg.curve_every``): measures the model at each curve point; the curve goes to
    ``work/model/curve.json``.
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
    module = _CurveModule(model, optim, caption_dropout=cfg.caption_dropout, log_prefix="pretrain", max_steps=cfg.steps)
    ckpt = work / RESUME_DIR / "pretrain"
    curve = work / RESUME_DIR / "curve.json"  # survives an interruption with the checkpoints
    callbacks: list[Callback] = []
    validation: dict[str, Any] = {}
    if cfg.curve_every and probe is not None:  # before the averaging callback: it swaps back after this ran
        callbacks.append(PretrainCurve(probe, curve))
        validation = {"val_dataloaders": DataLoader([0]), "val_check_interval": cfg.curve_every,
                      "check_val_every_n_epoch": None, "limit_val_batches": 1, "num_sanity_val_steps": 0}  # fmt: skip
    if cfg.ema_decay:
        callbacks.append(EMAWeightAveraging(decay=cfg.ema_decay))
    fit(module, loader, cfg.steps, ctx, label="pretrain", lr_key="model.pretrain.lr", checkpoint_dir=ckpt,
        checkpoint_every=cfg.checkpoint_every, callbacks=callbacks, **validation)  # fmt: skip
    model.requires_grad_(False)
    model.save(work / "model")
    if curve.is_file():
        shutil.copyfile(curve, work / "model" / "curve.json")
    prompts = data.captions(PRETRAIN_SPLIT, 64, seed=1)
    images = model.sample(prompts, generator=ctx.generator(1))
    torchvision.utils.save_image(images * 0.5 + 0.5, work / "model" / "samples.png", nrow=8)
    (work / "model" / "samples.txt").write_text("\n".join(prompts) + "\n")


def train_vae(
    vae: AutoencoderKL, data: CaptionedImageDataModule, cfg: PretrainConfig, ctx: RunContext, checkpoint_dir: Path
) -> None:
    """The VAE stage of pretraining on ``data``'s ``pretrain`` split (resumable from ``checkpoint_dir``)."""
    log.info("pretraining the VAE: %d steps", cfg.vae_steps)
    vae.requires_grad_(True)
    module = AutoencoderModule(vae, cfg.vae_lr, cfg.kl_weight, cfg.vae_steps, cfg.warmup_steps, cfg.vae_crop)
    fit(module, data.dataloader(PRETRAIN_SPLIT, cfg.vae_batch_size), cfg.vae_steps, ctx, label="pretrain vae",
        lr_key="model.pretrain.vae_lr", checkpoint_dir=checkpoint_dir, checkpoint_every=cfg.checkpoint_every)  # fmt: skip
    vae.requires_grad_(False).eval()


def _latent_loader(model: DiffusionModel, data: CaptionedImageDataModule, cfg: PretrainConfig, ctx: RunContext,
                   work: Path) -> DataLoader:  # fmt: skip
    """Train the VAE (once: ``work/vae`` survives an interruption), set its scale, cache the split's latents."""
    vae_dir = work / RESUME_DIR / "vae"  # the trained VAE survives an interruption; it ends up in work/model
    if (vae_dir / "config.json").is_file():
        model.vae = AutoencoderKL.from_pretrained(vae_dir).to(model.device)
    else:
        train_vae(model.vae, data, cfg, ctx, work / RESUME_DIR / "vae_fit")
    model.vae.requires_grad_(False).eval()
    latents = cache_latents(model.vae, data.dataset(PRETRAIN_SPLIT), progress=ctx.progress)
    if not (vae_dir / "config.json").is_file():
        shift = {}  # SD3's VAE also centres its latents (shift_factor); SD 1.x/2.x's only scale them
        if model.vae.config.get("shift_factor") is not None:
            shift = {"shift_factor": latent_mean(latents, ctx.generator(0))}
        model.vae.register_to_config(scaling_factor=latent_scale(latents, ctx.generator(0)), **shift)
        model.vae.save_pretrained(vae_dir)
        shutil.rmtree(work / RESUME_DIR / "vae_fit", ignore_errors=True)
    log.info("VAE latent scale: %.4f", model.vae.config.scaling_factor)
    return train_loader(latents, cfg.batch_size)
