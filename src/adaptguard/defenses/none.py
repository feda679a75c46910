"""The control: publish the base model unprotected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from adaptguard.core.context import RunContext
from adaptguard.core.keys import Protected
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense
from adaptguard.models.bundle import DiffusionModel


@dataclass
class NoDefense(Defense):
    """The control every defense is compared with: nothing embedded, nothing to verify."""

    name: str = "none"
    modifies_weights: ClassVar[bool] = False
    report_options: ClassVar[tuple[str, ...]] = ()
    report_reference: ClassVar[bool] = True  # what constrained fine-tuning is measured against

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        return Protected(model=model, key=None, info={})
