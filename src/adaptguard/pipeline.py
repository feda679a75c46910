"""One experiment: base -> protect -> verify -> attack -> verify -> report.

Usable without Hydra: build the pieces as plain objects and call :func:`run_experiment`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from adaptguard.attacks.base import Attack, EvalDomain
from adaptguard.attacks.image_transforms import ImageTransform, make_image_transforms
from adaptguard.attacks.none import NoAttack
from adaptguard.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense, OutputWatermark, Protected, SecretKey
from adaptguard.defenses.none import NoDefense
from adaptguard.errors import ConfigError
from adaptguard.metrics.cost import CostTracker
from adaptguard.metrics.curve import StepProbe, parse_steps
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.metrics.stats import Verification, tpr_at_fpr
from adaptguard.models.bundle import DiffusionModel
from adaptguard.redact import redact
from adaptguard.reporting import SCHEMA_VERSION, log_results, plot_curves, save_grid, write_results

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
    # fine-tuning steps at which to verify and score the attacker's domain during the attack (curves)
    at_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.image_attacks = make_image_transforms(self.image_attacks)
        self.at_steps = parse_steps(self.at_steps)
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

    def score(stage: str, model: DiffusionModel, domains: list[EvalDomain]) -> None:
        if ev.fid is None:
            return
        with tracker.stage(f"quality_{stage}"):
            for domain, data, split in ((d.name, d.data, d.split) for d in domains):
                # the same seed for every stage: base, protected and attacked start from the same noise
                metrics, images = ev.fid.evaluate(model, data, split, ctx, offset=QUALITY_SEED_OFFSET)
                quality.setdefault(stage, {})[domain] = metrics
                plain = domain == "clean" or stage.endswith(f"_{domain}")
                name = f"samples_{stage}" if plain else f"samples_{stage}_{domain}"
                files[name] = save_grid(images[: ev.grid_samples], out / f"{name}.png").name

    image_scores: dict[str, dict[str, Verification]] = {}

    def verify(stage: str, model: DiffusionModel, key: SecretKey | None) -> Verification | None:
        return _verify(exp.defense, model, key, ctx, ev.image_attacks, stage, image_scores)

    attacking = exp.attack is not None and not isinstance(exp.attack, NoAttack)
    _check_before_work(exp, attacking)  # config and data errors before any long work
    with tracker.stage("base"):
        base = exp.model.load(ctx)
    clean = [EvalDomain("clean", exp.data, ev.clean_split)] if ev.clean_split else []
    adapt_eval = [EvalDomain(domain, exp.data, d.eval) for domain, d in ev.adaptation.items()]
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

    curves: dict[str, list[dict[str, Any]]] = {}

    def run_attack(attack: Attack, label: str, domain: EvalDomain | None, constraint: Any) -> DiffusionModel:
        """attack.run, with probes at eval.at_steps that verify and score ``domain`` mid-training."""
        if not ev.at_steps:
            return attack.run(protected.model, exp.data, constraint, ctx)

        def evaluate(step: int, model: DiffusionModel) -> dict[str, Any]:
            point: dict[str, Any] = {}
            v = exp.defense.verify(model, key, ctx) if defended else None
            if v is not None:
                point["verification"] = _curve_verification(v, scores.get("never_watermarked"), ev.fprs)
            if ev.fid is not None and domain is not None:
                metrics, _ = ev.fid.evaluate(model, domain.data, domain.split, ctx, offset=QUALITY_SEED_OFFSET)
                point["quality"] = {domain.name: metrics}
            log.info("curve %s step %d: %s", label, step, _curve_brief(point))
            return point

        probe = StepProbe(ev.at_steps, evaluate, snapshot=getattr(attack, "snapshot", lambda m: m))
        attacked = attack.run(protected.model, exp.data, constraint, replace(ctx, callbacks=[*ctx.callbacks, probe]))
        if probe.missing():  # a step past the end of training (e.g. an epoch-limited loader): say so
            log.warning("eval.at_steps: steps %s were never reached by the attack", probe.missing())
        curves[label] = probe.points
        return attacked

    attack_cost: dict[str, Any] = {}
    adaptation: dict[str, Any] = {}
    if ev.adaptation and attacking:
        constraint = exp.defense.constraint(key)
        for domain, d in ev.adaptation.items():
            attack = exp.attack.on_split(d.train)
            with tracker.stage(f"attack_{domain}"):
                adapted = run_attack(attack, domain, EvalDomain(domain, exp.data, d.eval), constraint)
            adaptation[domain] = {"train_split": d.train, "eval_split": d.eval, "attack": attack.cost()}
            if defended:
                with tracker.stage(f"verify_after_{domain}"):
                    after = verify(f"after_attack_{domain}", adapted, key)
                    if after is not None:
                        scores[f"after_attack_{domain}"] = after
            score(f"attacked_{domain}", adapted, [EvalDomain(domain, exp.data, d.eval)])
    elif attacking:
        target = exp.attack.eval_domain(exp.data, base.resolution)
        if target is None and ev.attacker_split:
            target = EvalDomain("attacker", exp.data, ev.attacker_split)
        with tracker.stage("attack"):
            attacked = run_attack(exp.attack, "attack", target, exp.defense.constraint(key))
        attack_cost = exp.attack.cost()
        if defended:
            with tracker.stage("verify_after"):
                after = verify("after_attack", attacked, key)
                if after is not None:
                    scores["after_attack"] = after
        score("attacked", attacked, clean + ([target] if target else []))

    if curves and rank_zero_only.rank == 0:
        files["curves"] = plot_curves(curves, out / "curves.png").name
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
        "curves": curves,
        "data": exp.data.data_report(),
        "stages": tracker.to_dict(),
        "files": files,
    }
    if rank_zero_only.rank == 0:  # under DDP every rank runs the pipeline; one writes
        write_results(results, out)
        log_results(ctx.logger, results, out)
    return results


def _check_before_work(exp: Experiment, attacking: bool) -> None:
    """Each raises a ConfigError / DataError naming the key (a dataset not found, a missing split,
    an empty instance folder, FID weights not on disk, ...)."""
    ev = exp.eval
    exp.data.check()
    exp.defense.check_data(exp.data)
    for d in ev.adaptation.values():
        exp.data.spec(d.train)
        exp.data.spec(d.eval)
    if attacking:
        for attack in [exp.attack.on_split(d.train) for d in ev.adaptation.values()] or [exp.attack]:
            attack.check_data(exp.data)
        _check_at_steps(exp.attack, ev.at_steps)
    elif ev.at_steps:
        log.warning("eval.at_steps: ignored, this run has no attack")
    if ev.fid is not None:
        ev.fid.check(exp.data)


def _check_at_steps(attack: Attack, at_steps: list[int]) -> None:
    if not at_steps:
        return
    steps = getattr(attack, "steps", None)
    if steps is None:
        raise ConfigError(
            f"eval.at_steps: attack={attack.name} does not train; curves need a fine-tuning attack "
            "(full, lora, dreambooth)"
        )
    if max(at_steps) > steps:
        raise ConfigError(f"eval.at_steps: step {max(at_steps)} is past the end of training (attack.steps={steps})")


def _curve_verification(v: Verification, null: Verification | None, fprs: list[float]) -> dict[str, Any]:
    point = {k: v.summary()[k] for k in ("rate", "detected", "p_value", "mean_score")}
    if null is not None:
        pool = null.scores + null.null_scores
        point["tpr_at_fpr"] = {str(f): tpr_at_fpr(v.scores, pool, f).tpr for f in fprs}
    return point


def _curve_brief(point: dict[str, Any]) -> str:
    parts = []
    if "verification" in point:
        parts.append(f"rate {point['verification']['rate']:.3f}")
    for domain, metrics in point.get("quality", {}).items():
        fid = next((f"{k} {v:.2f}" for k, v in metrics.items() if k.startswith("fid_")), "")
        parts.append(f"{fid} ({domain})")
    return ", ".join(parts) or "-"


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
