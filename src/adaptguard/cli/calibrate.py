"""``adaptguard calibrate`` / ``python -m experiments.calibrate``: false positives of a key, measured.

    adaptguard calibrate key=release/owner.key models=[base_folder,other_base,other_base_finetuned]

Every listed model must never have seen the watermark (the unprotected base, independently trained
models, their fine-tunes): each detection is a false positive. Prints the empirical model-level and
per-trial false-positive rates with Clopper-Pearson intervals beside the analytic rates the
decision rule targets. Options: base=<folder> (what LoRA files / bare UNets in the list complete),
seed=<int>, device=..., out=<file.json>, --json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from adaptguard.cli.app import quiet_libraries, user_errors
from adaptguard.cli.options import key_context, parse_options, paths
from adaptguard.core.errors import ConfigError
from adaptguard.core.owner_key import OwnerKey
from adaptguard.models.suspect import Suspect
from adaptguard.pipeline.owner import calibrate

OPTIONS = {"key": str, "models": paths, "base": str, "seed": int, "device": str, "out": str}


def run_calibration(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    opts = parse_options(argv, OPTIONS, ["--json"], usage=__doc__ or "")
    if not opts.get("key") or not opts.get("models"):
        raise ConfigError("models: required; key=<owner.key> models=[<folder or checkpoint>,...] (never-watermarked)")
    key = OwnerKey.load(opts["key"])
    suspects = [Suspect(p, base=opts.get("base"), key=f"models[{i}]") for i, p in enumerate(opts["models"])]
    ctx = key_context(key, opts)
    report = calibrate(key, suspects, ctx)
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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    quiet_libraries()
    with user_errors():
        report, opts = run_calibration(sys.argv[1:] if argv is None else argv)
    print(json.dumps(report, indent=2) if opts["--json"] else text(report))


if __name__ == "__main__":
    main()
