"""FID and KID (torchmetrics) of a model's samples against a split's real images.

Generated images use the captions of the real images they are compared with, so the
comparison is conditional on the same prompt distribution. Real features are computed
once per split and reused for every model of the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from adaptguard.core.config import Validated, setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.metrics.features import InceptionFeatures, domain_feature_net, find_inception_weights
from adaptguard.models.bundle import DiffusionModel


@dataclass
class QualityReport:
    """FID/KID of one model's samples against one domain's real images; ``extractor`` names the features."""

    extractor: str  # shapesnet | inception
    fid: float
    kid_mean: float
    kid_std: float
    num_samples: int
    split: str = ""

    def metrics(self) -> dict[str, float]:
        """Metric names that say which extractor produced them: ``fid_shapesnet``, ``kid_shapesnet_mean``."""
        e = self.extractor
        return {f"fid_{e}": self.fid, f"kid_{e}_mean": self.kid_mean, f"kid_{e}_std": self.kid_std}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QualityEvaluator(Validated):
    config_key = "eval.fid"

    num_samples: int = setting(128, ge=2)
    feature: Literal["auto", "domain", "inception"] = "auto"  # auto: the dataset's domain extractor, else InceptionV3
    weights_path: str | None = None  # torch-fidelity InceptionV3 weights (else torch hub cache)
    kid_subset_size: int = setting(50, ge=2)
    kid_subsets: int = setting(50, ge=1)
    _real: dict[tuple[str, str], tuple[FrechetInceptionDistance, KernelInceptionDistance, list[str]]] = field(
        default_factory=dict, init=False, repr=False
    )
    _extractor: tuple[str, nn.Module] | None = field(default=None, init=False, repr=False)

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

    def _metrics(self, data: CaptionedImageDataModule, split: str, ctx: RunContext):
        cached = (data.name, split)  # the same split name can exist in two datasets (DreamBooth's subject)
        if cached in self._real:
            return self._real[cached]
        name, feature = self.extractor(data, ctx)
        kw: dict[str, Any] = {"feature": feature, "normalize": True, "reset_real_features": False}
        n = min(self.num_samples, len(data.dataset(split)))
        fid = FrechetInceptionDistance(**kw)
        kid = KernelInceptionDistance(subset_size=min(self.kid_subset_size, n), subsets=self.kid_subsets, **kw)
        device = ctx.torch_device()
        fid, kid = fid.to(device), kid.to(device)
        ds = data.dataset(split)
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(ctx.seed))[:n].tolist()
        captions: list[str] = []
        for batch in DataLoader(Subset(ds, idx), batch_size=64, num_workers=data.num_workers):
            images01 = (batch["image"].to(device) * 0.5 + 0.5).clamp(0, 1)
            fid.update(images01, real=True)
            kid.update(images01, real=True)
            captions.extend(batch["caption"])
        self._real[cached] = (fid, kid, captions)
        return self._real[cached]

    @torch.no_grad()
    def evaluate(
        self, model: DiffusionModel, data: CaptionedImageDataModule, split: str, ctx: RunContext, offset: int = 0
    ) -> tuple[QualityReport, torch.Tensor]:
        """FID/KID of ``model`` on ``split``; also returns the generated images (in [-1, 1])."""
        fid, kid, captions = self._metrics(data, split, ctx)
        name = self.extractor(data, ctx)[0]
        fid.reset()
        kid.reset()
        images = model.sample(captions, generator=ctx.generator(offset), progress=ctx.progress)
        device = ctx.torch_device()
        for chunk in images.split(64):
            chunk01 = (chunk.to(device) * 0.5 + 0.5).clamp(0, 1)
            fid.update(chunk01, real=False)
            kid.update(chunk01, real=False)
        with torch.random.fork_rng(devices=[]):  # KID draws random subsets: same subsets every run
            torch.manual_seed(ctx.seed)
            kid_mean, kid_std = kid.compute()
        report = QualityReport(name, float(fid.compute()), float(kid_mean), float(kid_std), len(captions), split)
        return report, images
