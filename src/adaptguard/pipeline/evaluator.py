"""Verifying and scoring the models of one run, all with the same key, null, FPRs, domains and seeds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from adaptguard.core.context import RunContext
from adaptguard.core.domains import EvalDomain
from adaptguard.core.errors import DivergedError
from adaptguard.core.keys import SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense
from adaptguard.metrics.cost import CostTracker
from adaptguard.metrics.quality import QualityReport
from adaptguard.models.bundle import DiffusionModel
from adaptguard.pipeline.experiment import EvalConfig
from adaptguard.reporting.plots import save_grid
from adaptguard.reporting.results import ModelReport, VerificationReport

log = logging.getLogger(__name__)
QUALITY_SEED_OFFSET = 100  # every model samples its FID images from the same noise
HINTS = {"attacked": "lower attack.lr or set attack.max_grad_norm", "protected": "lower defense.lr"}


def refuse_non_finite(name: str, model: DiffusionModel) -> None:
    """Sampling NaN weights crashes inside FID's linear algebra or scores as "watermark removed": refuse first."""
    hint = next((h for label, h in HINTS.items() if name.startswith(label)), "check the stage that made it")
    for part in ("unet", "text_encoder", "vae"):
        module = getattr(model, part, None)
        for key, tensor in (module.state_dict() if module is not None else {}).items():
            if torch.is_floating_point(tensor) and not torch.isfinite(tensor).all():
                raise DivergedError(f"{name} model ({part}), before sampling: weight {key} is not finite (NaN/inf); "
                                    f"the training that made it diverged - {hint}")  # fmt: skip


class Evaluator:
    """``key`` is set once the defense has protected; ``null`` is the never-watermarked model's verification,
    from whose scores TPR@FPR thresholds are calibrated for every other verification of the run."""

    def __init__(
        self,
        defense: Defense,
        config: EvalConfig,
        data: CaptionedImageDataModule,
        ctx: RunContext,
        tracker: CostTracker,
        out: Path,
    ) -> None:
        self.defense, self.config, self.ctx, self.tracker, self.out = defense, config, ctx, tracker, out
        self.clean = [EvalDomain("clean", data, config.clean_split)] if config.clean_split else []
        self.key: SecretKey | None = None
        self.null: Verification | None = None
        self.files: dict[str, str] = {}

    def report(self, v: Verification | None) -> VerificationReport | None:
        return VerificationReport.of(v, self.null, self.config.fprs) if v is not None else None

    def verify_null(self, base: DiffusionModel) -> VerificationReport | None:
        """The base model never saw the watermark: its verification with the owner's key is the control."""
        refuse_non_finite("base", base)
        with self.tracker.stage("verify_base"):
            self.null = self.defense.verify(base, self.key, self.ctx)
        return self.report(self.null)

    def verify(
        self, name: str, model: DiffusionModel
    ) -> tuple[VerificationReport | None, dict[str, VerificationReport]]:
        """Verification of ``model`` as generated, and after each ``eval.image_attacks`` transform."""
        with self.tracker.stage(f"verify_{name}"):
            v, attacked = self.defense.verify_with(model, self.key, self.ctx, self.config.image_attacks)
        return self.report(v), {label: self.report(a) for label, a in attacked.items()}

    def quality(self, name: str, model: DiffusionModel, domains: list[EvalDomain]) -> dict[str, QualityReport]:
        """FID/KID on the clean domain and ``domains``; a sample grid of each."""
        refuse_non_finite(name, model)
        return self._score(name, model, domains)

    def _score(self, name: str, model: DiffusionModel, domains: list[EvalDomain]) -> dict[str, QualityReport]:
        fid = self.config.fid
        if fid is None:
            return {}
        out: dict[str, QualityReport] = {}
        with self.tracker.stage(f"quality_{name}"):
            for d in self.clean + domains:
                out[d.name], images = fid.evaluate(model, d.data, d.split, self.ctx, offset=QUALITY_SEED_OFFSET)
                grid = (
                    f"samples_{name}"
                    if d.name == "clean" or name.endswith(f"_{d.name}")
                    else f"samples_{name}_{d.name}"
                )
                self.files[grid] = save_grid(images[: self.config.grid_samples], self.out / f"{grid}.png").name
        return out

    def evaluate(
        self,
        name: str,
        model: DiffusionModel,
        domains: list[EvalDomain],
        quality: dict[str, QualityReport] | None = None,
    ) -> ModelReport:
        """Verify and score ``model``; ``quality`` given: the model's weights are another's, reuse its scores."""
        refuse_non_finite(name, model)
        verification, image_attacks = self.verify(name, model)
        scores = dict(quality) if quality is not None else self._score(name, model, domains)  # checked above
        return ModelReport(verification=verification, image_attacks=image_attacks, quality=scores)

    def curve_point(self, step: int, model: DiffusionModel, domain: EvalDomain | None) -> dict[str, Any]:
        """The model under attack at ``step``: verification and FID/KID on the attack's own domain."""
        refuse_non_finite(f"attacked (step {step})", model)
        verification = self.report(self.defense.verify(model, self.key, self.ctx))
        quality: dict[str, QualityReport] = {}
        if self.config.fid is not None and domain is not None:
            quality[domain.name], _ = self.config.fid.evaluate(
                model, domain.data, domain.split, self.ctx, offset=QUALITY_SEED_OFFSET
            )
        rate = f"rate {verification.rate:.3f}" if verification else "no verification"
        fids = ", ".join(f"FID {q.fid:.2f} ({d})" for d, q in quality.items())
        log.info("curve step %d: %s%s", step, rate, f", {fids}" if fids else "")
        return {"verification": verification, "quality": quality}
