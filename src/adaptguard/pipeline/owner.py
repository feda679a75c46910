"""The owner's workflow: protect a model once, then check any suspect checkpoint with the key file.

``protect_to`` writes ``<out>/model/`` (a diffusers folder, no secret inside), ``<out>/owner.key``
(0600) and ``<out>/protect.json`` (what was protected and how well it verifies, no secret).
``verify_suspect`` rebuilds the defense from the key, opens the suspect in whatever form it
was published and returns a :class:`Verdict`; ``calibrate`` runs a key against models that
never saw the watermark and measures the false-positive rate.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from adaptguard import __version__
from adaptguard.core.artifacts import weights_sha256
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected
from adaptguard.core.owner_key import OwnerKey
from adaptguard.core.verification import Verification
from adaptguard.defenses.base import Defense
from adaptguard.metrics.stats import clopper_pearson
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.single_file import save_single_file
from adaptguard.models.suspect import Suspect, architecture, architecture_mismatch, load_suspect
from adaptguard.pipeline.experiment import Experiment
from adaptguard.pipeline.null_models import NullModel, measure_null_fpr
from adaptguard.pipeline.run import protect_cached

log = logging.getLogger(__name__)
KEY_FILE = "owner.key"
MODEL_DIR = "model"
REPORT_FILE = "protect.json"
SINGLE_FILE = "model.safetensors"


# ---------------------------------------------------------------------------------------------- protect
def protect_to(
    exp: Experiment, ctx: RunContext, out: Path, single_file: bool = False, use_cache: bool = True
) -> dict[str, Any]:
    """Protect ``exp.model`` with ``exp.defense`` (cached like an experiment's protect stage; a key seed left
    null is drawn fresh, not from ``ctx.seed``, so only an explicit ``key_seed`` gives a run's protected model),
    write the model folder, the key and the report; return the report.
    ``single_file``: also write ``<out>/model.safetensors`` in the original Stable Diffusion layout.
    ``use_cache=False``: protect without the artifact cache, so the key file is the secret's only copy."""
    out = Path(out)
    check_protect(exp, out)
    ctx = replace(ctx, fresh_keys=True)  # a key_seed left null: a fresh secret key, not one derived from `seed`
    start = time.perf_counter()
    base = exp.model.load(ctx)
    if single_file and not base.is_latent:
        raise ConfigError(
            "single_file: the original Stable Diffusion layout needs a latent model (model=tiny, micro, sd15)"
        )
    protected = protect_cached(exp, base, ctx) if use_cache else exp.defense.protect(base, exp.data, ctx)
    files = {"model_dir": str(protected.model.save(out / MODEL_DIR))}
    if single_file:
        files["single_file"] = str(save_single_file(protected.model, out / SINGLE_FILE))
    verified = exp.defense.verify(protected.model, protected.key, ctx)
    never = exp.defense.verify(base, protected.key, ctx) if verified is not None else None
    if protected.key is not None:
        key = owner_key(exp.defense, protected, verified, (out / MODEL_DIR).resolve(), ctx.seed)
        key.save(out / KEY_FILE)
        files["key_file"] = str(out / KEY_FILE)
    decision = decision_rule(exp.defense, verified)  # immunized weights (IMMA): the model is all there is
    report = {
        "defense": exp.defense.name, "model": exp.model.name, "seed": ctx.seed, "config": exp.defense.public_config(),
        **files, "protected_sha256": weights_sha256(protected.model.unet), "decision": decision,
        "protected": verified.summary() if verified else None, "base": never.summary() if never else None,
        "summary": exp.defense.summary(protected), "wall_s": round(time.perf_counter() - start, 2),
    }  # fmt: skip
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    return report


def check_protect(exp: Experiment, out: Path) -> None:
    """Config and data errors before the (long) protection."""
    if exp.defense.key_type is None and not exp.defense.modifies_weights:
        raise ConfigError(f"defense: defense={exp.defense.name} has no key to protect with; pick a protection, "
                          "e.g. defense=backdoor, aiao, sleepermark or freezeasguard")  # fmt: skip
    if (out / KEY_FILE).exists():
        raise ConfigError(f"out: {out / KEY_FILE} already exists; choose another out=<folder> (a key is never "
                          "overwritten)")  # fmt: skip
    exp.data.check()
    exp.defense.check_data(exp.data)


def owner_key(
    defense: Defense, protected: Protected, verified: Verification | None, model_dir: Path, seed: int
) -> OwnerKey:
    assert protected.key is not None
    secret = {f: getattr(protected.key, f) for f in protected.key.__dataclass_fields__}
    return OwnerKey(
        defense=defense.name,
        target=f"{type(defense).__module__}.{type(defense).__qualname__}",
        defense_version=defense.version,
        config=defense.describe(),
        secret=secret,
        decision=decision_rule(defense, verified),
        protected_sha256=weights_sha256(protected.model.unet),
        architecture={**architecture(protected.model), "resolution": protected.model.resolution},
        model_path=str(model_dir),
        seed=seed,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        adaptguard_version=__version__,
    )


def decision_rule(defense: Defense, verified: Verification | None) -> dict[str, Any]:
    """The threshold a verdict uses and how it was calibrated (non-secret; stored in the key and the report)."""
    if verified is None:
        what = "constrains fine-tuning" if defense.key_type is not None else "changes the weights and keeps no key"
        return {"verification": "none", "rule": f"defense={defense.name} {what}; nothing to verify"}
    return {"verification": defense.verification, **defense.decision_rule(verified)}


# ---------------------------------------------------------------------------------------------- verify
@dataclass
class Verdict:
    """One suspect against one key: what ``verify`` prints and writes as JSON."""

    suspect: str
    defense: str
    detected: bool
    rate: float
    ci: tuple[float, float]
    trials: int
    successes: int
    p_value: float
    trial_threshold: float
    statistic: str
    target_fpr: float | None
    rule: str
    identical_to_protected: bool
    seed: int
    wall_s: float
    figures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d

    def text(self) -> str:
        verdict = (
            f"DETECTED: {self.suspect} carries this key's {self.defense} watermark"
            if self.detected
            else f"not detected: {self.suspect} does not carry this key's {self.defense} watermark at the target FPR"
        )
        figures = ", ".join(f"{k} {v:.3f}" for k, v in self.figures.items())
        lines = [
            verdict,
            f"  rate {self.rate:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}] ({self.successes}/{self.trials} trials "
            f"passed, each needs >= {self.trial_threshold:g} {self.statistic})",
            f"  p-value {self.p_value:.3g}; target false-positive rate {self.target_fpr}",
            f"  rule: {self.rule}",
        ]
        if figures:
            lines.append(f"  {figures}")
        if self.identical_to_protected:
            lines.append("  the suspect's UNet is bit-identical to the protected model")
        lines.append(f"  seed {self.seed}, {self.wall_s:.1f} s")
        return "\n".join(lines)


def defense_from_key(key: OwnerKey) -> Defense:
    """The defense, rebuilt with the config the key was made with (its secret fields included)."""
    module, _, name = key.target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"key: made by defense class {key.target}, which this adaptguard does not have") from None
    if key.defense_version != cls.version:
        raise ConfigError(f"key: made with {key.defense} verification version {key.defense_version}; this adaptguard "
                          f"reads version {cls.version} (use adaptguard {key.adaptguard_version})")  # fmt: skip
    defense = cls(**key.config)
    if defense.verification == "none" or defense.key_type is None:
        raise ConfigError(f"key: defense={key.defense} has no verification (it constrains fine-tuning instead of "
                          "marking the model); there is nothing to detect in a suspect")  # fmt: skip
    return defense


def open_suspect(key: OwnerKey, suspect: Suspect, ctx: RunContext, base_model: DiffusionModel | None = None):
    """The suspect as a model on ``ctx``'s device, checked against the key's architecture."""
    default_base = key.model_path if key.model_path and Path(key.model_path).is_dir() else None
    model = load_suspect(suspect, base=default_base, base_model=base_model).to(ctx.torch_device())
    expected = {k: v for k, v in key.architecture.items() if k != "resolution"}
    if mismatch := architecture_mismatch(expected, model):
        raise ConfigError(f"{suspect.key}: {suspect.describe()} does not have the architecture this key was made "
                          f"for: {'; '.join(mismatch)}")  # fmt: skip
    model.resolution = key.architecture.get("resolution", model.resolution)
    return model


def opened(key: OwnerKey, suspects: Sequence[Suspect], ctx: RunContext) -> list[NullModel]:
    """Never-watermarked models given as folders or checkpoints, opened against the key's architecture."""
    return [NullModel(s.describe(), "given", open_suspect(key, s, ctx)) for s in suspects]


def verify_suspect(key: OwnerKey, suspect: Suspect, ctx: RunContext) -> Verdict:
    """Does ``suspect`` carry the watermark of ``key``? Sampling is seeded by ``ctx.seed``."""
    start = time.perf_counter()
    defense = defense_from_key(key)
    return judge(key, defense, open_suspect(key, suspect, ctx), suspect.describe(), ctx, start)


def judge(key: OwnerKey, defense: Defense, model: DiffusionModel, name: str, ctx: RunContext,
          start: float | None = None) -> Verdict:  # fmt: skip
    """The verdict of ``key`` on a loaded ``model`` (``start``: when the work on it began, for ``wall_s``)."""
    start = time.perf_counter() if start is None else start
    v = defense.verify(model, defense.key_type(**key.secret), ctx)
    return Verdict(
        suspect=name, defense=key.defense, detected=bool(v.detected), rate=v.rate, ci=tuple(v.ci),
        trials=v.trials, successes=v.successes, p_value=v.p_value, trial_threshold=v.trial_threshold,
        statistic=v.statistic, target_fpr=key.decision.get("model_fpr"),
        rule=str(defense.decision_rule(v).get("rule", "")),  # the rule applied now, not the one the key recorded
        identical_to_protected=weights_sha256(model.unet) == key.protected_sha256, seed=ctx.seed,
        wall_s=round(time.perf_counter() - start, 2), figures=dict(v.figures),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- calibrate
def calibrate(
    key: OwnerKey, suspects: Sequence[Suspect], ctx: RunContext, null_keys: int = 0, models: Sequence[NullModel] = ()
) -> dict[str, Any]:
    """Run ``key`` against models that never saw its watermark: every detection is a false positive.

    ``suspects`` are opened from disk, ``models`` are already loaded (``models=auto``: the base, its fine-tunes,
    an independent base). The empirical false-positive rate (with its Clopper-Pearson interval) sits next to
    the model-level FPR the decision rule targets; with few models the interval is wide, which is the point.
    ``null_keys``: also verify that many random keys of the same defense on every model (``null_keys`` in
    the report): the decision's false-positive rate over keys, with enough decisions to bound it.
    """
    defense = defense_from_key(key)
    named = opened(key, suspects, ctx) + list(models)
    verdicts = [judge(key, defense, m.model, m.name, ctx) for m in named]
    false = sum(v.detected for v in verdicts)
    trial_false, trials = sum(v.successes for v in verdicts), sum(v.trials for v in verdicts)
    report = {
        "defense": key.defense,
        "models": len(verdicts),
        "false_positives": false,
        "empirical_fpr": false / len(verdicts) if verdicts else None,
        "empirical_fpr_ci": list(clopper_pearson(false, len(verdicts))),
        "analytic_fpr": key.decision.get("model_fpr"),
        "trial_fpr": key.decision.get("trial_fpr"),
        "trial_false_positives": trial_false,
        "trials": trials,
        "empirical_trial_fpr": trial_false / trials if trials else None,
        "empirical_trial_fpr_ci": list(clopper_pearson(trial_false, trials)),
        "verdicts": [v.to_dict() for v in verdicts],
    }
    if null_keys:
        report["null_keys"] = measure_null_fpr(defense, defense.key_type(**key.secret), named, null_keys, ctx)
    return report
