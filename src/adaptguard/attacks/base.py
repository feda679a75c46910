"""The attack protocol: adapt a (possibly protected) model, as a real attacker would."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from adaptguard.core.config import Validated, secret_fields
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.domains import EvalDomain
from adaptguard.core.errors import ConfigError
from adaptguard.core.redact import redact
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel


class Attack(Validated, ABC):
    """An adaptation of the published model. Subclasses are dataclasses whose fields are the ``attack.*`` keys."""

    config_key: ClassVar[str] = "attack"
    name: str = "attack"
    adapts: ClassVar[bool] = True  # False: the control (the model is used as published)
    # True: the experiment stages a leak and hands this attack the owner's key (RunContext.leaked_key); every
    # other attack never sees it
    reads_leaked_key: ClassVar[bool] = False
    # the option keys a results page's settings row shows (recorded in results.json's ``report``)
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "lr")

    @abstractmethod
    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        """Return the attacked model; ``model`` itself must be left unchanged."""

    @property
    def train_split(self) -> str | None:
        """The dataset split the attack trains on; None when it trains on no split (weight edits, a folder)."""
        return self.split if self._has_split() else None

    @property
    def training_steps(self) -> int | None:
        """Optimizer steps the attack trains for; None for attacks that do not train (weight edits)."""
        return None

    def snapshot(self, model: DiffusionModel) -> DiffusionModel:
        """The model under training as the attacker would publish it now (mid-training probes evaluate this)."""
        return model

    def _has_split(self) -> bool:
        return is_dataclass(self) and any(f.name == "split" for f in fields(self))

    def on_split(self, split: str) -> Attack:
        """The same attack trained on ``split`` (one run per adaptation domain); data-free attacks return self."""
        return replace(self, split=split) if self._has_split() else self

    def check_data(self, data: CaptionedImageDataModule) -> None:
        """Raise a ConfigError for missing data before any long work; data-free attacks need nothing."""
        if self._has_split():
            data.spec(self.split)

    def eval_domain(self, data: CaptionedImageDataModule, resolution: int) -> EvalDomain | None:
        """Where to score the attack's own goal; None: the experiment's attacker split."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **(asdict(self) if is_dataclass(self) else {})}

    def public_config(self) -> dict[str, Any]:
        """``describe()`` with secret fields redacted."""
        return redact(self.describe(), secret_fields(type(self)))

    def cost(self) -> dict[str, Any]:
        """Cost of the last run (trainable parameters, step time, ...); empty if free."""
        return {}


class SourcedAttack(Attack):
    """An attack whose ingredient (a checkpoint to merge, a VAE) is trained here on ``split`` (the option
    ``trained_source``), is the experiment's base model (``base``), or is a folder: ``source_key`` names the
    field that says which."""

    source_key: ClassVar[str]
    trained_source: ClassVar[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        self._cost: dict[str, Any] = {}

    @property
    def source(self) -> str:
        return getattr(self, self.source_key)

    @property
    def train_split(self) -> str | None:
        return self.split if self.source == self.trained_source else None  # type: ignore[attr-defined]

    def check_data(self, data: CaptionedImageDataModule) -> None:
        if self.source == self.trained_source:
            data.spec(self.split)  # type: ignore[attr-defined]
        elif self.source != "base" and not Path(self.source).expanduser().exists():
            raise ConfigError(f"attack.{self.source_key}: {Path(self.source).expanduser()} does not exist "
                              f"(or use {self.trained_source} | base)")  # fmt: skip

    def cost(self) -> dict[str, Any]:
        return dict(self._cost)
