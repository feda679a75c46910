"""Verification statistics shared by every watermark defense.

A verification runs ``trials`` checks (images for output-space watermarks, subpaths for AIAO); each
trial reads ``n_bits`` bits from the model and compares them with the key's bits. Under the null
hypothesis (the model was not watermarked with this key) the key's bits are uniform and independent of
what the model produces, so each trial's matches are Binomial(n_bits, 1/2): that fixes the per-trial
threshold from a target false-positive rate *before* any result is seen.

Trials are not independent of each other, though: images drawn from one prompt can be near-identical,
and then a key that happens to match one matches them all. So the model-level decision does not
multiply per-trial evidence. It is a **key-randomization test**: the same read bits are scored against
many random keys (uniform bits, independent of the secret one), and the p-value is the share of random
keys whose evidence reaches the owner's key's, ``(1 + #{>=}) / (1 + N)``. The evidence combines two
summaries of the trials by their smaller p-value (:func:`trial_statistics`): the best trial, and the
matches summed over the passing trials; nothing is detected without a passing trial. Conditional on
the model's outputs the owner's key is one more uniform draw under the null, so this p-value is valid
whatever the dependence between trials (a Monte-Carlo permutation test). The binomial p-value that
assumes independent trials is kept in ``details`` for comparison. TPR at a fixed FPR uses a threshold
calibrated on scores of never-watermarked models only.
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


def randomization_keys(model_fpr: float) -> int:
    """Random keys per decision: p-values resolve to ``model_fpr / 10``, so a clear watermark is detected at
    the target, and the Monte-Carlo error of the decision is small."""
    return max(999, math.ceil(10 / model_fpr))


RANDOMIZATION_SEED = 20261203  # random keys are independent of any owner's key: a fixed draw is a valid null


def bit_matches(read: torch.Tensor, key: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Matching bits of each trial: ``read`` (T, n) in {0, 1} against row ``groups[t]`` of ``key`` (G, n)
    (a 1-d ``key``: every trial against it)."""
    key = key.view(-1, read.shape[1]) if key.dim() == 1 else key
    rows = key[groups] if groups is not None else key[0].expand_as(read)
    return (read.to(torch.uint8) == rows.to(torch.uint8)).sum(1)


def trial_statistics(matches: torch.Tensor, threshold: int) -> torch.Tensor:
    """(..., 2): the two summaries of a verification's trials (last dimension) the decision combines.

    - the best trial's matching bits: a few trials that read the key perfectly are strong evidence, however
      many near-identical others there are (30 copies of one image are one image's evidence);
    - matching bits summed over the passing trials: many trials that each pass clearly, none perfectly.
    """
    best = matches.max(-1).values
    passing = (matches * (matches >= threshold - 0.5)).sum(-1)
    return torch.stack([best, passing], -1)


def paired_trial_statistics(matches: torch.Tensor, baseline: torch.Tensor, threshold: int) -> torch.Tensor:
    """(..., 2): :func:`trial_statistics` of what the trigger adds. A trial's gain is its triggered matches
    minus the untriggered matches of the same inputs, and it passes when the triggered read passes and the
    untriggered one does not: a response the model gives with or without the trigger is not counted."""
    gain = matches - baseline
    passing = (matches >= threshold - 0.5) & (baseline < threshold - 0.5)
    return torch.stack([gain.max(-1).values, (gain * passing).sum(-1)], -1)


def _random_key_match_chunks(
    reads: Sequence[torch.Tensor], n_groups: int, groups: torch.Tensor | None, n_keys: int, seed: int
):
    """Per chunk of uniform random keys, each read's (keys, trials) matches against them: the same keys for
    every read, so a triggered and an untriggered read are compared on one key."""
    t, n = reads[0].shape
    rs = [r.float() for r in reads]
    groups = groups if groups is not None else torch.zeros(t, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n_keys, 4096):
        c = min(4096, n_keys - start)
        keys = torch.randint(0, 2, (n_groups, c, n), generator=g).float()
        out = [torch.zeros(c, t) for _ in rs]
        for group in range(n_groups):
            rows = groups == group  # matches = n - hamming, hamming = |read| + |key| - 2 <read, key>
            if rows.any():
                k = keys[group]
                for matches, r in zip(out, rs, strict=True):
                    x = r[rows]
                    matches[:, rows] = n - (x.sum(1)[None] + k.sum(1, keepdim=True) - 2 * k @ x.T)
        yield out


def random_key_statistics(
    read: torch.Tensor,
    n_groups: int,
    groups: torch.Tensor | None,
    threshold: int,
    n_keys: int,
    seed: int,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n_keys, 2): :func:`trial_statistics` of ``read`` against each of ``n_keys`` uniform random keys; with
    ``baseline`` (the untriggered read of the same inputs), :func:`paired_trial_statistics`."""
    reads = [read] if baseline is None else [read, baseline]
    out = []
    for m in _random_key_match_chunks(reads, n_groups, groups, n_keys, seed):
        stats = trial_statistics(m[0], threshold) if baseline is None else paired_trial_statistics(*m, threshold)
        out.append(stats.double())
    return torch.cat(out)


def randomization_p_value(observed: torch.Tensor, null: torch.Tensor) -> float:
    """Exact Monte-Carlo p-value of the smaller of the two statistics' p-values (a min-p combination).

    The owner's key and the N random keys are exchangeable under the null, so each of the N + 1 gets, per
    statistic, the share of the N + 1 at least as large; the combined statistic is the smaller share, and
    the p-value is the share of the N + 1 whose combined statistic is at most the owner's.
    """
    values = torch.cat([observed.view(1, -1).double(), null], 0)  # (N + 1, 2); row 0 is the owner's key
    n = values.shape[0]
    shares = torch.empty_like(values)
    for j in range(values.shape[1]):
        column = values[:, j]
        ordered = torch.sort(column).values
        at_least = n - torch.searchsorted(ordered, column - 1e-9)  # how many values are >= each value
        shares[:, j] = at_least.double() / n
    combined = shares.min(1).values
    return float((combined <= combined[0] + 1e-12).sum()) / n


def bit_match_verification(
    read: torch.Tensor,
    key: torch.Tensor,
    fpr: float,
    model_fpr: float,
    groups: torch.Tensor | None = None,
    null_matches: Sequence[int] = (),
    figures: dict[str, float] | None = None,
    details: dict[str, Any] | None = None,
    baseline: torch.Tensor | None = None,
) -> Verification:
    """Per-trial binomial threshold on matching bits, then the model-level key-randomization test.

    ``read``: (trials, n_bits) bits read from the model; ``key``: the owner's bits, (n_bits,) or one row per
    group (AIAO: per response block) with ``groups`` naming each trial's row. A trial passes at
    ``binomial_threshold(n_bits, fpr)`` matches; the model is detected when the randomization p-value of its
    passing trials is <= ``model_fpr``. ``baseline``: the same inputs read without the trigger, for the paired
    test (:func:`paired_trial_statistics`: a lean towards the key without the trigger is not counted)."""
    read = read.detach().cpu().to(torch.uint8)
    key = key.detach().cpu().to(torch.uint8)
    key = key.view(1, -1) if key.dim() == 1 else key
    groups = groups.detach().cpu().long() if groups is not None else None
    baseline = baseline.detach().cpu().to(torch.uint8) if baseline is not None else None
    n_bits = read.shape[1] if read.dim() == 2 else key.shape[1]
    k = binomial_threshold(n_bits, fpr)
    matches = bit_matches(read, key, groups).double() if read.numel() else torch.zeros(0)
    evidence = _Evidence(matches, bit_matches(baseline, key, groups).double() if baseline is not None else None, k)
    trials, successes = len(matches), evidence.successes
    n_keys = randomization_keys(model_fpr)
    p_value, null_best = 1.0, None
    if successes:  # without a passing trial nothing is detected, however the bits lean
        null = random_key_statistics(read, key.shape[0], groups, k, n_keys, RANDOMIZATION_SEED, baseline)
        p_value, null_best = randomization_p_value(evidence.statistics(), null), float(null[:, 0].max())
    independence_p = binomial_tail(successes, trials, fpr)
    return Verification(
        detected=trials > 0 and p_value <= model_fpr,
        rate=successes / trials if trials else 0.0,
        trials=trials,
        successes=successes,
        ci=clopper_pearson(successes, trials),
        p_value=p_value,
        trial_threshold=k,
        statistic=f"matching bits of {n_bits}",
        scores=matches.tolist(),
        null_scores=[float(m) for m in null_matches],
        figures={**evidence.figures(n_bits), **(figures or {})},
        details={
            "fpr": fpr,
            "model_fpr": model_fpr,
            "random_keys": n_keys,
            **evidence.rule(),
            "random_key_best_trial_max": null_best,  # None: no trial passed, no random keys drawn
            # what the decision would be if trials were independent (the rule before issue 28)
            "independence_p_value": independence_p,
            "independence_detected": trials > 0 and independence_p <= model_fpr,
            **(details or {}),
        },
    )


@dataclass
class _Evidence:
    """A verification's trials against the owner's key: unpaired (``plain`` None) or paired with the untriggered
    reads of the same inputs."""

    matches: torch.Tensor
    plain: torch.Tensor | None
    threshold: int

    @property
    def successes(self) -> int:
        passing = self.matches >= self.threshold
        if self.plain is not None:
            passing &= self.plain < self.threshold
        return int(passing.sum())

    def statistics(self) -> torch.Tensor:
        if self.plain is None:
            return trial_statistics(self.matches, self.threshold)
        return paired_trial_statistics(self.matches, self.plain, self.threshold)

    def figures(self, n_bits: int) -> dict[str, float]:
        """Mean bit accuracy of the (triggered) reads; paired: their unpaired pass rate too."""
        if not len(self.matches):
            return {}
        out = {"bit_accuracy": float(self.matches.mean() / n_bits)}
        if self.plain is not None:
            out["triggered_rate"] = float((self.matches >= self.threshold).double().mean())
        return out

    def rule(self) -> dict[str, Any]:
        if self.plain is None:
            return {"test": "key randomization",
                    "statistic": "min-p of (best trial's matches, matches summed over passing trials)"}  # fmt: skip
        return {"test": "paired key randomization",
                "statistic": "min-p of (best trial's gain, gains summed over passing trials); gain: triggered minus "
                "untriggered matches", "paired": "triggered vs untriggered reads of the same inputs"}  # fmt: skip


def decision_rule(v: Verification) -> dict[str, Any]:
    """How ``v`` was decided, without secrets: what a key file and ``protect.json`` record beside the verdict."""
    d = v.details
    return {
        "statistic": v.statistic,
        "trials": v.trials,
        "trial_threshold": v.trial_threshold,
        "trial_fpr": d.get("fpr"),
        "model_fpr": d.get("model_fpr"),
        "test": d.get("test"),
        "random_keys": d.get("random_keys"),
        "rule": "a trial passes at trial_threshold (binomial at trial_fpr); detected when some trial passes and at "
        "most model_fpr of random keys reach the key's evidence: its best trial and its passing trials' summed "
        "matches, combined by their smaller p-value (key randomization: valid whatever the dependence between "
        "trials)"
        + (
            "; paired: a trial passes only when its untriggered read of the same inputs does not, and the evidence "
            "is the triggered minus the untriggered matches"
            if d.get("paired")
            else ""
        ),
    }
