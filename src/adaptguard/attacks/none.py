"""The control: the model is published and used as is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from adaptguard.attacks.base import Attack
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel


@dataclass
class NoAttack(Attack):
    """No adaptation: verification and quality of the model as published."""

    name: str = "none"
    adapts: ClassVar[bool] = False
    report_options: ClassVar[tuple[str, ...]] = ()

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        return model
