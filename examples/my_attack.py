"""Example attack: fine-tune only the UNet's normalisation layers on the attacker's data.

A cheap adaptation (a few thousand parameters) run by the library's one fine-tuning recipe,
``training.finetune``, which copies the model, trains what ``trainable`` selects and honours the defense's
constraint (frozen tensors get no gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from adaptguard.attacks.base import Attack
from adaptguard.core.config import setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import OptimConfig, TrainSettings, finetune


def norm_parameters(model: DiffusionModel) -> list[nn.Parameter]:
    """The scales and shifts of the UNet's GroupNorm and LayerNorm layers."""
    norms = [m for m in model.unet.modules() if isinstance(m, nn.GroupNorm | nn.LayerNorm)]
    return [p for m in norms for p in m.parameters()]


@dataclass
class MyAttack(Attack):
    steps: int = setting(100, ge=1, doc="optimizer steps")
    batch_size: int = setting(16, ge=1, doc="images per step")
    lr: float = setting(1e-3, gt=0, doc="learning rate (AdamW)")
    split: str = setting("attacker", doc="the training data (`eval.adaptation` runs the attack once per domain)")
    name: str = setting("example", doc="label in results and logs")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._cost: dict[str, Any] = {}

    @property
    def training_steps(self) -> int:
        return self.steps

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        settings = TrainSettings(self.steps, OptimConfig(lr=self.lr), log_prefix="attack", lr_key="attack.lr")
        loader = data.dataloader(self.split, self.batch_size)
        tuned = finetune(model, loader, settings, ctx, trainable=norm_parameters, constraint=constraint)
        self._cost = tuned.cost  # trainable parameters, step time, ...
        return tuned.model

    def cost(self) -> dict[str, Any]:
        return dict(self._cost)
