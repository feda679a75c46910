"""Paired quality differences between two models sampled from the same prompts and the same noise.

Every model of a run draws its FID images from the same captions and initial noise, so image i of
the base, the protected and the attacked model differ only by the weights. A quality cost is then
a paired difference, and its interval comes from a bootstrap over images that resamples the
(real image, image of model A, image of model B) triples together: the noise shared by the two
samples cancels instead of adding, as it does between two FIDs drawn independently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

LEVEL = 0.95


@dataclass
class ImageScores:
    """Per image of one model's quality samples, in caption order: FID's features, prompt-fidelity matches."""

    features: torch.Tensor  # (N, F)
    matches: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,) 1 / 0 / NaN (not checkable)

    def save(self, path: Path) -> None:
        torch.save({"features": self.features, "matches": self.matches}, path)

    @classmethod
    def load(cls, path: Path) -> ImageScores:
        d = torch.load(path, weights_only=True)
        return cls(d["features"], d["matches"])


@dataclass
class PairedDelta:
    """``b - a`` on all images, with a percentile-bootstrap interval over images (``ci``: None without one)."""

    value: float
    ci: tuple[float, float] | None
    images: int
    resamples: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": list(self.ci) if self.ci else None, "images": self.images,
                "resamples": self.resamples}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedDelta:
        ci = d.get("ci")
        return cls(float(d["value"]), (float(ci[0]), float(ci[1])) if ci else None, int(d["images"]),
                   int(d["resamples"]))  # fmt: skip

    def __str__(self) -> str:
        return f"{self.value:+.3g}" + (f" [{self.ci[0]:+.3g}, {self.ci[1]:+.3g}]" if self.ci else "")


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., N, F) -> means (..., F) and unbiased covariances (..., F, F), as torchmetrics' FID computes them."""
    mu = x.mean(-2)
    centred = x - mu.unsqueeze(-2)
    return mu, centred.transpose(-1, -2) @ centred / (x.shape[-2] - 1)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """FID between feature sets (..., N, F): ``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^1/2)``, in float64.

    ``tr (S_r S_f)^1/2`` is the sum of the square roots of the product's eigenvalues (torchmetrics' way) or,
    with ``S = X^T X`` for centred features X, the sum of the singular values of ``X_r X_f^T``: an N x N
    matrix, the cheaper one when there are fewer images than features."""
    mu_r, s_r = _moments(real.double())
    mu_f, s_f = _moments(fake.double())
    n, features = real.shape[-2], real.shape[-1]
    if n <= features:
        x_r = (real.double() - mu_r.unsqueeze(-2)) / (n - 1) ** 0.5
        x_f = (fake.double() - mu_f.unsqueeze(-2)) / (n - 1) ** 0.5
        root = torch.linalg.svdvals(x_r @ x_f.transpose(-1, -2)).sum(-1)
    else:
        root = torch.linalg.eigvals(s_r @ s_f).sqrt().real.sum(-1)
    trace = s_r.diagonal(dim1=-2, dim2=-1).sum(-1) + s_f.diagonal(dim1=-2, dim2=-1).sum(-1)
    return ((mu_r - mu_f) ** 2).sum(-1) + trace - 2 * root


def kernel_distance(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """KID on all images at once (..., N, F): the unbiased MMD^2 with KID's kernel ``(x.y / F + 1)^3``.

    torchmetrics' KID averages this estimator over random subsets; on all images it has the same
    expectation and no subset noise, which a paired difference does not want."""
    x, y = real.double(), fake.double()
    d = x.shape[-1]
    n = x.shape[-2]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.transpose(-1, -2) / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = 1 - torch.eye(n, dtype=x.dtype)
    within = ((kxx * off).sum((-1, -2)) + (kyy * off).sum((-1, -2))) / (n * (n - 1))
    return within - 2 * kxy.mean((-1, -2))


def _metrics(real: torch.Tensor, s: ImageScores, idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Each metric of ``s`` against ``real`` for every resample in ``idx`` (R, N), or on all images (None)."""
    pick = (lambda t: t[idx]) if idx is not None else (lambda t: t)
    r, f = pick(real), pick(s.features)
    out = {"fid": frechet_distance(r, f), "kid": kernel_distance(r, f)}
    for name, m in s.matches.items():
        out[f"fidelity/{name}"] = pick(m).nanmean(-1)
    return out


def paired_deltas(
    real: torch.Tensor, a: ImageScores, b: ImageScores, resamples: int = 500, seed: int = 0, chunk: int = 100
) -> dict[str, PairedDelta]:
    """``b - a`` for FID, KID and every prompt-fidelity share both have, with ``LEVEL`` percentile intervals from
    ``resamples`` bootstrap resamples of the image triples (0: values only)."""
    n = real.shape[0]
    if a.features.shape[0] != n or b.features.shape[0] != n:
        raise ValueError(f"paired images: {a.features.shape[0]} and {b.features.shape[0]} images for {n} captions")
    shared = set(a.matches) & set(b.matches)
    a = ImageScores(a.features, {k: v for k, v in a.matches.items() if k in shared})
    b = ImageScores(b.features, {k: v for k, v in b.matches.items() if k in shared})
    full_a, full_b = _metrics(real, a, None), _metrics(real, b, None)
    boot: dict[str, list[torch.Tensor]] = {k: [] for k in full_a}
    g = torch.Generator().manual_seed(seed)
    for start in range(0, resamples, chunk):
        idx = torch.randint(0, n, (min(chunk, resamples - start), n), generator=g)
        ma, mb = _metrics(real, a, idx), _metrics(real, b, idx)
        for k in boot:
            boot[k].append(mb[k] - ma[k])
    out = {}
    for k in full_a:
        diffs = torch.cat(boot[k]) if boot[k] else torch.empty(0)
        diffs = diffs[~diffs.isnan()]
        ci = None
        if diffs.numel():
            lo, hi = torch.quantile(diffs, torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=diffs.dtype))
            ci = (float(lo), float(hi))
        out[k] = PairedDelta(float(full_b[k] - full_a[k]), ci, n, resamples)
    return out
