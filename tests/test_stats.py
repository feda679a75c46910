import numpy as np
import pytest
from scipy import stats

from adaptguard.metrics.stats import (
    binomial_tail,
    binomial_threshold,
    bit_match_verification,
    calibrate_threshold,
    clopper_pearson,
    tpr_at_fpr,
)


def test_threshold_matches_binomial_tail_48_bits():
    # SleeperMark's setting: 48 bits at FPR 1e-6 needs 41 matching bits.
    assert binomial_threshold(48, 1e-6) == 41
    assert binomial_tail(41, 48) <= 1e-6 < binomial_tail(40, 48)


@pytest.mark.parametrize("n,fpr", [(64, 1e-3), (64, 1e-2), (16, 0.05), (200, 1e-4)])
def test_threshold_is_smallest_k_with_tail_below_fpr(n, fpr):
    k = binomial_threshold(n, fpr)
    tail = lambda j: sum(stats.binom.pmf(i, n, 0.5) for i in range(j, n + 1))  # noqa: E731
    assert tail(k) <= fpr
    assert tail(k - 1) > fpr


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.3085, abs=1e-4)
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1 and lo == pytest.approx(0.6915, abs=1e-4)
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(0.1871, abs=1e-4) and hi == pytest.approx(0.8129, abs=1e-4)


def test_calibrated_threshold_respects_fpr_on_null():
    rng = np.random.default_rng(0)
    null = rng.normal(size=5000)
    for fpr in (0.01, 0.001):
        t = calibrate_threshold(null, fpr)
        assert (null >= t).mean() <= fpr
        # and it is tight: the next lower null score would exceed the budget
        below = null[null < t].max()
        assert (null >= below).mean() > fpr


def test_tpr_at_fpr_separates_shifted_scores_and_flags_small_null():
    rng = np.random.default_rng(1)
    null, pos = rng.normal(size=2000), rng.normal(loc=5, size=200)
    r = tpr_at_fpr(pos, null, 0.01)
    assert r.tpr > 0.95 and r.achieved_fpr <= 0.01 and not r.underpowered
    assert tpr_at_fpr(pos, null[:50], 0.001).underpowered


def test_bit_match_verification_detects_only_strong_matches():
    strong = bit_match_verification([60] * 30 + [30] * 2, n_bits=64, fpr=1e-3, model_fpr=1e-3)
    assert strong.detected and strong.rate == pytest.approx(30 / 32) and strong.trial_threshold == 45
    chance = bit_match_verification(np.random.default_rng(2).binomial(64, 0.5, size=32), 64, 1e-3, 1e-3)
    assert not chance.detected and chance.rate < 0.1
