"""``adaptguard calibrate`` / ``python -m experiments.calibrate``: false positives of a key, measured.

    adaptguard calibrate key=release/owner.key models=[base_folder,other_base,other_base_finetuned]
    adaptguard calibrate key=release/owner.key models=auto null_keys=200 out=null.json

Every model must never have seen the watermark: each detection is a false positive. ``models=auto`` makes
them (cached): the base of ``model=<config>`` (default tiny), the base fine-tuned by each of
``attacks=[full,lora]`` on ``dataset=<config>`` (default shapes), and the same model config initialised
from another seed and pretrained by adaptguard (``independent=false`` skips it; it pretrains once, like
any base; ``independent_pretrain=[steps=1000,vae_steps=500]`` shortens that). ``null_keys=N`` verifies N random keys of the same defense on every model besides the owner's
key: the decision's false-positive rate over keys, with its interval, beside the target it claims.
``overrides=[k=v,...]``: Hydra overrides for the composed model / dataset / attack configs (e.g.
``attack.steps=100``). Prints the empirical model-level and per-trial false-positive rates with
Clopper-Pearson intervals. Options: base=<folder> (what LoRA files / bare UNets in the list complete),
seed=<int>, device=..., out=<file.json>, --json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from adaptguard.cli.app import quiet_libraries, user_errors
from adaptguard.cli.options import key_context, parse_options, paths
from adaptguard.core.errors import ConfigError
from adaptguard.core.owner_key import OwnerKey
from adaptguard.models.suspect import Suspect
from adaptguard.pipeline.null_models import NullModel
from adaptguard.pipeline.owner import calibrate

OPTIONS = {"key": str, "models": paths, "base": str, "seed": int, "device": str, "out": str, "null_keys": int,
           "model": str, "dataset": str, "attacks": paths, "independent": lambda v: v.lower() in ("1", "true", "yes"),
           "overrides": paths, "independent_pretrain": paths}  # fmt: skip
AUTO = "auto"


def auto_models(opts: dict[str, Any], seed: int) -> list[NullModel]:
    """``models=auto``: never-watermarked models made from the composed configs (cached in the artifact cache)."""
    from adaptguard.cli.build import instantiate, make_context
    from adaptguard.cli.config import compose
    from adaptguard.pipeline.null_models import never_watermarked

    attacks = opts.get("attacks")
    attacks = ["full", "lora"] if attacks is None else attacks
    base = [f"model={opts.get('model') or 'tiny'}", f"dataset={opts.get('dataset') or 'shapes'}", f"seed={seed}",
            "logger=none", *(opts.get("overrides") or [])]  # fmt: skip
    if opts.get("device"):
        base.append(f"device={opts['device']}")
    work = Path(tempfile.mkdtemp(prefix="adaptguard-calibrate-"))  # fits leave their logs here, nothing else
    cfg = compose(base, output_dir=work)
    ctx = make_context(cfg, work)
    made = [instantiate(compose([*base, f"attack={a}"]).attack) for a in attacks]
    independent = opts.get("independent")
    pretrain = {}
    for item in opts.get("independent_pretrain") or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"independent_pretrain: expected [key=value,...] (model.pretrain keys), got {item!r}")
        pretrain[name] = yaml.safe_load(value)
    return never_watermarked(instantiate(cfg.model), instantiate(cfg.dataset), made, ctx, independent is not False,
                             pretrain)  # fmt: skip


def null_models(opts: dict[str, Any], ctx: Any) -> tuple[list[Suspect], list[NullModel]]:
    """The never-watermarked models of ``models=[...]``: folders / checkpoints to open, and those ``auto`` makes."""
    listed = [p for p in opts["models"] if p != AUTO]
    suspects = [Suspect(p, base=opts.get("base"), key=f"models[{i}]") for i, p in enumerate(listed)]
    return suspects, (auto_models(opts, ctx.seed) if AUTO in opts["models"] else [])


def run_calibration(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    opts = parse_options(argv, OPTIONS, ["--json"], usage=__doc__ or "")
    if not opts.get("key") or not opts.get("models"):
        raise ConfigError("models: required; key=<owner.key> models=[<folder or checkpoint>,...] (never-watermarked) "
                          "or models=auto")  # fmt: skip
    if (n := opts.get("null_keys")) is not None and n < 0:
        raise ConfigError(f"null_keys: must be >= 0, got {n}")
    key = OwnerKey.load(opts["key"])
    ctx = key_context(key, opts)
    suspects, made = null_models(opts, ctx)
    report = calibrate(key, suspects, ctx, null_keys=opts.get("null_keys") or 0, models=made)
    if out := opts.get("out"):
        Path(out).expanduser().write_text(json.dumps(report, indent=2))
    return report, opts


def text(report: dict[str, Any]) -> str:
    lo, hi = report["empirical_fpr_ci"]
    tlo, thi = report["empirical_trial_fpr_ci"]
    lines = [f"{report['defense']} key against {report['models']} never-watermarked models:"]
    for v in report["verdicts"]:
        lines.append(f"  {'DETECTED' if v['detected'] else 'not detected':<12} rate {v['rate']:.3f} "
                     f"p {v['p_value']:.3g}  {v['suspect']}")  # fmt: skip
    lines.append(
        f"  model level: {report['false_positives']}/{report['models']} false positives, empirical FPR "
        f"{report['empirical_fpr']:.3f} [{lo:.3f}, {hi:.3f}] vs analytic {report['analytic_fpr']}"
    )
    lines.append(
        f"  trial level: {report['trial_false_positives']}/{report['trials']} trials passed, empirical "
        f"{report['empirical_trial_fpr']:.4f} [{tlo:.4f}, {thi:.4f}] vs analytic {report['trial_fpr']}"
    )
    if null := report.get("null_keys"):
        lines.append(f"  random keys ({null['keys_per_model']} per model), decisions detected / made:")
        for m in [*null["models"], {**null, "model": "all models"}]:
            lo, hi = m["fpr_ci"]
            ilo, ihi = m["independence_fpr_ci"]
            lines.append(f"    {m['model']:<16} {m['false_positives']}/{m['decisions']}: FPR {m['fpr']:.4f} "
                         f"[{lo:.4f}, {hi:.4f}]; assuming independent trials {m['independence_fpr']:.4f} "
                         f"[{ilo:.4f}, {ihi:.4f}]; target {m['target']}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    quiet_libraries()
    with user_errors():
        report, opts = run_calibration(sys.argv[1:] if argv is None else argv)
    print(json.dumps(report, indent=2) if opts["--json"] else text(report))


if __name__ == "__main__":
    main()
