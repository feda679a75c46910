"""Pretraining the tiny base model on the built-in shapes world."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torchvision

from adaptguard.context import RunContext
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.training.ema import EMACallback
from adaptguard.training.module import DenoisingModule, OptimConfig

if TYPE_CHECKING:
    from adaptguard.models.sources import TinyModelSource

log = logging.getLogger(__name__)


def pretrain_tiny(source: TinyModelSource, work: Path, ctx: RunContext) -> None:
    """Train UNet and text encoder from scratch; writes ``work/model`` and a sample grid.

    Checkpoints go to ``work/checkpoints`` so an interrupted run resumes where it stopped.
    """
    from adaptguard.models.sources import PretrainConfig

    cfg = PretrainConfig(**source.pretrain)
    log.info("pretraining the %s base model: %d steps (cached afterwards; resumable)", source.name, cfg.steps)
    model = source.build().to(ctx.torch_device())
    model.requires_grad_(True)
    data = ShapesDataModule(
        resolution=source.resolution, splits={"pretrain": {"size": cfg.dataset_size}}, batch_size=cfg.batch_size
    )
    module = DenoisingModule(
        model,
        OptimConfig(lr=cfg.lr, lr_scheduler=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps),
        caption_dropout=cfg.caption_dropout,
        log_prefix="pretrain",
        max_steps=cfg.steps,
    )
    ckpt = work / "checkpoints"
    callbacks = [EMACallback(cfg.ema_decay)] if cfg.ema_decay else []
    ctx.fit(
        module, data.dataloader("pretrain"), cfg.steps, checkpoint_dir=ckpt,
        checkpoint_every=cfg.checkpoint_every, callbacks=callbacks,
    )  # fmt: skip
    model.requires_grad_(False)
    model.save(work / "model")
    prompts = data.captions("pretrain", 64, seed=1)
    images = model.sample(prompts, generator=ctx.generator(1))
    torchvision.utils.save_image(images * 0.5 + 0.5, work / "model" / "samples.png", nrow=8)
    (work / "model" / "samples.txt").write_text("\n".join(prompts) + "\n")
    shutil.rmtree(ckpt, ignore_errors=True)
