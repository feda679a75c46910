"""The random-freezing baseline: FreezeAsGuard's constraint with a mask drawn at random."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from adaptguard.core.config import setting
from adaptguard.core.context import RunContext
from adaptguard.core.keys import Protected
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.freezing import (
    FreezingDefense,
    RatioBy,
    candidate_sizes,
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

    rho: float = setting(0.5, ge=0, le=1, doc="freeze ratio: the share of the UNet frozen")
    ratio_by: RatioBy = setting(
        "tensors", doc="what rho counts: exactly round(rho·n) tensors, or the closest share of parameters"
    )
    mask_seed: int | None = setting(
        None,
        secret=True,
        doc="null: the mask is drawn from `seed` (`adaptguard protect`: a fresh one); an int fixes it",
    )

    name: str = setting("random_freeze", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ("rho",)

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        sizes = candidate_sizes(model)
        seed = ctx.key_seed(self.mask_seed)
        scores = random_scores(sizes, seed)
        frozen = project_to_ratio(scores, sizes, self.rho, self.ratio_by)
        return Protected(model=model, key=hard_mask(frozen, scores), info={"mask": freeze_ratios(frozen, sizes)})
