"""FID and KID (torchmetrics) of a model's samples against a split's real images.

Generated images use the captions of the real images they are compared with, so the
comparison is conditional on the same prompt distribution. Real features are computed
once per split and reused for every model of the run, and across runs through the artifact
cache. The metrics get features, not images: we run the extractor, so cached and freshly
computed features go through the same sums.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.config import Validated, setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.metrics.features import (
    DomainFeatureNet,
    InceptionFeatures,
    domain_feature_net,
    feature_spec,
    find_inception_weights,
)
from adaptguard.metrics.fidelity import ALL, attribute_matches, fidelity_matches, shares
from adaptguard.metrics.paired import ImageScores
from adaptguard.models.bundle import DiffusionModel

REAL_FEATURES = "real_features"  # cache kind
CHUNK = 64  # images per feature-extractor call


@dataclass
class QualityReport:
    """FID/KID of one model's samples against one domain's real images; ``extractor`` names the features.

    ``fidelity``: prompt fidelity of the samples (share matching their prompt, per attribute, per
    ``fidelity_groups`` name and ``all``); ``fidelity_real``: the same on the real images, its ceiling.
    Empty where the extractor has no attribute heads (InceptionV3) or the captions name no attributes.
    """

    extractor: str  # shapesnet | inception
    fid: float
    kid_mean: float
    kid_std: float
    num_samples: int
    split: str = ""
    fidelity: dict[str, float] = field(default_factory=dict)
    fidelity_real: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # per image, for paired differences with another model: not a field, so never in results.json
        self.per_image: ImageScores | None = None

    def metrics(self) -> dict[str, float]:
        """Metric names that say which extractor produced them: ``fid_shapesnet``, ``kid_shapesnet_mean``,
        ``fidelity_shapesnet`` (all attributes), ``fidelity_shapesnet_kind+colour``, ``..._real`` (ceiling)."""
        e = self.extractor
        out = {f"fid_{e}": self.fid, f"kid_{e}_mean": self.kid_mean, f"kid_{e}_std": self.kid_std}
        for suffix, values in (("", self.fidelity), ("_real", self.fidelity_real)):
            out.update({fidelity_name(e, k) + suffix: v for k, v in values.items() if k == ALL or "+" in k})
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fidelity_name(extractor: str, what: str = ALL) -> str:
    """``fidelity_shapesnet`` (all attributes) or ``fidelity_shapesnet_<attribute or group>``: the classifier
    is part of the name, as the extractor is of FID's (a retrained classifier is a new metric)."""
    return f"fidelity_{extractor}" + ("" if what == ALL else f"_{what}")


@dataclass
class _Real:
    """One split's real-image side: FID/KID with the real features in, captions to sample, fidelity ceiling."""

    fid: FrechetInceptionDistance
    kid: KernelInceptionDistance
    captions: list[str]
    fidelity: dict[str, float]
    features: torch.Tensor


@dataclass
class QualityEvaluator(Validated):
    config_key = "eval.fid"

    num_samples: int = setting(
        256, ge=2, doc="generated (and real) images per FID/KID (the paired-interval curve in docs/evaluation.md)"
    )
    feature: Literal["auto", "domain", "inception"] = setting(
        "auto", doc="image features for FID/KID; auto: the dataset's domain extractor if it has one, else InceptionV3"
    )
    weights_path: str | None = setting(None, doc="torch-fidelity's InceptionV3 weights file; null: the torch hub cache")
    kid_subset_size: int = setting(50, ge=2, doc="images per KID subset")
    kid_subsets: int = setting(50, ge=1, doc="KID subsets")
    bootstrap: int = setting(
        500, ge=0, doc="bootstrap resamples of the images behind each paired difference's 95 % interval (0: none)"
    )
    _real: dict[tuple[str, str], _Real] = field(default_factory=dict, init=False, repr=False)
    _extractor: tuple[str, nn.Module] | None = field(default=None, init=False, repr=False)

    def settings(self) -> dict[str, Any]:
        """The configured values (a cache key)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def extractor(self, data: CaptionedImageDataModule, ctx: RunContext) -> tuple[str, nn.Module]:
        """(name, feature module taking images in [0, 1])."""
        if self._extractor is None:
            domain = self._domain_spec(data)
            if domain is not None:
                self._extractor = (domain["kind"] + "net", domain_feature_net(data, ctx))
            else:
                self._extractor = ("inception", InceptionFeatures(self._inception_weights()))
        return self._extractor

    def check(self, data: CaptionedImageDataModule) -> None:
        """Fail now, building nothing, if FID/KID could not run on ``data`` (InceptionV3 weights not on disk)."""
        if self._domain_spec(data) is None:
            self._inception_weights()

    def _domain_spec(self, data: CaptionedImageDataModule) -> dict[str, Any] | None:
        """The dataset's domain extractor if this evaluator uses one; None: InceptionV3."""
        domain = data.feature_extractor_spec()
        if self.feature == "domain" and domain is None:
            raise ConfigError(
                f"eval.fid.feature=domain: dataset {data.name!r} has no domain feature extractor; use inception"
            )
        return domain if self.feature in ("domain", "auto") else None

    def _inception_weights(self) -> Path:
        weights = find_inception_weights(self.weights_path)
        if weights is None:
            raise ConfigError(
                "eval.fid.weights_path: FID/KID with InceptionV3 needs torch-fidelity's weights "
                "(weights-inception-2015-12-05-6726825d.pth) on disk; set eval.fid.weights_path=/path/to/it "
                "or copy it into the torch hub cache (checkpoints/)"
            )
        return weights

    def _extractor_id(self, data: CaptionedImageDataModule) -> dict[str, Any]:
        """What determines the features (a cache key): the domain net's spec, or InceptionV3's weights file."""
        domain = self._domain_spec(data)
        if domain is not None:
            return {"domain": feature_spec(domain)}
        weights = self._inception_weights()
        return {"inception": str(weights.resolve()), "bytes": weights.stat().st_size}

    def _real_features(
        self, data: CaptionedImageDataModule, split: str, ctx: RunContext, cache: ArtifactCache | None
    ) -> tuple[torch.Tensor, list[str], dict[str, float]]:
        """Features, captions and prompt fidelity of the split's ``num_samples`` real images (drawn with the run
        seed), cached across runs when ``cache`` is given: identical tensors either way, so FID/KID do not move."""
        n = min(self.num_samples, len(data.dataset(split)))
        if cache is None:
            return self._compute_real(data, split, n, ctx)
        spec = {"data": data.describe(), "split": split, "n": n, "seed": ctx.seed,
                "extractor": self._extractor_id(data), "device": ctx.torch_device().type}  # fmt: skip

        def build(work: Path) -> None:
            feats, captions, fidelity = self._compute_real(data, split, n, ctx)
            torch.save(feats, work / "features.pt")
            (work / "captions.json").write_text(json.dumps(captions))
            (work / "fidelity.json").write_text(json.dumps(fidelity))

        folder = cache.get_or_build(REAL_FEATURES, spec, build, code=(type(self), data))
        feats = torch.load(folder / "features.pt", weights_only=True)
        fidelity = json.loads((folder / "fidelity.json").read_text())
        return feats, json.loads((folder / "captions.json").read_text()), fidelity

    def _compute_real(
        self, data: CaptionedImageDataModule, split: str, n: int, ctx: RunContext
    ) -> tuple[torch.Tensor, list[str], dict[str, float]]:
        ds = data.dataset(split)
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(ctx.seed))[:n].tolist()
        images, captions = [], []
        for batch in DataLoader(Subset(ds, idx), batch_size=CHUNK, num_workers=data.num_workers):
            images.append(batch["image"])
            captions.extend(batch["caption"])
        scores = self._score_images(torch.cat(images), captions, data, ctx)
        return scores.features, captions, shares(scores.matches)

    def _score_images(
        self, images: torch.Tensor, captions: list[str], data: CaptionedImageDataModule, ctx: RunContext
    ) -> ImageScores:
        """FID's features of ``images`` (in [-1, 1]) and, where the extractor classifies attributes and the
        captions name them, whether each image matches its prompt."""
        _, net = self.extractor(data, ctx)
        device = ctx.torch_device()
        net.to(device)
        wanted = [data.prompt_attributes(c) for c in captions]
        heads = isinstance(net, DomainFeatureNet) and net.labels and any(w is not None for w in wanted)
        feats, logits = [], {}
        for chunk in images.split(CHUNK):
            x = (chunk.to(device) * 0.5 + 0.5).clamp(0, 1)
            if heads:
                f, chunk_logits = net.features_and_logits(x)
                for k, v in chunk_logits.items():
                    logits.setdefault(k, []).append(v.float().cpu())
            else:
                f = net(x)
            feats.append(f.float().cpu())
        if not heads:
            return ImageScores(torch.cat(feats))
        matches = attribute_matches({k: torch.cat(v) for k, v in logits.items()}, net.labels, wanted)
        return ImageScores(torch.cat(feats), fidelity_matches(matches, data.fidelity_groups()))

    def real_features(
        self, data: CaptionedImageDataModule, split: str, ctx: RunContext, cache: ArtifactCache | None = None
    ) -> torch.Tensor:
        """(N, F): features of the real images whose captions every model's quality samples are drawn from."""
        return self._metrics(data, split, ctx, cache).features

    def _metrics(self, data: CaptionedImageDataModule, split: str, ctx: RunContext, cache: ArtifactCache | None):
        key = (data.name, split)  # the same split name can exist in two datasets (DreamBooth's subject)
        if key in self._real:
            return self._real[key]
        feats, captions, fidelity = self._real_features(data, split, ctx, cache)
        kw: dict[str, Any] = {"feature": _Precomputed(feats.shape[1]), "reset_real_features": False}
        fid = FrechetInceptionDistance(**kw)
        kid = KernelInceptionDistance(subset_size=min(self.kid_subset_size, len(feats)), subsets=self.kid_subsets, **kw)
        for chunk in feats.split(CHUNK):  # the chunks an image loader gives: the same sums to the last bit
            fid.update(chunk, real=True)
            kid.update(chunk, real=True)
        self._real[key] = _Real(fid, kid, captions, fidelity, feats)
        return self._real[key]

    @torch.no_grad()
    def evaluate(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        split: str,
        ctx: RunContext,
        offset: int = 0,
        cache: ArtifactCache | None = None,
    ) -> tuple[QualityReport, torch.Tensor]:
        """FID/KID of ``model`` on ``split``; also returns the generated images (in [-1, 1]).

        ``cache``: the real images' features are read from (or written to) it."""
        real = self._metrics(data, split, ctx, cache)
        fid, kid, captions = real.fid, real.kid, real.captions
        name, _ = self.extractor(data, ctx)
        fid.reset()
        kid.reset()
        images = model.sample(captions, generator=ctx.generator(offset), progress=ctx.progress)
        scores = self._score_images(images, captions, data, ctx)
        for chunk in scores.features.split(CHUNK):
            fid.update(chunk, real=False)
            kid.update(chunk, real=False)
        with torch.random.fork_rng(devices=[]):  # KID draws random subsets: same subsets every run
            torch.manual_seed(ctx.seed)
            kid_mean, kid_std = kid.compute()
        report = QualityReport(name, float(fid.compute()), float(kid_mean), float(kid_std), len(captions), split,
                               shares(scores.matches), real.fidelity)  # fmt: skip
        report.per_image = scores
        return report, images


class _Precomputed(nn.Module):
    """The metrics' "feature extractor" when features are computed (or cached) by us: passes them through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
