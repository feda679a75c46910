"""One experiment: base -> protect -> verify -> attack -> verify -> report.

Usable without Hydra: build the pieces as plain objects and call :func:`run_experiment`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from adaptguard.attacks.base import Attack
from adaptguard.attacks.image_transforms import ImageTransform, make_image_transforms
from adaptguard.attacks.none import NoAttack
from adaptguard.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense, OutputWatermark, Protected, SecretKey
from adaptguard.defenses.none import NoDefense
from adaptguard.errors import ConfigError
from adaptguard.metrics.cost import CostTracker
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.metrics.stats import Verification, tpr_at_fpr
from adaptguard.models.bundle import DiffusionModel
from adaptguard.redact import redact
from adaptguard.reporting import SCHEMA_VERSION, log_results, save_grid, write_results

log = logging.getLogger(__name__)
QUALITY_SEED_OFFSET = 100


class ModelSource(Protocol):
    name: str

    def describe(self) -> dict[str, Any]: ...

    def load(self, ctx: RunContext) -> DiffusionModel: ...


@dataclass(frozen=True)
class AdaptationDomain:
    """Attack on ``train`` and score FID/KID on ``eval``: did the adaptation to this domain work?"""

    train: str
    eval: str

    @classmethod
    def parse(cls, name: str, value: Any) -> AdaptationDomain:
        if isinstance(value, AdaptationDomain):
            return value
        value = dict(value or {})
        if set(value) != {"train", "eval"}:
            raise ConfigError(
                f"eval.adaptation.{name}: needs exactly the keys train and eval (dataset split names), got {sorted(value)}"
            )
        return cls(train=str(value["train"]), eval=str(value["eval"]))


@dataclass
class EvalConfig:
    """What is measured around the attack."""

    fid: QualityEvaluator | None = field(default_factory=QualityEvaluator)  # None: skip FID/KID
    clean_split: str | None = "eval"  # real images of the domain the owner cares about (None: skip)
    attacker_split: str | None = "attacker"  # the attacker's domain (did the adaptation work?)
    fprs: list[float] = field(default_factory=lambda: [0.01, 0.001])  # TPR reported at these FPRs
    grid_samples: int = 16  # images per sample grid (from the FID samples)
    quality_of_base: bool = True  # also score the unprotected base model (cost of embedding)
    image_attacks: list[Any] = field(default_factory=list)  # names / {name: .., settings}: verify after each
    # {domain: {train: split, eval: split}}: run the attack once per domain instead of once on its own split
    adaptation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_attacks = make_image_transforms(self.image_attacks)
        self.adaptation = {name: AdaptationDomain.parse(name, v) for name, v in dict(self.adaptation or {}).items()}


@dataclass
class Experiment:
    model: ModelSource
    data: CaptionedImageDataModule
    defense: Defense = field(default_factory=NoDefense)
    attack: Attack | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)


def protect_cached(exp: Experiment, base: DiffusionModel, ctx: RunContext) -> Protected:
    """defense.protect, cached by (base model, defense, owner data, seed) so sweeps protect once."""
    spec = {
        "base": exp.model.describe(),
        "defense": exp.defense.describe(),
        "data": exp.data.describe(),
        "seed": ctx.seed,
    }

    def build(work: Path) -> None:
        exp.defense.save_protected(exp.defense.protect(base, exp.data, ctx), work)

    folder = ctx.cache.get_or_build("protected", spec, build, private=True)
    return exp.defense.load_protected(folder, like=base)


def run_experiment(exp: Experiment, ctx: RunContext) -> dict[str, Any]:
    """Run every stage, write ``results.json`` and grids into ``ctx.out_dir``; return the results."""
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = CostTracker()
    quality: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    ev = exp.eval

    def score(stage: str, model: DiffusionModel, domains: list[tuple[str, str]]) -> None:
        if ev.fid is None:
            return
        with tracker.stage(f"quality_{stage}"):
            for domain, split in domains:
                # the same seed for every stage: base, protected and attacked start from the same noise
                metrics, images = ev.fid.evaluate(model, exp.data, split, ctx, offset=QUALITY_SEED_OFFSET)
                quality.setdefault(stage, {})[domain] = metrics
                plain = domain == "clean" or stage.endswith(f"_{domain}")
                name = f"samples_{stage}" if plain else f"samples_{stage}_{domain}"
                files[name] = save_grid(images[: ev.grid_samples], out / f"{name}.png").name

    image_scores: dict[str, dict[str, Verification]] = {}

    def verify(stage: str, model: DiffusionModel, key: SecretKey | None) -> Verification | None:
        return _verify(exp.defense, model, key, ctx, ev.image_attacks, stage, image_scores)

    exp.defense.check_data(exp.data)  # config errors before any long work
    for d in ev.adaptation.values():  # each raises a ConfigError naming a missing split
        exp.data.spec(d.train)
        exp.data.spec(d.eval)
    with tracker.stage("base"):
        base = exp.model.load(ctx)
    clean = [("clean", ev.clean_split)] if ev.clean_split else []
    adapt_eval = [(domain, d.eval) for domain, d in ev.adaptation.items()]
    if ev.quality_of_base:
        score("base", base, clean + adapt_eval)

    defended = not isinstance(exp.defense, NoDefense)
    skipped_image_attacks = None
    if ev.image_attacks and defended and not isinstance(exp.defense, OutputWatermark):
        skipped_image_attacks = f"not applicable: defense {exp.defense.name} verifies from weights, not images"
        log.warning("eval.image_attacks: %s", skipped_image_attacks)
    scores: dict[str, Verification] = {}
    if defended:
        with tracker.stage("protect"):
            protected = protect_cached(exp, base, ctx)
        with tracker.stage("verify_before"):
            before = verify("before_attack", protected.model, protected.key)
            if before is not None:
                scores["before_attack"] = before
                scores["never_watermarked"] = exp.defense.verify(base, protected.key, ctx)
        if protected.model is base:  # weights unchanged (freezing defenses): nothing new to score
            if "base" in quality:
                quality["protected"] = dict(quality["base"])
        else:
            score("protected", protected.model, clean + adapt_eval)
    else:
        protected = exp.defense.protect(base, exp.data, ctx)
    key = protected.key

    attack_cost: dict[str, Any] = {}
    adaptation: dict[str, Any] = {}
    if ev.adaptation and exp.attack is not None and not isinstance(exp.attack, NoAttack):
        constraint = exp.defense.constraint(key)
        for domain, d in ev.adaptation.items():
            attack = exp.attack.on_split(d.train)
            with tracker.stage(f"attack_{domain}"):
                adapted = attack.run(protected.model, exp.data, constraint, ctx)
            adaptation[domain] = {"train_split": d.train, "eval_split": d.eval, "attack": attack.cost()}
            if defended:
                with tracker.stage(f"verify_after_{domain}"):
                    after = verify(f"after_attack_{domain}", adapted, key)
                    if after is not None:
                        scores[f"after_attack_{domain}"] = after
            score(f"attacked_{domain}", adapted, [(domain, d.eval)])
    elif exp.attack is not None and not isinstance(exp.attack, NoAttack):
        with tracker.stage("attack"):
            attacked = exp.attack.run(protected.model, exp.data, exp.defense.constraint(key), ctx)
        attack_cost = exp.attack.cost()
        if defended:
            with tracker.stage("verify_after"):
                after = verify("after_attack", attacked, key)
                if after is not None:
                    scores["after_attack"] = after
        domains = clean + ([("attacker", ev.attacker_split)] if ev.attacker_split else [])
        score("attacked", attacked, domains)

    verification = _verification_report(scores, ev.fprs, image_scores) if scores else None
    if verification is not None and skipped_image_attacks:
        verification["image_attacks"] = skipped_image_attacks
    results = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "model": exp.model.name,
            "dataset": exp.data.name,
            "defense": exp.defense.name,
            "attack": exp.attack.name if exp.attack is not None else "none",
            "seed": ctx.seed,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "out_dir": str(out),
            "device": str(ctx.torch_device()),
            "torch_threads": torch.get_num_threads(),
        },
        "config": {  # what ran (secrets redacted); the full Hydra config is in .hydra/
            "defense": redact(exp.defense.describe()),
            "attack": redact(exp.attack.describe()) if exp.attack is not None else None,
        },
        "verification": verification,
        "quality": quality,
        "protect": protected.info or {},
        "attack": attack_cost,
        "adaptation": adaptation,
        "stages": tracker.to_dict(),
        "files": files,
    }
    if rank_zero_only.rank == 0:  # under DDP every rank runs the pipeline; one writes
        write_results(results, out)
        log_results(ctx.logger, results, out)
    return results


def _verify(
    defense: Defense,
    model: DiffusionModel,
    key: SecretKey | None,
    ctx: RunContext,
    transforms: list[ImageTransform],
    stage: str,
    image_scores: dict[str, dict[str, Verification]],
) -> Verification | None:
    """defense.verify; for output watermarks also after each image attack, on the same images."""
    if not transforms or not isinstance(defense, OutputWatermark):
        return defense.verify(model, key, ctx)
    images = defense.verification_images(model, key, ctx)
    for i, transform in enumerate(transforms):
        g = ctx.generator(offset=500 + i)
        attacked = {name: transform(batch, generator=g) for name, batch in images.items()}
        image_scores.setdefault(transform.label, {})[stage] = defense.verify_images(attacked, key, model)
    return defense.verify_images(images, key, model)


def _verification_report(
    scores: dict[str, Verification], fprs: list[float], image_scores: dict[str, dict[str, Verification]]
) -> dict[str, Any]:
    """Summaries plus TPR at fixed FPRs, thresholds calibrated on the never-watermarked model only."""
    null = scores["never_watermarked"]
    null_pool = null.scores + null.null_scores
    report: dict[str, Any] = {"statistic": null.statistic}
    report.update({name: v.summary() for name, v in scores.items()})
    tpr: dict[str, Any] = {}
    for fpr in fprs:
        entry: dict[str, Any] = {}
        for name in ("before_attack", "after_attack"):
            if name in scores:
                r = tpr_at_fpr(scores[name].scores, null_pool, fpr)
                entry[name] = r.tpr
                entry[f"{name}_ci"] = list(r.ci)
                entry.update(
                    threshold=r.threshold, achieved_fpr=r.achieved_fpr, n_null=r.n_null, underpowered=r.underpowered
                )
        tpr[str(fpr)] = entry
    report["tpr_at_fpr"] = tpr
    if image_scores:
        report["image_attacks"] = {
            label: {stage: v.summary() for stage, v in stages.items()} for label, stages in image_scores.items()
        }
    return report
