"""Fine-tuning attacks: full fine-tuning and LoRA (peft, through diffusers' adapter API).

The knobs are those of diffusers' training scripts (learning-rate schedule and warm-up,
gradient accumulation, max grad norm, text-encoder training, mixed precision, gradient
checkpointing) so an attack here is the attack people run; each maps onto the Lightning
Trainer or the diffusers model it belongs to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from adaptguard.attacks.base import Attack
from adaptguard.attacks.constraint import FineTuneConstraint
from adaptguard.attacks.lora import LoraSettings, add_lora, merge_lora, save_lora
from adaptguard.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.errors import require
from adaptguard.metrics.cost import StepTimer, parameter_counts
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import DenoisingModule, OptimConfig
from adaptguard.training.module import Objective

log = logging.getLogger(__name__)
PRECISIONS = {"no": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}
SAVE_MODES = ("merged", "adapter")


@dataclass
class FullFineTune(Attack):
    """Fine-tune every UNet weight (and optionally the text encoder) on the attacker's data."""

    steps: int = 300  # optimizer steps
    batch_size: int = 32
    lr: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    train_text_encoder: bool = False
    split: str = "attacker"
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None  # None: the trainer config's gradient_clip_val
    mixed_precision: str | None = None  # no | fp16 | bf16 (GPU); None: the trainer config's precision
    gradient_checkpointing: bool = False
    save: str | None = None  # merged | adapter (LoRA): write the attacked model to <out>/attacked_model/<split>

    name: str = "full"

    def __post_init__(self) -> None:
        require(self.steps >= 1, "attack.steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "attack.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "attack.lr", f"must be > 0, got {self.lr}")
        require(
            self.gradient_accumulation_steps >= 1,
            "attack.gradient_accumulation_steps",
            f"must be >= 1, got {self.gradient_accumulation_steps}",
        )
        require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            "attack.max_grad_norm",
            f"must be > 0 or null, got {self.max_grad_norm}",
        )
        require(
            self.mixed_precision is None or self.mixed_precision in PRECISIONS,
            "attack.mixed_precision",
            f"{self.mixed_precision!r} is not one of {sorted(PRECISIONS)} (or null)",
        )
        require(
            self.save is None or self.save in self.save_modes(),
            "attack.save",
            f"{self.save!r} is not one of {list(self.save_modes())} (or null) for attack={self.name}",
        )
        self._cost: dict[str, Any] = {}

    def save_modes(self) -> tuple[str, ...]:
        return ("merged",)

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
        loader = self.train_dataloader(model, data, ctx)  # before any change: DreamBooth samples from `model`
        attacked = model.clone()
        attacked.requires_grad_(False)
        attacked.unet.requires_grad_(True)
        if self.train_text_encoder:
            attacked.text_encoder.requires_grad_(True)
        frozen = constraint.apply(attacked) if constraint else 0
        self._cost = {"frozen_params": frozen, **self.prepare(attacked, constraint)}
        self._cost.update(parameter_counts(attacked))
        if self.gradient_checkpointing:
            attacked.unet.enable_gradient_checkpointing()
            if self.train_text_encoder:
                attacked.text_encoder.gradient_checkpointing_enable()
        optim = OptimConfig(
            lr=self.lr, weight_decay=self.weight_decay, lr_scheduler=self.lr_scheduler, warmup_steps=self.warmup_steps
        )
        module = DenoisingModule(attacked, optim, objective=self.objective(), log_prefix="attack", max_steps=self.steps)
        timer = StepTimer()
        ctx.fit(module, loader, self.steps, callbacks=[timer], **self.trainer_kwargs())
        if timer.mean_step_s is not None:  # per optimizer step
            self._cost["step_time_s"] = timer.mean_step_s * self.gradient_accumulation_steps
        if self.gradient_checkpointing:
            attacked.unet.disable_gradient_checkpointing()
            if self.train_text_encoder:
                attacked.text_encoder.gradient_checkpointing_disable()
        if self.save:
            self._cost["saved_to"] = str(self.save_model(attacked, Path(ctx.out_dir) / "attacked_model" / self.split))
        self.finish(attacked)
        attacked.requires_grad_(False)
        return attacked

    def trainer_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"accumulate_grad_batches": self.gradient_accumulation_steps}
        if self.max_grad_norm is not None:
            kw["gradient_clip_val"] = self.max_grad_norm
        if self.mixed_precision is not None:
            if self.mixed_precision != "no" and not torch.cuda.is_available():
                log.warning("attack.mixed_precision=%s needs a GPU; training in fp32 on the CPU", self.mixed_precision)
                kw["precision"] = "32-true"
            else:
                kw["precision"] = PRECISIONS[self.mixed_precision]
        self._cost["precision"] = kw.get("precision", "trainer config")
        return kw

    def save_model(self, model: DiffusionModel, path: Path) -> Path:
        snapshot = self.snapshot(model)
        snapshot.save(path)
        log.info("attack.save: attacked model written to %s", path)
        return path

    # hooks for subclasses
    def train_dataloader(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> DataLoader:
        return data.dataloader(self.split, self.batch_size)

    def objective(self) -> Objective | None:
        return None  # the plain denoising loss

    def prepare(self, model: DiffusionModel, constraint: FineTuneConstraint | None) -> dict[str, Any]:
        return {}

    def finish(self, model: DiffusionModel) -> None:
        pass

    def snapshot(self, model: DiffusionModel) -> DiffusionModel:
        """The model as the attacker would publish it now (mid-training probes evaluate this)."""
        return model

    def cost(self) -> dict[str, Any]:
        return dict(self._cost)


@dataclass
class LoraFineTune(FullFineTune):
    """Train low-rank adapters on the UNet's attention projections, then merge them.

    Modules whose weight a FineTuneConstraint freezes get no adapter (an adapter would
    change their effective weight); how many were skipped is logged and reported.
    ``train_text_encoder`` adds adapters to the text encoder's attention too.
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
        self.lora_settings().check()

    def save_modes(self) -> tuple[str, ...]:
        return SAVE_MODES

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(self.rank, self.alpha, self.dropout, list(self.target_modules))

    def prepare(self, model: DiffusionModel, constraint: FineTuneConstraint | None) -> dict[str, Any]:
        return add_lora(model, self.lora_settings(), constraint, text_encoder=self.train_text_encoder)

    def save_model(self, model: DiffusionModel, path: Path) -> Path:
        if self.save == "adapter":
            save_lora(model, path)
            log.info("attack.save: LoRA adapter written to %s (StableDiffusionPipeline.load_lora_weights)", path)
            return path
        return super().save_model(model, path)

    def finish(self, model: DiffusionModel) -> None:
        if self.merge:
            merge_lora(model)

    def snapshot(self, model: DiffusionModel) -> DiffusionModel:
        merged = model.clone()
        merge_lora(merged)
        return merged
