"""Where a model's samples are scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adaptguard.data.base import CaptionedImageDataModule


@dataclass(frozen=True)
class EvalDomain:
    """FID/KID of samples against the real images of ``data``'s ``split``; ``name`` labels the results."""

    name: str
    data: CaptionedImageDataModule
    split: str
