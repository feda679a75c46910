"""``adaptguard forge`` / ``python -m experiments.forge``: can a key be forged for a model that never carried it?

    adaptguard forge key=release/owner.key models=auto budget=64 null_keys=32
    adaptguard forge key=release/owner.key models=[other_base,other_base_finetuned] out=forge.json

For each never-watermarked model (``models=``: as ``adaptguard calibrate`` takes them, ``auto`` included,
with its options), a forger who knows the method, and the public parts of ``key`` (what a random key of
the same defense keeps: the codec or extractor, the prompts, AIAO's blocks), searches for the secret parts
that make the model pass ``verify``: free bits (a message, the backdoor's target grid) majority-voted from
``budget`` images of the model's own; a key that is only a seed (AIAO) by the best of ``budget`` random
keys. The search runs on the forger's own draws; the forged key is then verified with the key's seed (or
``seed=``), as a dispute would verify it. Printed: false claims out of models with their 95 % interval,
beside the random-key false-positive rate (``null_keys=N`` per model) and the target the decision claims.
The forged keys are never written. Options: base=, seed=, device=, out=<file.json>, --json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from adaptguard.cli.app import quiet_libraries, user_errors
from adaptguard.cli.calibrate import OPTIONS, null_models
from adaptguard.cli.options import key_context, parse_options
from adaptguard.core.errors import ConfigError
from adaptguard.core.owner_key import OwnerKey
from adaptguard.pipeline.forgery import forge
from adaptguard.pipeline.owner import opened

FORGE_OPTIONS = {**OPTIONS, "budget": int}
DEFAULT_BUDGET = 64


def run_forge(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    opts = parse_options(argv, FORGE_OPTIONS, ["--json"], usage=__doc__ or "")
    if not opts.get("key") or not opts.get("models"):
        raise ConfigError("models: required; key=<owner.key> models=[<folder or checkpoint>,...] (never-watermarked) "
                          "or models=auto")  # fmt: skip
    budget = DEFAULT_BUDGET if opts.get("budget") is None else opts["budget"]
    if budget < 1 or (opts.get("null_keys") or 0) < 0:
        raise ConfigError(f"budget: must be >= 1 (got {budget}); null_keys: >= 0")
    key = OwnerKey.load(opts["key"])
    ctx = key_context(key, opts)
    suspects, made = null_models(opts, ctx)
    models = opened(key, suspects, ctx) + made
    report = forge(key, models, ctx, budget, null_keys=opts.get("null_keys") or 0)
    if out := opts.get("out"):
        Path(out).expanduser().write_text(json.dumps(report, indent=2))
    return report, opts


def text(report: dict[str, Any]) -> str:
    lo, hi = report["false_claim_ci"]
    lines = [f"{report['defense']}: keys forged against {report['models']} never-watermarked models:"]
    for r in report["forged"]:
        spent = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in r["budget"].items())
        lines.append(f"  {'DETECTED' if r['detected'] else 'not detected':<12} rate {r['rate']:.3f} "
                     f"p {r['p_value']:.3g}  {r['model']}  ({r['search']}; {spent})")  # fmt: skip
    lines.append(f"  false claims: {report['false_claims']}/{report['models']}, rate {report['false_claim_rate']:.3f} "
                 f"[{lo:.3f}, {hi:.3f}]; the decision's target FPR {report['target_fpr']}")  # fmt: skip
    if null := report.get("random_keys"):
        lo, hi = null["fpr_ci"]
        lines.append(f"  random keys: {null['false_positives']}/{null['decisions']} detected, FPR {null['fpr']:.4f} "
                     f"[{lo:.4f}, {hi:.4f}]")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    quiet_libraries()
    with user_errors():
        report, opts = run_forge(sys.argv[1:] if argv is None else argv)
    print(json.dumps(report, indent=2) if opts["--json"] else text(report))


if __name__ == "__main__":
    main()
