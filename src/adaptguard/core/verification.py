"""The outcome of verifying one model with one key: every watermark defense returns this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Verification:
    """``trials`` independent checks (images, subpaths), each scored and tested on its own, then
    a model-level decision. ``figures`` are the defense's own headline numbers (``bit_accuracy``,
    ``untriggered_rate``, ...): reports show every one of them without knowing what they mean."""

    detected: bool
    rate: float  # fraction of trials that passed their per-trial test
    trials: int
    successes: int
    ci: tuple[float, float]  # Clopper-Pearson 95 % interval on ``rate``
    p_value: float  # model level: P(>= successes passing trials | not watermarked)
    trial_threshold: float  # score a trial needs to pass
    statistic: str  # what a score is, e.g. "matching bits of 64"
    scores: list[float] = field(default_factory=list)
    null_scores: list[float] = field(default_factory=list)  # the same trials scored against random keys
    figures: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # how it was decided (thresholds, FPRs, ...)

    def summary(self) -> dict[str, Any]:
        """JSON-able, without the per-trial score lists."""
        d = asdict(self)
        d.pop("scores")
        d.pop("null_scores")
        d["ci"] = list(self.ci)
        d["mean_score"] = float(np.mean(self.scores)) if self.scores else None
        return d
