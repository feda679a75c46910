"""The defense protocol: protect a model, verify ownership, constrain fine-tuning."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from adaptguard.attacks.constraint import FineTuneConstraint
from adaptguard.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.metrics.stats import Verification
from adaptguard.models.bundle import DiffusionModel


class SecretKey:
    """Base for a defense's secret (triggers, bits, masks): saved beside the protected model.

    Subclasses are dataclasses of tensors / strings / numbers. ``__repr__`` is redacted so
    a key never lands in a log line by accident.
    """

    FILE: ClassVar[str] = "key.pt"

    def save(self, folder: Path) -> None:
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, Path(folder) / self.FILE)

    @classmethod
    def load(cls, folder: Path) -> SecretKey:
        return cls(**torch.load(Path(folder) / cls.FILE, weights_only=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"

    __str__ = __repr__


@dataclass
class Protected:
    model: DiffusionModel
    key: SecretKey | None = None
    info: dict[str, Any] | None = None  # non-secret facts about the embedding (loss, steps, ...)


class Defense(ABC):
    name: str = "defense"
    key_type: type[SecretKey] | None = None

    @abstractmethod
    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        """Return a protected copy of ``model`` (``model`` itself is left unchanged) and its key."""

    def verify(self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext) -> Verification | None:
        """Does ``model`` carry the watermark of ``key``? ``None`` for non-watermark defenses."""
        return None

    def constraint(self, key: SecretKey | None) -> FineTuneConstraint | None:
        return None

    def describe(self) -> dict[str, Any]:
        """The config that determines the protected model (used in cache keys)."""
        return {"name": self.name, **(asdict(self) if is_dataclass(self) else {})}

    # persistence of a protected model in the artifact cache
    def save_protected(self, protected: Protected, folder: Path) -> None:
        protected.model.save(folder / "model")
        if protected.key is not None:
            protected.key.save(folder)
        (folder / "info.json").write_text(json.dumps(protected.info or {}, indent=2))

    def load_protected(self, folder: Path, like: DiffusionModel) -> Protected:
        model = DiffusionModel.load(folder / "model", sampler=like.sampler)
        key = self.key_type.load(folder) if self.key_type is not None else None
        info = json.loads((folder / "info.json").read_text())
        return Protected(model=model.to(like.device), key=key, info=info)
