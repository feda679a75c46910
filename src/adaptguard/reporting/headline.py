"""The headline numbers of one run under stable names: what wandb charts, the results page averages over
seeds and the CSV holds. docs/wandb.md lists every name; a test checks it does.

Names read ``<section>/<what>[/<domain>]``. ``after`` and ``attacked`` mean after the weight attack; a run
with several attack domains (``eval.adaptation``: illegal, legal) gets ``/<domain>`` on those names. FID and
KID without a domain are on the owner's clean split; ``/<domain>`` ones on that domain's held-out images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from adaptguard.metrics.fidelity import ALL
from adaptguard.metrics.quality import QualityReport
from adaptguard.reporting.results import ModelReport, RunResult, VerificationReport

# name pattern -> meaning (docs/wandb.md carries the same table)
NAMES: Mapping[str, str] = {
    "verify/rate_never_watermarked": "verification rate of the base model with the owner's key (false-positive control)",
    "verify/rate_before": "verification rate of the protected model",
    "verify/rate_after": "verification rate after the weight attack",
    "verify/detected_before": "1 if the protected model is declared watermarked, else 0",
    "verify/detected_after": "1 if the attacked model is declared watermarked, else 0",
    "verify/p_value_before": "p-value of the protected model's verification",
    "verify/p_value_after": "p-value after the weight attack",
    "verify/tpr_before@fpr<f>": "TPR at FPR f (threshold from never-watermarked scores), protected model",
    "verify/tpr_after@fpr<f>": "TPR at FPR f after the weight attack",
    "verify/<figure>_before": "a defense's own figure (bit_accuracy, untriggered_rate, ...), protected model",
    "verify/<figure>_after": "the same figure after the weight attack",
    "verify/image_attack/<transform>": "verification rate of the protected model's images after an image attack",
    "quality/fid_base": "FID of the never-protected base model (clean split)",
    "quality/fid_protected": "FID of the protected model (clean split)",
    "quality/fid_attacked": "FID after the weight attack (clean split)",
    "quality/fid_delta": "fid_protected - fid_base: what the protection costs in image quality",
    "quality/kid_base": "KID of the base model (clean split); kid_protected, kid_attacked likewise",
    "quality/kid_delta": "kid_protected - kid_base",
    "quality/fid_base/<domain>": "FID of the base model on an attack domain's held-out images",
    "quality/fid_attacked/<domain>": "FID after the attack on its domain: low = the adaptation worked",
    "quality/fidelity_base": "prompt fidelity of the base model's samples (clean split): the share whose every "
    "attribute matches its prompt; fidelity_protected, fidelity_attacked likewise",
    "quality/fidelity_<group>_base": "prompt fidelity of one attribute or group (kind, kind+colour, ...); _protected, "
    "_attacked likewise",
    "quality/fidelity_real": "prompt fidelity of the real images with their own captions: the ceiling",
    "quality/fidelity_delta": "fidelity_protected - fidelity_base: what the protection costs in prompt fidelity",
    "quality/fidelity_attacked/<domain>": "prompt fidelity after the attack on its domain (fidelity_base/<domain>: "
    "before)",
    "quality/fid_delta_attacked/<domain>": "the attack's own effect: FID of the attacked minus the protected model "
    "on the attack's domain, paired (negative: the attack adapted the model); fidelity_delta_attacked likewise",
    "defense/<key>": "a defense's summary facts (frozen ratios, ...)",
    "cost/protect_s": "wall time of the protect stage (0 when the protection came from the cache)",
    "cost/attack_s": "wall time of the attack stage(s)",
    "cost/attack_step_s": "seconds per attack training step",
    "cost/trainable_params": "parameters the attack trains",
    "curve/rate_after": "verification rate at each eval.at_steps step (x axis: the attack's step)",
    "curve/fid_attacked": "attack-domain FID at each eval.at_steps step",
    "curve/fidelity_attacked": "attack-domain prompt fidelity at each eval.at_steps step",
}


def before_attack(name: str) -> bool:
    """Is ``name`` measured on the base or protected model (one number per protected model, whichever attack
    followed)? Costs are the job's own (a cached protection costs 0), so they are not."""
    return not name.startswith(("cost/", "curve/")) and "_after" not in name and "attacked" not in name


def _verification(out: dict[str, float], v: VerificationReport | None, when: str, suffix: str = "") -> None:
    if v is None:
        return
    out[f"verify/rate_{when}{suffix}"] = v.rate
    out[f"verify/detected_{when}{suffix}"] = float(v.detected)
    if v.p_value is not None:
        out[f"verify/p_value_{when}{suffix}"] = v.p_value
    for fpr, t in v.tpr_at_fpr.items():
        out[f"verify/tpr_{when}@fpr{fpr}{suffix}"] = t.tpr
    for name, value in v.figures.items():
        if isinstance(value, int | float):
            out[f"verify/{name}_{when}{suffix}"] = float(value)


def _quality(out: dict[str, float], q: QualityReport | None, name: str) -> None:
    if q is not None:
        out[f"quality/fid_{name}"] = q.fid
        out[f"quality/kid_{name}"] = q.kid_mean
        for what, value in q.fidelity.items():  # prompt fidelity: all attributes, each, and named groups
            out[f"quality/fidelity_{name}" if what == ALL else f"quality/fidelity_{what}_{name}"] = value
        if ALL in q.fidelity_real:
            out["quality/fidelity_real"] = q.fidelity_real[ALL]  # the ceiling: real images, same captions


def headline(result: RunResult) -> dict[str, float]:
    """Every headline number of ``result`` by its stable name (missing measurements are simply absent)."""
    out: dict[str, float] = {}
    if result.base.verification is not None:
        out["verify/rate_never_watermarked"] = result.base.verification.rate
    _verification(out, result.protected.verification, "before")
    for label, v in result.protected.image_attacks.items():
        out[f"verify/image_attack/{label}"] = v.rate
    for when, model in (("base", result.base), ("protected", result.protected)):
        _quality(out, model.quality.get("clean"), when)
    several = len(result.attacks) > 1
    for domain, attack in result.attacks.items():
        suffix = f"/{domain}" if several else ""
        _verification(out, attack.model.verification, "after", suffix)
        _quality(out, attack.model.quality.get("clean"), f"attacked{suffix}")
        _domain_quality(out, result.base, attack.model, domain)
        own = attack.model.paired.get(domain, {})  # what the attack did on its own domain, image by image
        for metric, name in (("fid", "fid"), ("fidelity/all", "fidelity")):
            if metric in own:
                out[f"quality/{name}_delta_attacked/{domain}"] = own[metric].value
        for key, name in (("step_time_s", "attack_step_s"), ("trainable_params", "trainable_params")):
            if isinstance(attack.cost.get(key), int | float):
                out[f"cost/{name}{suffix}"] = float(attack.cost[key])
    if "quality/fid_base" in out and "quality/fid_protected" in out:
        out["quality/fid_delta"] = out["quality/fid_protected"] - out["quality/fid_base"]
    if "quality/kid_base" in out and "quality/kid_protected" in out:
        out["quality/kid_delta"] = out["quality/kid_protected"] - out["quality/kid_base"]
    if "quality/fidelity_base" in out and "quality/fidelity_protected" in out:
        out["quality/fidelity_delta"] = out["quality/fidelity_protected"] - out["quality/fidelity_base"]
    out.update({f"defense/{k}": float(v) for k, v in result.summary.items() if _number(v)})
    out.update(_stage_costs(result))
    return out


def _domain_quality(out: dict[str, float], base: ModelReport, attacked: ModelReport, domain: str) -> None:
    for name, model in (("base", base), ("attacked", attacked)):
        q = model.quality.get(domain)
        if q is not None and domain != "clean":
            out[f"quality/fid_{name}/{domain}"] = q.fid
            if ALL in q.fidelity:
                out[f"quality/fidelity_{name}/{domain}"] = q.fidelity[ALL]


def _stage_costs(result: RunResult) -> dict[str, float]:
    walls = {k: float(v.get("wall_s", 0.0)) for k, v in result.stages.items() if isinstance(v, Mapping)}
    out = {"cost/protect_s": walls.get("protect", 0.0)} if "protect" in walls else {}
    attack = sum(v for k, v in walls.items() if k == "attack" or k.startswith("attack_"))
    if attack:
        out["cost/attack_s"] = attack
    return out


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def curve_points(result: RunResult) -> list[tuple[int, dict[str, float]]]:
    """(attack step, {curve/rate_after, curve/fid_attacked, curve/fidelity_attacked}) for every eval.at_steps
    point, all domains."""
    several = len(result.attacks) > 1
    steps: dict[int, dict[str, float]] = {}
    for domain, attack in result.attacks.items():
        suffix = f"/{domain}" if several else ""
        for p in attack.curve:
            values = steps.setdefault(p.step, {})
            if p.verification is not None:
                values[f"curve/rate_after{suffix}"] = p.verification.rate
            q = p.quality.get(domain) or next(iter(p.quality.values()), None)
            if q is not None:
                values[f"curve/fid_attacked{suffix}"] = q.fid
                if ALL in q.fidelity:
                    values[f"curve/fidelity_attacked{suffix}"] = q.fidelity[ALL]
    return sorted(steps.items())


def steps_to_removal(result: RunResult) -> dict[str, str]:
    """Per attack domain with an ``eval.at_steps`` curve: the first step at which the watermark is no longer
    detected, or ``> N`` when it still is at the last step N measured (RoMa's comparison of methods)."""
    out = {}
    for domain, attack in result.attacks.items():
        points = [p for p in attack.curve if p.verification is not None]
        if points:
            gone = next((p.step for p in sorted(points, key=lambda p: p.step) if not p.verification.detected), None)
            out[domain] = str(gone) if gone is not None else f"> {max(p.step for p in points)}"
    return out
