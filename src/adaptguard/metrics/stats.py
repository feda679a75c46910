"""Verification statistics shared by every watermark defense.

A verification runs ``trials`` independent checks (images for output-space watermarks,
subpaths for AIAO); each trial yields a score, usually the number of matching bits out
of ``n_bits``. Under the null hypothesis (model not watermarked with this key) matches
are Binomial(n_bits, 1/2), which fixes the per-trial threshold from a target false-
positive rate *before* any result is seen. The model-level decision tests the number of
successful trials against Binomial(trials, per-trial FPR). TPR at a fixed FPR uses a
threshold calibrated on scores of never-watermarked models only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from adaptguard.core.verification import Verification


def binomial_tail(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    return float(stats.binom.sf(k - 1, n, p))


def binomial_threshold(n: int, fpr: float, p: float = 0.5) -> int:
    """Smallest k with P(X >= k) <= fpr; ``n + 1`` if even all n matches is too likely."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    k = int(stats.binom.isf(fpr, n, p)) + 1  # isf gives the largest k with sf(k) > fpr, roughly
    while k > 0 and binomial_tail(k - 1, n, p) <= fpr:
        k -= 1
    while k <= n and binomial_tail(k, n, p) > fpr:
        k += 1
    return k


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion."""
    if trials == 0:
        return (0.0, 1.0)
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return (lo, hi)


@dataclass(frozen=True)
class SeedInterval:
    """A mean over independent repeats (seeds: key, data order, noise) with its t-based interval.

    The spread between seeds is the point: a pooled binomial interval over every trial of every seed
    would treat one key's 64 trials as 64 independent draws of the method and hide the key's effect.
    """

    mean: float
    low: float | None  # None with one value: no spread to estimate
    high: float | None
    n: int
    sd: float | None

    @classmethod
    def of(cls, values: Sequence[float], level: float = 0.95) -> SeedInterval:
        x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        if len(x) == 0:
            return cls(math.nan, None, None, 0, None)
        if len(x) == 1:
            return cls(float(x[0]), None, None, 1, None)
        sd = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
        return cls(float(x.mean()), float(x.mean() - half), float(x.mean() + half), len(x), sd)


def calibrate_threshold(null_scores: Sequence[float], fpr: float) -> float:
    """Smallest threshold t with empirical P(null >= t) <= fpr (scores above t: detected).

    Uses only never-watermarked scores. With fewer than 1/fpr scores the threshold is
    the maximum null score plus a hair (no null score passes), which is conservative.
    """
    s = np.sort(np.asarray(null_scores, dtype=float))
    if s.size == 0:
        raise ValueError("calibrate_threshold needs at least one null score")
    allowed = math.floor(fpr * s.size)  # how many null scores may pass
    if allowed == 0:
        return float(np.nextafter(s[-1], np.inf))
    # threshold just above the (allowed+1)-th largest so at most `allowed` pass
    t = float(np.nextafter(s[-(allowed + 1)], np.inf))
    return t


def random_key_matches(bits: torch.Tensor, n_keys: int, seed: int) -> torch.Tensor:
    """Matches of each row of ``bits`` (N, n_bits) against ``n_keys`` fixed random keys, flattened.

    The keys are independent of the model, so these are exact null scores for the
    matching-bits statistic (used for TPR at empirical FPRs).
    """
    rand = torch.randint(0, 2, (n_keys, bits.shape[1]), generator=torch.Generator().manual_seed(seed))
    return (bits[:, None, :] == rand[None].to(bits.dtype).to(bits.device)).sum(-1).flatten()


@dataclass
class RateAtFPR:
    fpr: float
    threshold: float
    tpr: float
    ci: tuple[float, float]
    achieved_fpr: float
    n_null: int
    underpowered: bool  # fewer null scores than 1/fpr: threshold is max(null)


def tpr_at_fpr(scores: Sequence[float], null_scores: Sequence[float], fpr: float) -> RateAtFPR:
    t = calibrate_threshold(null_scores, fpr)
    scores = np.asarray(scores, dtype=float)
    null = np.asarray(null_scores, dtype=float)
    hits = int((scores >= t).sum())
    return RateAtFPR(
        fpr=fpr,
        threshold=t,
        tpr=hits / max(len(scores), 1),
        ci=clopper_pearson(hits, len(scores)),
        achieved_fpr=float((null >= t).mean()),
        n_null=int(null.size),
        underpowered=null.size * fpr < 1,
    )


def bit_match_verification(
    matches: Sequence[int],
    n_bits: int,
    fpr: float,
    model_fpr: float,
    null_matches: Sequence[int] = (),
    figures: dict[str, float] | None = None,
    details: dict[str, Any] | None = None,
) -> Verification:
    """Per-trial one-sided binomial test on matching bits, then a model-level test.

    A trial passes when its matches reach ``binomial_threshold(n_bits, fpr)``; the model is
    detected when that many passing trials would happen with probability <= ``model_fpr``
    in a model that does not carry the watermark.
    """
    matches = [int(m) for m in matches]
    k = binomial_threshold(n_bits, fpr)
    successes = sum(m >= k for m in matches)
    trials = len(matches)
    p_value = binomial_tail(successes, trials, fpr)
    return Verification(
        detected=trials > 0 and p_value <= model_fpr,
        rate=successes / trials if trials else 0.0,
        trials=trials,
        successes=successes,
        ci=clopper_pearson(successes, trials),
        p_value=p_value,
        trial_threshold=k,
        statistic=f"matching bits of {n_bits}",
        scores=[float(m) for m in matches],
        null_scores=[float(m) for m in null_matches],
        figures={**({"bit_accuracy": float(np.mean(matches) / n_bits)} if matches else {}), **(figures or {})},
        details={"fpr": fpr, "model_fpr": model_fpr, **(details or {})},
    )
