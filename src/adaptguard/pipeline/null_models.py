"""The false-positive rate of a watermark decision, measured: random keys against never-watermarked models.

A decision's stated FPR (``defense.model_fpr``) is a claim about models that do not carry the key. Here it
is counted. Random keys of the defense (:meth:`Defense.random_key`: the owner's public parts, fresh secret
parts) are verified against models that never saw any watermark: the base, the base fine-tuned by each
attack, and an independently initialised and pretrained base. Every detection is a false positive. Each
decision is also made by the rule that assumes independent trials (``details.independence_detected``),
so one run shows whether that assumption costs anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from adaptguard.attacks.base import Attack
from adaptguard.core.artifacts import RESUME_DIR
from adaptguard.core.context import RunContext
from adaptguard.core.keys import SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense
from adaptguard.metrics.stats import clopper_pearson
from adaptguard.models.bundle import DiffusionModel
from adaptguard.sources import ModelSource

log = logging.getLogger(__name__)
NULL_KEY_OFFSET = 7_777_777  # random keys' seeds: never a run's own key seed (seed * 1_000_003 + 0x5EED)


@dataclass
class NullModel:
    """A model that never saw a watermark, and how it was made."""

    name: str
    how: str
    model: DiffusionModel


def never_watermarked(
    source: ModelSource,
    data: CaptionedImageDataModule,
    attacks: Sequence[Attack],
    ctx: RunContext,
    independent: bool = True,
    independent_pretrain: dict[str, Any] | None = None,
) -> list[NullModel]:
    """The base; the base fine-tuned by each of ``attacks`` on ``data`` (cached like a protection); and, when
    the source is built from config (it has an ``init_seed``), the same config initialised from another seed
    and pretrained by our code (cached like any base; ``independent_pretrain`` overrides its pretraining
    settings, e.g. fewer steps)."""
    base = source.load(ctx)
    models = [NullModel("base", f"{source.name} as pretrained", base)]
    for attack in attacks:
        attack.check_data(data)
        spec = {"base": source.describe(), "attack": attack.describe(), "data": data.describe(), "seed": ctx.seed}

        def build(work: Path, attack: Attack = attack) -> None:
            attack.run(base, data, None, ctx.with_checkpoints(work / RESUME_DIR)).save(work / "model")

        folder = ctx.cache.get_or_build("never_watermarked", spec, build, code=(attack, data))
        tuned = DiffusionModel.load(folder / "model", sampler=base.sampler).to(base.device)
        models.append(NullModel(f"base+{attack.name}", f"{source.name} fine-tuned by attack={attack.name}", tuned))
    init_seed = getattr(source, "init_seed", None)
    if independent and init_seed is not None:
        pretrain = {**getattr(source, "pretrain", {}), **(independent_pretrain or {})}
        other = replace(source, init_seed=init_seed + 1, pretrain=pretrain)  # type: ignore[type-var]
        log.info("never-watermarked models: pretraining %s from init_seed=%d (cached)", source.name, init_seed + 1)
        models.append(NullModel("independent", f"{source.name} from init_seed={init_seed + 1}", other.load(ctx)))
    return models


def null_key_seed(ctx: RunContext, i: int) -> int:
    return (ctx.seed * 1_000_003 + NULL_KEY_OFFSET + i) % 2**62


def null_verifications(
    defense: Defense, like: SecretKey, model: DiffusionModel, n_keys: int, ctx: RunContext
) -> list[Verification]:
    """``n_keys`` random keys verified on ``model``; output watermarks sample once per sampling identity."""
    keys = [defense.random_key(like, null_key_seed(ctx, i)) for i in range(n_keys)]
    return defense.verify_many(model, keys, ctx)


def false_positives(verifications: Sequence[Verification], model_fpr: float | None) -> dict[str, Any]:
    """Counts, rates and 95 % Clopper-Pearson intervals under the decision and under independence."""
    n = len(verifications)
    new = sum(bool(v.detected) for v in verifications)
    old = sum(bool(v.details.get("independence_detected")) for v in verifications)
    return {
        "decisions": n,
        "target": model_fpr,
        "false_positives": new,
        "fpr": new / n if n else None,
        "fpr_ci": list(clopper_pearson(new, n)),
        "independence_false_positives": old,
        "independence_fpr": old / n if n else None,
        "independence_fpr_ci": list(clopper_pearson(old, n)),
    }


def model_record(name: str, how: str, verifications: Sequence[Verification], model_fpr: float | None) -> dict:
    """One model's null decisions: the counts, and per key the rate and both p-values (for re-analysis)."""
    return {
        "model": name,
        "how": how,
        **false_positives(verifications, model_fpr),
        "rates": [round(v.rate, 6) for v in verifications],
        "p_values": [v.p_value for v in verifications],
        "independence_p_values": [v.details.get("independence_p_value") for v in verifications],
        "bit_accuracies": [round(v.figures.get("bit_accuracy", np.nan), 6) for v in verifications],
    }


def measure_null_fpr(
    defense: Defense, like: SecretKey, models: Sequence[NullModel], n_keys: int, ctx: RunContext
) -> dict[str, Any]:
    """Every model with ``n_keys`` random keys; the pooled false-positive rate over all decisions."""
    records, pooled = [], []
    for m in models:
        vs = null_verifications(defense, like, m.model, n_keys, ctx)
        pooled += vs
        records.append(model_record(m.name, m.how, vs, getattr(defense, "model_fpr", None)))
        log.info("null keys on %s: %d/%d detected", m.name, records[-1]["false_positives"], len(vs))
    return {"defense": defense.name, "keys_per_model": n_keys, "models": records,
            **false_positives(pooled, getattr(defense, "model_fpr", None))}  # fmt: skip


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
