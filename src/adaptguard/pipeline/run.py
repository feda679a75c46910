"""Running one experiment: base -> protect -> verify -> attack -> verify -> report, as a few stage functions.

Usable without Hydra: build the pieces as plain objects and call :func:`run_experiment`.
A plain experiment attacks once; with ``eval.adaptation`` the attack runs once per named domain.
Either way each attack run is an :class:`AttackPlan` and goes through the same attack -> verify ->
score path.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from adaptguard.attacks.base import Attack
from adaptguard.core import ranks
from adaptguard.core.artifacts import RESUME_DIR, spec_hash
from adaptguard.core.code_version import code_fingerprint, provenance
from adaptguard.core.context import RunContext
from adaptguard.core.domains import EvalDomain
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected
from adaptguard.metrics.cost import CostTracker
from adaptguard.metrics.curve import StepProbe
from adaptguard.models.bundle import DiffusionModel
from adaptguard.pipeline.evaluator import Evaluator
from adaptguard.pipeline.experiment import Experiment
from adaptguard.reporting.logger import log_results
from adaptguard.reporting.plots import plot_curves
from adaptguard.reporting.results import AttackReport, CurvePoint, ModelReport, ReportSettings, RunInfo, RunResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackPlan:
    """One run of the attack: trained on its split, scored on ``domain`` (and on the clean domain)."""

    name: str  # the domain's name: results are keyed by it
    attack: Attack
    domain: EvalDomain | None
    label: str  # model label in stage names and sample grids: "attacked" or "attacked_<name>"


def plan_attacks(exp: Experiment, resolution: int) -> list[AttackPlan]:
    """The attack runs of this experiment: one per ``eval.adaptation`` domain, else one."""
    ev = exp.eval
    if not exp.attack.adapts:
        return []
    if ev.adaptation:
        return [
            AttackPlan(name, exp.attack.on_split(d.train), EvalDomain(name, exp.data, d.eval), f"attacked_{name}")
            for name, d in ev.adaptation.items()
        ]
    target = exp.attack.eval_domain(exp.data, resolution)
    if target is None and ev.attacker_split:
        target = EvalDomain("attacker", exp.data, ev.attacker_split)
    return [AttackPlan(target.name if target else "attacker", exp.attack, target, "attacked")]


def check_before_work(exp: Experiment) -> list[str]:
    """Config and data errors (a missing split, an empty instance folder, FID weights not on disk, a curve
    past the end of training) as a ConfigError / DataError before any long work; returns notes on
    settings that will not apply."""
    ev, notes = exp.eval, []
    exp.data.check()
    exp.defense.check_data(exp.data)
    for d in ev.adaptation.values():
        exp.data.spec(d.train)
        exp.data.spec(d.eval)
    if exp.attack.adapts:
        for attack in [exp.attack.on_split(d.train) for d in ev.adaptation.values()] or [exp.attack]:
            attack.check_data(exp.data)
        check_at_steps(exp.attack, ev.at_steps)
    elif ev.at_steps:
        notes.append("eval.at_steps: ignored, this run has no attack")
    if ev.image_attacks and exp.defense.verification == "weights":
        notes.append(f"eval.image_attacks: not applicable, defense {exp.defense.name} verifies from weights")
    if ev.fid is not None:
        ev.fid.check(exp.data)
    for note in notes:
        log.warning(note)
    return notes


def check_at_steps(attack: Attack, at_steps: list[int]) -> None:
    if not at_steps:
        return
    steps = attack.training_steps
    if steps is None:
        raise ConfigError(
            f"eval.at_steps: attack={attack.name} does not train; curves need a fine-tuning attack "
            "(full, lora, dreambooth)"
        )
    if max(at_steps) > steps:
        raise ConfigError(f"eval.at_steps: step {max(at_steps)} is past the end of training (attack.steps={steps})")


def protect_spec(exp: Experiment, ctx: RunContext) -> dict[str, Any]:
    """What determines the protected model: base model, defense, owner data, seed."""
    spec = {"base": exp.model.describe(), "defense": exp.defense.describe(), "data": exp.data.describe(),
            "seed": ctx.seed, "code": code_fingerprint(*exp.defense.code_parts(), exp.data)}  # fmt: skip
    fresh = ctx.fresh_keys and exp.defense.key_drawn_from_seed()  # not drawn from `seed`
    return {**spec, "keys": "fresh"} if fresh else spec  # an owner's fresh key is never a run's seed-drawn one


def protect_cached(exp: Experiment, base: DiffusionModel, ctx: RunContext, hits: list[str] | None = None) -> Protected:
    """defense.protect, cached by :func:`protect_spec` so sweeps protect once; "protect" is appended to ``hits``
    when the protected model came from the cache."""
    spec = protect_spec(exp, ctx)

    def build(work: Path) -> None:  # a killed build resumes from work/checkpoints
        protected = exp.defense.protect(base, exp.data, ctx.with_checkpoints(work / RESUME_DIR))
        exp.defense.save_protected(protected, work)

    folder, built = ctx.cache.fetch("protected", spec, build, private=True)
    if hits is not None and not built:
        hits.append("protect")
    return exp.defense.load_protected(folder, like=base)


def run_attack(
    exp: Experiment, plan: AttackPlan, protected: Protected, before: ModelReport, ev: Evaluator, ctx: RunContext
) -> AttackReport:
    """attack.run from the protected model (probed at ``eval.at_steps``), then verify and score the result
    (``before``: the protected model's scores, which the attacked model's are paired with)."""
    probe = None
    if exp.eval.at_steps:
        probe = StepProbe(exp.eval.at_steps, lambda step, m: ev.curve_point(step, m, plan.domain), plan.attack.snapshot)
    resume = ctx.cache.resume_dir("attack", {"protected": protect_spec(exp, ctx), "attack": plan.attack.describe(),
                                             "domain": plan.name, "at_steps": exp.eval.at_steps},
                                  code=(plan.attack, exp.data))  # fmt: skip
    stage = "attack" if plan.label == "attacked" else f"attack_{plan.name}"
    with ev.tracker.stage(stage), ctx.cache.holding(resume):
        run_ctx = (ctx.with_callbacks(probe) if probe else ctx).with_checkpoints(resume)  # a rerun resumes here
        attacked = plan.attack.run(protected.model, exp.data, exp.defense.constraint(protected.key), run_ctx)
        if ranks.is_main():
            shutil.rmtree(resume, ignore_errors=True)
    if probe and probe.missing():  # a step past the end of training (e.g. an epoch-limited loader): say so
        log.warning("eval.at_steps: steps %s were never reached by the attack", probe.missing())
    model = ev.evaluate(plan.label, attacked, [plan.domain] if plan.domain else [])
    model.paired = ev.paired(before, model)
    curve = [CurvePoint(**p) for p in probe.points] if probe else []
    eval_split = plan.domain.split if plan.domain else None
    return AttackReport(plan.name, plan.attack.train_split, eval_split, model, plan.attack.cost(), curve)


def run_info(exp: Experiment, ctx: RunContext) -> RunInfo:
    return RunInfo(
        model=exp.model.name, dataset=exp.data.name, defense=exp.defense.name, attack=exp.attack.name, seed=ctx.seed,
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), out_dir=str(ctx.out_dir),
        device=str(ctx.torch_device()), torch_threads=torch.get_num_threads(), sweep=ctx.sweep,
        protection=ctx.cache.fingerprint(spec_hash(protect_spec(exp, ctx))),
    )  # fmt: skip


def run_experiment(exp: Experiment, ctx: RunContext) -> RunResult:
    """Run every stage, write ``results.json`` and grids into ``ctx.out_dir``; return the results.

    A run that fails or is interrupted writes ``results.json`` with ``status`` failed / interrupted, the stage
    it stopped in and the error, and re-raises.
    """
    out = Path(ctx.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = CostTracker()
    try:
        return _run_stages(exp, ctx, out, tracker)
    except BaseException as err:
        if ranks.is_main():
            stage = tracker.current or (f"after {list(tracker.stages)[-1]}" if tracker.stages else "checks")
            RunResult.failure(run_info(exp, ctx), err, stage, stages=tracker.to_dict()).write(out)
        raise


def _run_stages(exp: Experiment, ctx: RunContext, out: Path, tracker: CostTracker) -> RunResult:
    notes = check_before_work(exp)
    ev = Evaluator(exp.defense, exp.eval, exp.data, ctx, tracker, out)
    with ev.tracker.stage("base"):
        base = exp.model.load(ctx)
    plans = plan_attacks(exp, base.resolution)
    domains = [p.domain for p in plans if p.domain is not None]
    base_quality = ev.quality("base", base, domains) if exp.eval.quality_of_base else {}
    with ev.tracker.stage("protect"):
        protected = protect_cached(exp, base, ctx, ev.shared.hits)
    ev.key = protected.key
    base_report = ModelReport(verification=ev.verify_null(base), quality=base_quality)
    reuse = base_quality if not exp.defense.modifies_weights else None  # same weights: same scores
    protected_report = ev.evaluate("protected", protected.model, domains, quality=reuse)
    protected_report.paired = ev.paired(base_report, protected_report)
    attack_ctx = ctx.with_base(base)  # merges and VAE swaps start from the never-protected base, as users do
    if exp.attack.reads_leaked_key:  # a staged leak (attack=leaked_trigger): the only attack that sees the key
        attack_ctx = replace(attack_ctx, leaked_key=protected.key)
    attacks = {p.name: run_attack(exp, p, protected, protected_report, ev, attack_ctx) for p in plans}
    result = build_result(exp, ctx, protected, base_report, protected_report, attacks, notes, ev)
    if ranks.is_main():  # under DDP every rank runs the pipeline; one writes
        result.write(out)
        log_results(ctx.logger, result, out)
    return result


def build_result(
    exp: Experiment,
    ctx: RunContext,
    protected: Protected,
    base: ModelReport,
    protected_report: ModelReport,
    attacks: dict[str, AttackReport],
    notes: list[str],
    ev: Evaluator,
) -> RunResult:
    curves = {name: a.curve for name, a in attacks.items() if a.curve}
    if curves and ranks.is_main():
        ev.files["curves"] = plot_curves(curves, ev.out / "curves.png").name
    return RunResult(
        run=run_info(exp, ctx),
        config={"defense": exp.defense.public_config(), "attack": exp.attack.public_config()}
        | ({"experiment": exp.settings} if exp.settings else {}),
        summary=exp.defense.summary(protected),
        protect=protected.info or {},
        base=base,
        protected=protected_report,
        attacks=attacks,
        notes=notes,
        data=exp.data.data_report(),
        stages=ev.tracker.to_dict(),
        files=ev.files,
        cached=ev.shared.hits,
        provenance=provenance(*exp.defense.code_parts(), exp.attack, exp.data, exp.model, Evaluator),
        report={"defense": ReportSettings.of(exp.defense), "attack": ReportSettings.of(exp.attack)},
    )
