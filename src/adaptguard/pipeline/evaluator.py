"""Verifying and scoring the models of one run, all with the same key, null, FPRs, domains and seeds."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from adaptguard.core import ranks
from adaptguard.core.context import RunContext
from adaptguard.core.domains import EvalDomain
from adaptguard.core.errors import DivergedError
from adaptguard.core.keys import SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.data.distortions import ImageTransform
from adaptguard.defenses.base import Defense
from adaptguard.metrics.cost import CostTracker
from adaptguard.metrics.paired import ImageScores, PairedDelta, paired_deltas
from adaptguard.metrics.quality import QualityReport
from adaptguard.models.bundle import DiffusionModel
from adaptguard.pipeline.experiment import EvalConfig
from adaptguard.pipeline.shared_evals import (
    SharedEvaluations,
    key_digest,
    model_identity,
    verification_from_json,
    verification_to_json,
)
from adaptguard.reporting.plots import save_grid
from adaptguard.reporting.results import ModelReport, VerificationReport

log = logging.getLogger(__name__)
QUALITY_SEED_OFFSET = 100  # every model samples its FID images from the same noise
SHARED = ("base", "protected")  # models every job of a sweep evaluates alike: their evaluations are cached
EVALUATION_CODE = __name__  # this module (and what it imports) samples and scores every cached FID/KID
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
        self.features_cache = ctx.cache if config.cache else None  # real images' features
        self.domains: dict[str, EvalDomain] = {d.name: d for d in self.clean}  # every domain scored, by name
        self.shared = SharedEvaluations(self.features_cache, {"seed": ctx.seed, "device": ctx.torch_device().type})

    def report(self, v: Verification | None) -> VerificationReport | None:
        return VerificationReport.of(v, self.null, self.config.fprs) if v is not None else None

    def verify_null(self, base: DiffusionModel) -> VerificationReport | None:
        """The base model never saw the watermark: its verification with the owner's key is the control."""
        refuse_non_finite("base", base)
        with self.tracker.stage("verify_base"):
            self.null, _ = self._shared_verification("verify_base", base, [])
        return self.report(self.null)

    def verify(
        self, name: str, model: DiffusionModel, identity: dict[str, Any] | None = None
    ) -> tuple[VerificationReport | None, dict[str, VerificationReport]]:
        """Verification of ``model`` as generated, and after each ``eval.image_attacks`` transform
        (``identity``: the model's :func:`model_identity`, when the caller has it)."""
        with self.tracker.stage(f"verify_{name}"):
            if name in SHARED:
                v, attacked = self._shared_verification(f"verify_{name}", model, self.config.image_attacks, identity)
            else:
                v, attacked = self.defense.verify_with(model, self.key, self.ctx, self.config.image_attacks)
        return self.report(v), {label: self.report(a) for label, a in attacked.items()}

    def _shared_verification(
        self,
        label: str,
        model: DiffusionModel,
        transforms: Sequence[ImageTransform],
        identity: dict[str, Any] | None = None,
    ) -> tuple[Verification | None, dict[str, Verification]]:
        """``defense.verify_with`` of a base or protected model, through the evaluation cache (private).

        The verification as sampled is one entry per (model, key), and each image attack another: a model
        verified with and without image attacks (two sweeps) reads one number, not two samplings' worth.
        """
        if self.defense.verification == "none":  # nothing to verify, nothing to cache
            return None, {}
        spec = {"verification": identity or model_identity(model), "key": self.ctx.cache.fingerprint(key_digest(self.key)),
                "defense": self.defense.describe()}  # fmt: skip
        computed: dict[str | None, Verification | None] = {}

        def build(name: str | None) -> Callable[[Path], None]:
            def write(work: Path) -> None:
                if not computed:  # one sampling serves every entry still missing
                    v, attacked = self.defense.verify_with(model, self.key, self.ctx, transforms)
                    computed.update({None: v, **attacked})
                (work / "verification.json").write_text(json.dumps(verification_to_json(computed.get(name))))

            return write

        code = (*self.defense.code_parts(), SharedEvaluations)  # the defense verifies; shared_evals stores it
        out: dict[str | None, Verification | None] = {}
        images = transforms if self.defense.verification == "images" else []  # weights: no images to attack
        entries = [(None, label, spec)] + [
            (t.label, f"{label}/{t.label}", {**spec, "image_attack": t.describe()}) for t in images
        ]
        for name, entry_label, entry_spec in entries:
            with self.shared.entry(entry_label, entry_spec, build(name), private=True, code=code) as folder:
                out[name] = verification_from_json(json.loads((folder / "verification.json").read_text()))
        return out.pop(None), {k: v for k, v in out.items() if k is not None and v is not None}

    def quality(self, name: str, model: DiffusionModel, domains: list[EvalDomain]) -> dict[str, QualityReport]:
        """FID/KID on the clean domain and ``domains``; a sample grid of each."""
        refuse_non_finite(name, model)
        return self._score(name, model, domains)

    def _score(
        self, name: str, model: DiffusionModel, domains: list[EvalDomain], identity: dict[str, Any] | None = None
    ) -> dict[str, QualityReport]:
        if self.config.fid is None:
            return {}
        out: dict[str, QualityReport] = {}
        with self.tracker.stage(f"quality_{name}"):
            if name in SHARED and identity is None:
                identity = model_identity(model)
            for d in self.clean + domains:
                self.domains[d.name] = d
                grid = self.out / (
                    f"samples_{name}.png"
                    if d.name == "clean" or name.endswith(f"_{d.name}")
                    else f"samples_{name}_{d.name}.png"
                )
                if identity is None:
                    out[d.name], images = self._quality(model, d)
                    if ranks.is_main():
                        save_grid(images[: self.config.grid_samples], grid)
                else:
                    out[d.name] = self._shared_quality(f"quality_{name}/{d.name}", model, d, identity, grid)
                self.files[grid.stem] = grid.name
        return out

    def _quality(self, model: DiffusionModel, d: EvalDomain) -> tuple[QualityReport, torch.Tensor]:
        assert self.config.fid is not None
        return self.config.fid.evaluate(model, d.data, d.split, self.ctx, QUALITY_SEED_OFFSET, self.features_cache)

    def _shared_quality(
        self, label: str, model: DiffusionModel, d: EvalDomain, identity: dict[str, Any], grid: Path
    ) -> QualityReport:
        """FID/KID and the sample grid of a base or protected model, through the evaluation cache."""
        assert self.config.fid is not None
        spec = {"quality": identity, "data": d.data.describe(), "split": d.split, "fid": self.config.fid.settings(),
                "offset": QUALITY_SEED_OFFSET, "grid_samples": self.config.grid_samples}  # fmt: skip

        def build(work: Path) -> None:
            report, images = self._quality(model, d)
            (work / "quality.json").write_text(json.dumps(report.to_dict()))
            assert report.per_image is not None
            report.per_image.save(work / "per_image.pt")  # per image: what paired differences need
            save_grid(images[: self.config.grid_samples], work / "grid.png")

        with self.shared.entry(label, spec, build, code=(self.config.fid, d.data, EVALUATION_CODE)) as folder:
            shutil.copyfile(folder / "grid.png", grid)
            report = QualityReport(**json.loads((folder / "quality.json").read_text()))
            report.per_image = ImageScores.load(folder / "per_image.pt")
            return report

    def paired(self, before: ModelReport, after: ModelReport) -> dict[str, dict[str, PairedDelta]]:
        """Per domain both were scored on: ``after - before`` for FID, KID and prompt fidelity, image by image
        (both sampled the same captions from the same noise), with bootstrap intervals."""
        fid = self.config.fid
        if fid is None:
            return {}
        out = {}
        for name, q in after.quality.items():
            p = before.quality.get(name)
            if q.per_image is None or p is None or p.per_image is None or name not in self.domains:
                continue
            d = self.domains[name]
            real = fid.real_features(d.data, d.split, self.ctx, self.features_cache)
            out[name] = paired_deltas(real, p.per_image, q.per_image, fid.bootstrap, seed=self.ctx.seed)
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
        identity = model_identity(model) if name in SHARED else None  # one weights hash for both
        verification, image_attacks = self.verify(name, model, identity)
        scores = dict(quality) if quality is not None else self._score(name, model, domains, identity)
        return ModelReport(verification=verification, image_attacks=image_attacks, quality=scores)

    def curve_point(self, step: int, model: DiffusionModel, domain: EvalDomain | None) -> dict[str, Any]:
        """The model under attack at ``step``: verification and FID/KID on the attack's own domain."""
        refuse_non_finite(f"attacked (step {step})", model)
        verification = self.report(self.defense.verify(model, self.key, self.ctx))
        quality: dict[str, QualityReport] = {}
        if self.config.fid is not None and domain is not None:
            quality[domain.name], _ = self._quality(model, domain)
        rate = f"rate {verification.rate:.3f}" if verification else "no verification"
        fids = ", ".join(f"FID {q.fid:.2f} ({d})" for d, q in quality.items())
        log.info("curve step %d: %s%s", step, rate, f", {fids}" if fids else "")
        return {"verification": verification, "quality": quality}
