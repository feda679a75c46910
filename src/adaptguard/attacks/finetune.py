"""Fine-tuning attacks: full fine-tuning and LoRA (peft, through diffusers' adapter API)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from peft import LoraConfig
from torch import nn

from adaptguard.attacks.base import Attack
from adaptguard.attacks.constraint import FineTuneConstraint
from adaptguard.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.errors import ConfigError
from adaptguard.metrics.cost import StepTimer, parameter_counts
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import DenoisingModule, OptimConfig

log = logging.getLogger(__name__)


@dataclass
class FullFineTune(Attack):
    """Fine-tune every UNet weight (and optionally the text encoder) on the attacker's data."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    train_text_encoder: bool = False
    split: str = "attacker"

    name: str = "full"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"attack.steps: must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"attack.batch_size: must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"attack.lr: must be > 0, got {self.lr}")
        self._cost: dict[str, Any] = {}

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        # adapters are initialised before ctx.fit seeds the loop: seed here too, so the attack
        # does not depend on what the process ran before (a cached vs a fresh protection)
        L.seed_everything(ctx.seed, verbose=False)
        attacked = model.clone()
        attacked.requires_grad_(False)
        attacked.unet.requires_grad_(True)
        if self.train_text_encoder:
            attacked.text_encoder.requires_grad_(True)
        frozen = constraint.apply(attacked) if constraint else 0
        self._cost = {"frozen_params": frozen, **self.prepare(attacked, constraint)}
        self._cost.update(parameter_counts(attacked))
        optim = OptimConfig(
            lr=self.lr, weight_decay=self.weight_decay, lr_scheduler=self.lr_scheduler, warmup_steps=self.warmup_steps
        )
        module = DenoisingModule(attacked, optim, log_prefix="attack", max_steps=self.steps)
        timer = StepTimer()
        ctx.fit(module, data.dataloader(self.split, self.batch_size), self.steps, callbacks=[timer])
        self._cost["step_time_s"] = timer.mean_step_s
        self.finish(attacked)
        attacked.requires_grad_(False)
        return attacked

    # hooks for subclasses
    def prepare(self, model: DiffusionModel, constraint: FineTuneConstraint | None) -> dict[str, Any]:
        return {}

    def finish(self, model: DiffusionModel) -> None:
        pass

    def cost(self) -> dict[str, Any]:
        return dict(self._cost)


@dataclass
class LoraFineTune(FullFineTune):
    """Train low-rank adapters on the UNet's attention projections, then merge them.

    Modules whose weight a FineTuneConstraint freezes get no adapter (an adapter would
    change their effective weight); how many were skipped is logged and reported.
    """

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    merge: bool = True
    lr: float = 1e-3

    name: str = "lora"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ConfigError(f"attack.rank: must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ConfigError("attack.target_modules: must name at least one module suffix, e.g. [to_q, to_v]")
        if self.train_text_encoder:
            raise ConfigError("attack.train_text_encoder: not supported for attack=lora yet; use attack=full")

    def prepare(self, model: DiffusionModel, constraint: FineTuneConstraint | None) -> dict[str, Any]:
        model.unet.requires_grad_(False)
        matched, skipped = [], []
        for name, module in model.unet.named_modules():
            if not isinstance(module, nn.Linear | nn.Conv2d):
                continue
            if not any(name == t or name.endswith("." + t) for t in self.target_modules):
                continue
            (skipped if constraint and constraint.freezes_module(f"unet.{name}") else matched).append(name)
        if skipped:
            log.info(
                "LoRA: skipped %d of %d target modules frozen by the defense", len(skipped), len(matched) + len(skipped)
            )
        if not matched:
            raise ConfigError(
                f"attack.target_modules: {self.target_modules} matched no trainable UNet module"
                + (f" ({len(skipped)} matched but are frozen by the defense)" if skipped else "")
            )
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            init_lora_weights="gaussian",
            target_modules=matched,
        )
        model.unet.add_adapter(config)
        return {"lora_modules": len(matched), "lora_skipped_frozen": len(skipped)}

    def finish(self, model: DiffusionModel) -> None:
        if self.merge:
            model.unet.fuse_lora()
            model.unet.unload_lora()
