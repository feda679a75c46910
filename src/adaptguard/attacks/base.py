"""The attack protocol: adapt a (possibly protected) model, as a real attacker would."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any

from adaptguard.attacks.constraint import FineTuneConstraint
from adaptguard.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel


@dataclass(frozen=True)
class EvalDomain:
    """Where an attack's success is scored: FID/KID of samples on ``data``'s ``split``."""

    name: str
    data: CaptionedImageDataModule
    split: str


class Attack(ABC):
    name: str = "attack"

    @abstractmethod
    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        """Return the attacked model; ``model`` itself must be left unchanged."""

    def on_split(self, split: str) -> Attack:
        """The same attack trained on ``split`` (one run per adaptation domain); data-free attacks return self."""
        if is_dataclass(self) and any(f.name == "split" for f in fields(self)):
            return replace(self, split=split)
        return self

    def check_data(self, data: CaptionedImageDataModule) -> None:
        """Raise a ConfigError for missing data before any long work; data-free attacks need nothing."""
        if is_dataclass(self) and any(f.name == "split" for f in fields(self)):
            data.spec(self.split)

    def eval_domain(self, data: CaptionedImageDataModule, resolution: int) -> EvalDomain | None:
        """Where to score the attack's own goal; None: the experiment's attacker split."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **(asdict(self) if is_dataclass(self) else {})}

    def cost(self) -> dict[str, Any]:
        """Cost of the last run (trainable parameters, step time, ...); empty if free."""
        return {}
