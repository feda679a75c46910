"""Running a Lightning fit for a stage: seeding, checkpoints, a step-counting progress bar, timing."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar

from adaptguard.core import ranks
from adaptguard.core.context import RunContext
from adaptguard.core.errors import DivergedError

log = logging.getLogger(__name__)


class StepProgressBar(TQDMProgressBar):
    """One bar per stage that counts optimizer steps (``protect 120/400``); Lightning's counts
    epochs, which a ``max_steps`` run does not have (it shows ``Epoch 1/-2``)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.initial = trainer.global_step  # a resumed run starts where it stopped
        self.train_progress_bar.set_description(self.label)

    def on_train_epoch_start(self, *args: Any) -> None:
        return None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, *args: Any) -> None:
        return None


class StepTimer(Callback):
    """Mean wall time of a training batch (optimizer step included), skipping warm-up batches."""

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)

    @property
    def mean_step_s(self) -> float | None:
        t = self.times[self.skip :] or self.times
        return sum(t) / len(t) if t else None


class FiniteGuard(Callback):
    """Stop a stage at the first non-finite loss or gradient, naming the stage, the step and the key to change.

    A diverged model otherwise trains on, samples NaN images and is scored as "watermark removed".
    Gradients are not checked under fp16 mixed precision, whose loss scaler skips such steps by design.
    """

    def __init__(self, stage: str, lr_key: str | None = None) -> None:
        self.stage = stage
        self.hint = f"lower {lr_key} or clip gradients" if lr_key else "lower the stage's learning rate"

    def fail(self, trainer: L.Trainer, what: str) -> None:
        raise DivergedError(f"{self.stage}: {what} is not finite (NaN/inf) at step {trainer.global_step + 1}; "
                            f"training diverged - {self.hint}")  # fmt: skip

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss.detach()).all():
            self.fail(trainer, "the loss")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if "16-mixed" in str(trainer.precision) and not str(trainer.precision).startswith("bf"):
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            self.fail(trainer, "a gradient")


class StepSeed(Callback):
    """Seed torch / numpy / random from (run seed, batch index) before every batch, and from (run seed, end)
    after training: noise, timesteps and caption dropout are then a function of the step, so a stage resumed
    from a checkpoint draws what an uninterrupted one would (the loader's own position is in the checkpoint).
    Under DDP each rank draws its own noise for its own share of the batch; after training all ranks agree again."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def reseed(self, offset: int, rank: int = 0) -> None:
        value = (self.seed * 1_000_003 + offset + rank * 0x9E3779B1) % 2**32
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.reseed(trainer.fit_loop.epoch_loop.total_batch_idx + 1, trainer.global_rank)

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.reseed(2**31 - 1)


def seed_data_order(dataloader: Any, seed: int) -> None:
    """Seed the shuffling samplers of ``dataloader`` (one, or a list / dict of them) from the run seed: their
    order would otherwise follow whatever drew from the global generator before the loader was built, so a
    rerun (and a resumed stage) could see other batches."""
    if isinstance(dataloader, dict):
        loaders = list(dataloader.values())
    else:
        loaders = list(dataloader) if isinstance(dataloader, list | tuple) else [dataloader]
    for loader in loaders:
        generator = getattr(getattr(loader, "sampler", None), "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed((seed * 1_000_003 + 0xDA7A) % 2**63)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total}


def final_terms(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    """The last logged value of every ``<prefix>/<term>`` metric, keyed by term."""
    return {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{prefix}/")}


def fit(
    module: L.LightningModule,
    dataloader: Any,
    max_steps: int,
    ctx: RunContext,
    *,
    label: str = "train",
    lr_key: str | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 200,
    callbacks: Sequence[Callback] = (),
    val_dataloaders: Any = None,
    **trainer_kwargs: Any,
) -> L.Trainer:
    """Train for ``max_steps`` optimizer steps with a Trainer from ``ctx``; resumable with ``checkpoint_dir``.

    ``lr_key``: the config key of this stage's learning rate, named when training diverges.
    ``val_dataloaders``: Lightning's validation loop (with ``val_check_interval`` etc. in ``trainer_kwargs``).
    """
    L.seed_everything(ctx.seed, verbose=False)
    cbs = [*ctx.callbacks, *callbacks, FiniteGuard(label, lr_key), StepSeed(ctx.seed)]
    if ctx.progress:
        cbs.append(StepProgressBar(label))
    if checkpoint_dir is None and ctx.checkpoint_dir is not None:  # a stage's work dir: one folder per fit
        checkpoint_dir, checkpoint_every = Path(ctx.checkpoint_dir) / label.replace(" ", "_"), ctx.checkpoint_every
    ckpt_path = None
    if checkpoint_dir is not None:
        cbs.append(ModelCheckpoint(dirpath=checkpoint_dir, every_n_train_steps=checkpoint_every, save_last=True,
                                   save_top_k=0))  # fmt: skip
        last = Path(checkpoint_dir) / "last.ckpt"
        ckpt_path = ranks.share(str(last) if last.exists() else None)  # under DDP: rank 0's folder, for all
        if ckpt_path:
            log.info("%s: resuming from %s", label, last)
    trainer = ctx.make_trainer(
        max_steps=max_steps,
        logger=ctx.logger if ctx.logger is not None else False,
        enable_checkpointing=checkpoint_dir is not None,
        enable_progress_bar=ctx.progress,
        callbacks=cbs,
        default_root_dir=str(ctx.out_dir),
        **trainer_kwargs,
    )
    seed_data_order(dataloader, ctx.seed)
    device = next((p.device for p in module.parameters()), None)
    module.train()  # bundles come back from load()/sampling in eval mode; Lightning keeps the mode it finds
    trainer.fit(module, train_dataloaders=dataloader, val_dataloaders=val_dataloaders, ckpt_path=ckpt_path)
    module.eval()
    if device is not None:  # Lightning's teardown moves the module to the CPU: on a GPU, everything after a
        module.to(device)  # fit (verification, FID sampling, the next stage) would otherwise run on the CPU
    return trainer
