"""Pretraining a base model from scratch (the tiny and micro models, on the built-in shapes world)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torchvision
from lightning.pytorch.callbacks import EMAWeightAveraging

from adaptguard.core.config import Validated, setting
from adaptguard.core.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training.loop import fit
from adaptguard.training.module import DenoisingModule, OptimConfig

log = logging.getLogger(__name__)
PRETRAIN_SPLIT = "pretrain"


@dataclass
class PretrainConfig(Validated):
    """How a base model learns the built-in shapes world."""

    config_key = "model.pretrain"

    steps: int = setting(6000, ge=1)
    batch_size: int = setting(32, ge=1)
    lr: float = setting(1e-3, gt=0)
    warmup_steps: int = setting(200, ge=0)
    lr_scheduler: str = "cosine"
    caption_dropout: float = setting(0.1, ge=0, le=1)
    dataset_size: int = setting(16384, ge=1)
    checkpoint_every: int = setting(250, ge=1)
    ema_decay: float | None = setting(0.999, gt=0, lt=1)  # null: no EMA


def pretrain(model: DiffusionModel, data: CaptionedImageDataModule, cfg: PretrainConfig, ctx: RunContext, work: Path):
    """Train every weight of ``model`` on ``data``'s ``pretrain`` split; writes ``work/model`` and a sample grid.

    Checkpoints go to ``work/checkpoints`` so an interrupted run resumes where it stopped.
    """
    log.info("pretraining the base model: %d steps (cached afterwards; resumable)", cfg.steps)
    model.requires_grad_(True)
    optim = OptimConfig(lr=cfg.lr, lr_scheduler=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps)
    module = DenoisingModule(
        model, optim, caption_dropout=cfg.caption_dropout, log_prefix="pretrain", max_steps=cfg.steps
    )
    ckpt = work / "checkpoints"
    callbacks = [EMAWeightAveraging(decay=cfg.ema_decay)] if cfg.ema_decay else []
    loader = data.dataloader(PRETRAIN_SPLIT, cfg.batch_size)
    fit(module, loader, cfg.steps, ctx, label="pretrain", checkpoint_dir=ckpt,
        checkpoint_every=cfg.checkpoint_every, callbacks=callbacks)  # fmt: skip
    model.requires_grad_(False)
    model.save(work / "model")
    prompts = data.captions(PRETRAIN_SPLIT, 64, seed=1)
    images = model.sample(prompts, generator=ctx.generator(1))
    torchvision.utils.save_image(images * 0.5 + 0.5, work / "model" / "samples.png", nrow=8)
    (work / "model" / "samples.txt").write_text("\n".join(prompts) + "\n")
    shutil.rmtree(ckpt, ignore_errors=True)
