"""A defense's secret and what ``protect`` returns."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from adaptguard.core.private import private_file

if TYPE_CHECKING:
    from adaptguard.models.bundle import DiffusionModel


class SecretKey:
    """Base for a defense's secret (triggers, bits, masks): saved beside the protected model.

    Subclasses are dataclasses of tensors / strings / numbers. ``__repr__`` is redacted so
    a key never lands in a log line by accident.
    """

    FILE: ClassVar[str] = "key.pt"

    def save(self, folder: Path) -> None:
        """Owner-only (0600) from the first byte."""
        with private_file(Path(folder) / self.FILE) as handle:
            torch.save({f.name: getattr(self, f.name) for f in fields(self)}, handle)

    @classmethod
    def load(cls, folder: Path) -> SecretKey:
        return cls(**torch.load(Path(folder) / cls.FILE, weights_only=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"

    __str__ = __repr__


@dataclass
class Protected:
    """A protected copy of the model (or the model itself, for defenses that only constrain) and its key."""

    model: DiffusionModel
    key: SecretKey | None = None
    info: dict[str, Any] | None = None  # non-secret facts about the embedding (losses, steps, ...)
