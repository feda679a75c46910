"""The experiment pipeline: base -> protect -> verify -> attack -> verify -> report."""

from adaptguard.pipeline.experiment import AdaptationDomain, EvalConfig, Experiment
from adaptguard.pipeline.run import AttackPlan, check_before_work, plan_attacks, protect_cached, run_experiment

__all__ = [
    "AdaptationDomain",
    "AttackPlan",
    "EvalConfig",
    "Experiment",
    "check_before_work",
    "plan_attacks",
    "protect_cached",
    "run_experiment",
]
