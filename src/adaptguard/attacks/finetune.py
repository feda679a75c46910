"""Fine-tuning attacks: full fine-tuning and LoRA (peft, through diffusers' adapter API).

The knobs are those of diffusers' training scripts (learning-rate schedule and warm-up,
gradient accumulation, max grad norm, text-encoder training, mixed precision) so an attack
here is the attack people run; gradient checkpointing is the model's setting
(``model.gradient_checkpointing``), as it applies to every training stage.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch

from adaptguard.attacks.base import Attack
from adaptguard.core import ranks
from adaptguard.core.config import setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.errors import require
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.lora import LoraSettings, add_lora, merge_lora, save_lora
from adaptguard.training import Objective, OptimConfig, TrainSettings, finetune

log = logging.getLogger(__name__)
PRECISIONS = {"no": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}
SaveMode = Literal["merged", "adapter"]


# one key, two attacks (the keys table shows one description per key)
ALPHA_DOC = (
    "lora: the LoRA scale (alpha / rank multiplies the update); merge: the other checkpoint's weight (of its "
    "difference, add_difference)"
)


@dataclass
class FineTuning(Attack):
    """What every fine-tuning attack shares: the training knobs of diffusers' scripts."""

    # 100: where full's and LoRA's gain on the tiny testbed's attacker domain plateaus (docs/attacks.md)
    steps: int = setting(100, ge=1, doc="optimizer steps")
    batch_size: int = setting(32, ge=1, doc="images per micro-batch")
    lr: float = setting(
        1e-4, gt=0, doc="learning rate; for Stable Diffusion DreamBooth use diffusers' 5e-6 (LoRA 1e-4)"
    )
    optimizer: Literal["adamw", "adam", "sgd"] = setting(
        "adamw", doc="the torch.optim optimizer (betas 0.9, 0.999 where they apply)"
    )
    lr_scheduler: str = setting("constant", doc="any `diffusers.optimization` schedule name")
    warmup_steps: int = setting(0, ge=0, doc="learning-rate warm-up steps of the schedule")
    weight_decay: float = setting(1e-2, ge=0, doc="the optimizer's weight decay")
    train_text_encoder: bool = setting(False, doc="also train the text encoder (LoRA: its attention adapters)")
    gradient_accumulation_steps: int = setting(
        1, ge=1, doc="micro-batches per optimizer step (`steps` counts optimizer steps)"
    )
    max_grad_norm: float | None = setting(None, gt=0, doc="gradient clipping; null: none (diffusers' scripts use 1.0)")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = setting(
        None, doc="on a GPU (the CPU trains in fp32 and warns); null: the trainer's precision"
    )
    save: SaveMode | None = setting(
        None,
        doc="`merged` writes the attacked model to `<run>/attacked_model/<split>/` (dreambooth: `subject/`) in "
        "diffusers' layout; `adapter` (LoRA) writes diffusers' LoRA file",
    )

    save_modes: ClassVar[tuple[str, ...]] = ("merged",)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.save is None or self.save in self.save_modes,
            "attack.save",
            f"{self.save!r} is not one of {list(self.save_modes)} (or null) for attack={self.name}",
        )
        self._cost: dict[str, Any] = {}

    @property
    def training_steps(self) -> int:
        return self.steps

    # hooks for subclasses
    @abstractmethod
    def train_dataloader(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Any:
        """The attacker's training batches (built before training: DreamBooth samples from ``model``)."""

    @property
    def output_name(self) -> str:
        """Folder name of a saved attacked model under ``attacked_model/``."""
        return self.name

    def objective(self) -> Objective | None:
        return None  # the plain denoising loss

    def prepare(self, model: DiffusionModel, constraint: FineTuneConstraint | None) -> dict[str, Any]:
        """Change the trainable copy before training (e.g. add adapters); returns facts for the cost report."""
        return {}

    def finish(self, model: DiffusionModel) -> None:
        """Turn the trained copy into the model as published (LoRA: merge the adapters)."""

    # the recipe
    def settings(self) -> TrainSettings:
        optim = OptimConfig(
            lr=self.lr,
            weight_decay=self.weight_decay,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            warmup_steps=self.warmup_steps,
        )
        return TrainSettings(
            self.steps, optim, max_grad_norm=self.max_grad_norm,
            gradient_accumulation_steps=self.gradient_accumulation_steps, precision=self.precision(),
            log_prefix="attack", lr_key="attack.lr",
        )  # fmt: skip

    def precision(self) -> str | None:
        if self.mixed_precision is None:
            return None
        if self.mixed_precision != "no" and not torch.cuda.is_available():
            log.warning("attack.mixed_precision=%s needs a GPU; training in fp32 on the CPU", self.mixed_precision)
            return "32-true"
        return PRECISIONS[self.mixed_precision]

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        # adapters are initialised before fit seeds the loop: seed here too, so the attack
        # does not depend on what the process ran before (a cached vs a fresh protection)
        L.seed_everything(ctx.seed, verbose=False)
        loader = self.train_dataloader(model, data, ctx)  # before any change: DreamBooth samples from `model`
        settings = self.settings()
        tuned = finetune(
            model, loader, settings, ctx, objective=self.objective(), constraint=constraint,
            trainable="unet+text_encoder" if self.train_text_encoder else "unet",
            prepare=lambda m: self.prepare(m, constraint),
        )  # fmt: skip
        self._cost = {**tuned.cost, "precision": settings.precision or "trainer config"}
        self.save_attacked(tuned.model, ctx)
        self.finish(tuned.model)
        return tuned.model

    def save_attacked(self, model: DiffusionModel, ctx: RunContext) -> None:
        """``attack.save``: write the attacked model (on the main rank) and record where."""
        if self.save:
            path = Path(ctx.out_dir) / "attacked_model" / self.output_name
            self._cost["saved_to"] = str(self.save_model(model, path) if ranks.is_main() else path)

    def save_model(self, model: DiffusionModel, path: Path) -> Path:
        self.snapshot(model).save(path)
        log.info("attack.save: attacked model written to %s", path)
        return path

    def cost(self) -> dict[str, Any]:
        return dict(self._cost)


@dataclass
class FullFineTune(FineTuning):
    """Fine-tune every UNet weight (and optionally the text encoder) on the attacker's data."""

    split: str = setting("attacker", doc="the dataset split the attacker adapts to")
    name: str = setting("full", doc="label in results and logs")

    @property
    def output_name(self) -> str:
        return self.split

    def train_dataloader(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Any:
        return data.dataloader(self.split, self.batch_size)


@dataclass
class LoraOptions:
    """LoRA adapters on the UNet's attention projections (and the text encoder's with
    ``train_text_encoder``), merged afterwards unless ``merge`` is false. Modules whose weight a
    FineTuneConstraint freezes get no adapter (it would change their effective weight)."""

    rank: int = setting(4, ge=1, doc="LoRA adapter rank")
    alpha: float = setting(4.0, gt=0, doc=ALPHA_DOC)
    dropout: float = setting(0.0, ge=0, lt=1, doc="LoRA dropout")
    target_modules: list[str] = setting(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        nonempty=True,
        doc="module name suffixes that get LoRA adapters",
    )
    merge: bool = setting(True, doc="fold the LoRA adapters into the weights after training")

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(self.rank, self.alpha, self.dropout, list(self.target_modules))

    def add_adapters(self, model: DiffusionModel, constraint: FineTuneConstraint | None, text: bool) -> dict[str, Any]:
        return add_lora(model, self.lora_settings(), constraint, text_encoder=text)

    def save_adapters(self, model: DiffusionModel, path: Path) -> Path:
        save_lora(model, path)
        log.info("attack.save: LoRA adapter written to %s (StableDiffusionPipeline.load_lora_weights)", path)
        return path

    def merged(self, model: DiffusionModel) -> DiffusionModel:
        copy = model.clone()
        merge_lora(copy)
        return copy


@dataclass
class LoraFineTune(LoraOptions, FullFineTune):
    """Train low-rank adapters on the attacker's data, then merge them into the weights."""

    lr: float = setting(1e-3, gt=0)
    name: str = "lora"
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "lr", "rank")

    save_modes: ClassVar[tuple[str, ...]] = ("merged", "adapter")

    def prepare(self, model: DiffusionModel, constraint: FineTuneConstraint | None) -> dict[str, Any]:
        return self.add_adapters(model, constraint, self.train_text_encoder)

    def save_model(self, model: DiffusionModel, path: Path) -> Path:
        return self.save_adapters(model, path) if self.save == "adapter" else super().save_model(model, path)

    def finish(self, model: DiffusionModel) -> None:
        if self.merge:
            merge_lora(model)

    def snapshot(self, model: DiffusionModel) -> DiffusionModel:
        return self.merged(model)
