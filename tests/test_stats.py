import numpy as np
import pytest
import torch
from scipy import stats

from adaptguard.metrics.stats import (
    binomial_tail,
    binomial_threshold,
    bit_match_verification,
    bit_matches,
    calibrate_threshold,
    clopper_pearson,
    decision_rule,
    randomization_keys,
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
    rng = np.random.default_rng(2)
    key = torch.from_numpy(rng.integers(0, 2, 64)).to(torch.uint8)
    read = key.repeat(32, 1)
    read[:, :4] ^= 1  # 60 of 64 bits match in 30 trials
    read[30:] = torch.from_numpy(rng.integers(0, 2, (2, 64))).to(torch.uint8)
    strong = bit_match_verification(read, key, fpr=1e-3, model_fpr=1e-3)
    assert strong.detected and strong.rate == pytest.approx(30 / 32) and strong.trial_threshold == 45
    # no random key comes close: 30 near-identical trials that pass by their count alone are one image's
    # evidence (a random key passing one passes all, P = 7e-4), but 60 of 64 matching bits is not luck
    assert strong.p_value == pytest.approx(1 / (1 + randomization_keys(1e-3)))
    assert strong.details["independence_p_value"] < 1e-60
    chance = bit_match_verification(torch.from_numpy(rng.integers(0, 2, (32, 64))), key, 1e-3, 1e-3)
    assert not chance.detected and chance.rate < 0.1


def test_grouped_keys_score_each_trial_against_its_own_row():
    rng = np.random.default_rng(3)
    key = torch.from_numpy(rng.integers(0, 2, (3, 16))).to(torch.uint8)
    groups = torch.tensor([0, 1, 2, 1])
    assert bit_matches(key[groups], key, groups).tolist() == [16] * 4
    assert bit_matches(1 - key[groups], key, groups).tolist() == [0] * 4
    v = bit_match_verification(key[groups].repeat(8, 1), key, 1e-3, 1e-3, groups=groups.repeat(8))
    assert v.detected and v.successes == 32


def _false_positive_rates(
    read: torch.Tensor, keys: int, fpr: float, model_fpr: float, seed: int
) -> tuple[float, float]:
    """Model-level false-positive rate of ``keys`` random owner keys on fixed read bits: (randomization rule,
    the binomial rule that assumes independent trials)."""
    g = torch.Generator().manual_seed(seed)
    decisions = [bit_match_verification(read, torch.randint(0, 2, (read.shape[1],), generator=g), fpr, model_fpr)
                 for _ in range(keys)]  # fmt: skip
    return (np.mean([v.detected for v in decisions]), np.mean([v.details["independence_detected"] for v in decisions]))


def test_randomization_test_holds_when_trials_are_identical_and_the_binomial_rule_does_not():
    """32 identical images (a prompt that always draws the same picture): a random key matching one matches
    all. The binomial rule, which multiplies the evidence of 32 "independent" trials, then accuses about
    fpr = 5 % of innocent keys at a 1 % target; the randomization test stays at or under the target."""
    read = torch.randint(0, 2, (1, 16), generator=torch.Generator().manual_seed(0)).repeat(32, 1)
    # per trial fpr 0.05 over 16 bits: a trial passes at >= 12 matches, P = 0.038 for a random key
    randomized, independent = _false_positive_rates(read, 400, fpr=0.05, model_fpr=0.01, seed=1)
    lo, _ = clopper_pearson(round(independent * 400), 400)
    assert lo > 0.01, independent  # the independence rule's interval lies above the target
    _, hi = clopper_pearson(round(randomized * 400), 400)
    assert randomized <= 0.01 and hi < 0.03, randomized


def test_randomization_test_matches_the_binomial_rule_when_trials_are_independent():
    rng = np.random.default_rng(4)
    read = torch.from_numpy(rng.integers(0, 2, (32, 16))).to(torch.uint8)
    randomized, independent = _false_positive_rates(read, 300, fpr=0.05, model_fpr=0.01, seed=2)
    assert randomized <= 0.03 and independent <= 0.03


def test_paired_rule_ignores_a_lean_towards_the_key_that_the_trigger_does_not_add():
    """After fine-tuning, a watermarked model may read the key's bits with and without the trigger: the
    unpaired rule counts that as the trigger's response, the paired one only what the trigger adds."""
    rng = np.random.default_rng(5)
    key = torch.from_numpy(rng.integers(0, 2, 64)).to(torch.uint8)
    biased = key.repeat(32, 1)
    biased[:, :6] ^= 1  # 58 of 64 bits, triggered or not
    unpaired = bit_match_verification(biased, key, 1e-3, 1e-3)
    paired = bit_match_verification(biased, key, 1e-3, 1e-3, baseline=biased.clone())
    assert unpaired.detected and unpaired.rate == 1.0
    assert not paired.detected and paired.rate == 0.0 and paired.figures["triggered_rate"] == 1.0
    # the trigger's response on top of chance-level untriggered reads: detected, and the rule is recorded
    plain = torch.from_numpy(rng.integers(0, 2, (32, 64))).to(torch.uint8)
    real = bit_match_verification(biased, key, 1e-3, 1e-3, baseline=plain)
    assert real.detected and real.rate == 1.0 and real.details["test"] == "paired key randomization"
    assert "paired" in decision_rule(real)["rule"] and "paired" not in decision_rule(unpaired)["rule"]


def test_paired_rule_holds_its_target_on_reads_that_the_trigger_changes_at_random():
    """A never-watermarked model whose trigger flips bits at random (independent of any key): the paired
    randomization test accuses at most the target share of random owner keys."""
    g = torch.Generator().manual_seed(6)
    plain = torch.randint(0, 2, (1, 16), generator=g).repeat(32, 1)  # identical inputs, the worst case
    flips = (torch.rand(32, 16, generator=g) < 0.3).to(torch.uint8)
    triggered = plain ^ flips
    detected = [
        bit_match_verification(triggered, torch.randint(0, 2, (16,), generator=g), 0.05, 0.01, baseline=plain).detected
        for _ in range(300)
    ]
    _, hi = clopper_pearson(int(sum(detected)), 300)
    assert np.mean(detected) <= 0.02 and hi < 0.04, np.mean(detected)
