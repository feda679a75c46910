"""Forgery: can someone who never protected a model claim it with a key of their own?

``adaptguard calibrate`` counts how often *random* keys pass verification on never-watermarked models: the
false-positive rate the decision promises. A forger does better than random: it searches for the key
against the model (:meth:`Defense.forge_key`: bits read from the model's own images and majority-voted where
the key holds free bits; the best of many random keys where it holds only a seed). The search runs on the
forger's own draws; the claim is then judged by ``verify`` with the verifier's seed, as a dispute would be.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from adaptguard.core.context import RunContext
from adaptguard.core.owner_key import OwnerKey
from adaptguard.metrics.stats import clopper_pearson
from adaptguard.pipeline.null_models import NullModel, measure_null_fpr
from adaptguard.pipeline.owner import defense_from_key

log = logging.getLogger(__name__)
FORGER_SEED_OFFSET = 1_000_000  # the forger's draws: never the verifier's (the key's seed)


def forge(
    key: OwnerKey, models: Sequence[NullModel], ctx: RunContext, budget: int, null_keys: int = 0
) -> dict[str, Any]:
    """For each never-watermarked model: forge a key within ``budget`` (images generated, or keys tried, as the
    defense's search counts it), then verify it there with ``ctx``'s seed. ``null_keys``: random keys beside it
    (the calibrated false-positive rate the forged claims are compared with)."""
    defense = defense_from_key(key)
    like = defense.key_type(**key.secret)
    forger = replace(ctx, seed=ctx.seed + FORGER_SEED_OFFSET)
    rows = []
    for m in models:
        forgery = defense.forge_key(m.model, like, forger, budget)
        claim = defense.verify(m.model, forgery.key, ctx)
        log.info("forged %s key on %s: %s", key.defense, m.name, "DETECTED" if claim.detected else "not detected")
        rows.append({"model": m.name, "how": m.how, "search": forgery.method, "budget": forgery.budget,
                     "detected": bool(claim.detected), "rate": claim.rate, "ci": list(claim.ci),
                     "p_value": claim.p_value, "mean_score": float(np.mean(claim.scores)) if claim.scores else None,
                     "statistic": claim.statistic, "figures": dict(claim.figures)})  # fmt: skip
    claims = sum(r["detected"] for r in rows)
    report: dict[str, Any] = {
        "defense": key.defense,
        "budget": budget,
        "models": len(rows),
        "false_claims": claims,
        "false_claim_rate": claims / len(rows) if rows else None,
        "false_claim_ci": list(clopper_pearson(claims, len(rows))),
        "target_fpr": key.decision.get("model_fpr"),
        "forged": rows,
    }
    if null_keys:
        report["random_keys"] = measure_null_fpr(defense, like, models, null_keys, ctx)
    return report
