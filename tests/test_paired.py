"""Paired quality differences: the estimators agree with torchmetrics', and pairing removes shared noise."""

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from adaptguard.metrics.paired import ImageScores, frechet_distance, kernel_distance, paired_deltas
from adaptguard.metrics.quality import _Precomputed


def features(n: int = 128, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [128, 12])  # more images than features (eigenvalues) and fewer (singular values)
def test_frechet_distance_is_torchmetrics_fid(n):
    real, fake = features(n, seed=0), features(n, seed=1) * 1.3 + 0.2
    fid = FrechetInceptionDistance(feature=_Precomputed(16))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert abs(float(frechet_distance(real, fake)) - float(fid.compute())) < 1e-4 * float(fid.compute())


def test_kernel_distance_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    real = features(512, seed=0)
    same, shifted = features(512, seed=1), features(512, seed=2) + 0.5
    assert abs(float(kernel_distance(real, same))) < 0.02
    assert float(kernel_distance(real, shifted)) > 0.1


def test_a_model_against_itself_differs_by_exactly_nothing():
    s = ImageScores(features(seed=1), {"all": (torch.rand(128) > 0.5).float()})
    d = paired_deltas(features(seed=0), s, s, resamples=50)
    assert {k: (v.value, v.ci) for k, v in d.items()} == {k: (0.0, (0.0, 0.0)) for k in ("fid", "kid", "fidelity/all")}


def test_pairing_narrows_the_interval_of_a_small_change():
    """Two models that draw image i from the same noise share most of its randomness: a small shift of the
    second is resolved when the images are paired, not when the second model's images are drawn afresh."""
    real = features(seed=0)
    noise = features(seed=1)
    a = ImageScores(noise, {"all": torch.zeros(128)})
    b = ImageScores(noise + 0.25 + 0.05 * features(seed=2), {"all": torch.zeros(128)})
    afresh = ImageScores(features(seed=3) + 0.25, {"all": torch.zeros(128)})
    paired, unpaired = paired_deltas(real, a, b, 300), paired_deltas(real, a, afresh, 300)
    assert paired["fid"].ci[0] > 0 and paired["kid"].ci[0] > 0, paired  # resolved: the interval excludes 0
    assert unpaired["fid"].ci[0] < 0 < unpaired["fid"].ci[1], unpaired  # the same change drawn afresh: not
    assert unpaired["fid"].ci[0] < paired["fid"].value < unpaired["fid"].ci[1]
    assert paired["fid"].ci[1] - paired["fid"].ci[0] < unpaired["fid"].ci[1] - unpaired["fid"].ci[0]


def test_fidelity_delta_counts_only_checkable_images():
    real = features(seed=0)
    a = ImageScores(features(seed=1), {"kind": torch.tensor([0.0, 0.0, float("nan"), 1.0])})
    b = ImageScores(features(seed=1), {"kind": torch.tensor([1.0, 1.0, float("nan"), 1.0])})
    d = paired_deltas(real[:4], ImageScores(a.features[:4], a.matches), ImageScores(b.features[:4], b.matches), 0)
    assert abs(d["fidelity/kind"].value - 2 / 3) < 1e-6 and d["fidelity/kind"].ci is None
