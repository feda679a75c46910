"""The random-freezing baseline: FreezeAsGuard's constraint with a mask drawn at random."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from adaptguard.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Protected
from adaptguard.defenses.freezing import (
    FreezingDefense,
    candidate_sizes,
    check_ratio,
    freeze_ratios,
    hard_mask,
    project_to_ratio,
    random_scores,
)
from adaptguard.models.bundle import DiffusionModel


@dataclass
class RandomFreezeDefense(FreezingDefense):
    """Freeze a random share ``rho`` of the UNet's tensors (``by=tensors``) or parameters (``by=params``).

    Answers whether a learned mask beats any mask of the same size.
    """

    rho: float = 0.5
    ratio_by: str = "tensors"  # tensors | params
    mask_seed: int | None = field(
        default=None, repr=False
    )  # null: a fresh random mask; an int reproduces one (redacted)

    name: str = "random_freeze"

    def __post_init__(self) -> None:
        check_ratio(self.rho, self.ratio_by)

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        sizes = candidate_sizes(model)
        seed = self.mask_seed if self.mask_seed is not None else secrets.randbits(62)
        scores = random_scores(sizes, seed)
        frozen = project_to_ratio(scores, sizes, self.rho, self.ratio_by)
        return Protected(model=model, key=hard_mask(frozen, scores), info={"mask": freeze_ratios(frozen, sizes)})
