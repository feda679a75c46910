"""The watermark decisions' false-positive rates, measured, and their true-positive rates, old rule vs new
(docs/evaluation.md, "Measured false-positive rates").

    python -m benchmarks.null_fpr run      # hours on 2 CPU cores; a rerun resumes (cache, finished jobs, files)
    python -m benchmarks.null_fpr table    # the markdown tables, from what `run` wrote

`run` is these commands, in order (each skipped when its output exists):

1. an owner key per defense (backdoor, aiao, sleepermark): `adaptguard protect` with the page preset (its
   per-option settings) and a fixed key seed;
2. `adaptguard calibrate key=<it> models=auto null_keys=N`: the base, the base fine-tuned by attack=full and
   attack=lora (the page's 60 steps) and an independently initialised tiny model pretrained by our code,
   each with N random keys (AIAO: 925, so 3,700 decisions bound its rate below the target; others 200);
3. the watermarked models: `experiment=page/compare_watermarks` for the three with step 1's keys (so the
   protections come from the cache), attacks full and lora, seed 0, without FID (their verifications carry
   both decisions: the true-positive side).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from adaptguard.metrics.stats import binomial_tail, clopper_pearson

ROOT = Path("multirun/null_fpr")
DEFENSES = {"backdoor": 200, "aiao": 925, "sleepermark": 200}  # random keys per never-watermarked model
KEY_SEED = 20261203
PAGE = ["experiment=page/compare_watermarks", "model.sampler.steps=10"]
NULL_MODELS = ["overrides=[model.sampler.steps=10,attack.steps=60,attack.batch_size=16]", "attacks=[full,lora]"]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def run() -> None:
    python = sys.executable
    for defense, keys in DEFENSES.items():
        release = ROOT / "keys" / defense
        if not (release / "owner.key").is_file():
            _run([python, "-m", "adaptguard.cli.main", "protect", *PAGE, f"defense={defense}",
                  f"defense.key_seed={KEY_SEED}", "progress=false", f"out={release}"])  # fmt: skip
        out = ROOT / f"null_{defense}.json"
        if not out.is_file():
            _run([python, "-m", "adaptguard.cli.main", "calibrate", f"key={release / 'owner.key'}", "models=auto",
                  *NULL_MODELS, f"null_keys={keys}", f"out={out}"])  # fmt: skip
    _run([python, "-m", "experiments.run", "-m", *PAGE, f"defense={','.join(DEFENSES)}", "attack=full,lora",
          f"defense.key_seed={KEY_SEED}", "seed=0", "eval.fid=null", "eval.image_attacks=[]",
          f"hydra.sweep.dir={ROOT / 'tpr'}"])  # fmt: skip


def _interval(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.4f} [{lo:.4f}, {hi:.4f}]"


def old_aiao_threshold(base_rates: list[float], trials: int, alpha: float, model_fpr: float, keys: int = 32) -> float:
    """AIAO's rule before the randomization test: max(binomial bound, above every rate of ``keys`` random keys
    on the base model) - the protect-time calibration, reproduced on the first ``keys`` null keys."""
    theory = next(s for s in range(trials + 1) if binomial_tail(s, trials, alpha) <= model_fpr) / trials
    return max(theory, math.nextafter(max(base_rates[:keys]), math.inf))


def fpr_rows(defense: str, report: dict[str, Any]) -> list[str]:
    null = report["null_keys"]
    target = null["target"]
    rows = []
    for m in [*null["models"], {**null, "model": "all models"}]:
        new = _interval(m["false_positives"], m["decisions"])
        old = _interval(m["independence_false_positives"], m["decisions"])
        rows.append(f"| {defense} | {m['model']} | {m['decisions']} | {target:g} | {new} | {old} |")
    if defense == "aiao":
        trials = report["verdicts"][0]["trials"]
        base = next(m for m in null["models"] if m["model"] == "base")
        threshold = old_aiao_threshold(base["rates"], trials, report["trial_fpr"], target)
        rates = [r for m in null["models"] for r in m["rates"][32 if m["model"] == "base" else 0 :]]
        hits = sum(r >= threshold for r in rates)
        rows.append(f"| aiao | all models, old calibrated rule (rate ≥ {threshold:.3f}) | {len(rates)} | {target:g} | "
                    f"{_interval(hits, len(rates))} | - |")  # fmt: skip
    return rows


def tpr_rows(sweep: Path) -> list[str]:
    """Watermarked models (protected, after full, after lora): detected under each rule."""
    counts: dict[tuple[str, str], list[int]] = {}
    for path in sorted(sweep.glob("*/results.json")):
        r = json.loads(path.read_text())
        if r.get("status") != "ok":
            continue
        defense = r["run"]["defense"]
        models = {"protected": r["protected"]}
        models |= {f"after {r['run']['attack']}": a["model"] for a in r["attacks"].values()}
        for name, m in models.items():
            v = m.get("verification")
            if v is None or (name == "protected" and r["run"]["attack"] != "full"):  # each protected model once
                continue
            c = counts.setdefault((defense, name), [0, 0, 0])
            c[0] += 1
            c[1] += bool(v["detected"])
            c[2] += bool(v["details"].get("independence_detected"))
    return [f"| {d} | {name} | {n} | {new}/{n} | {old}/{n} |" for (d, name), (n, new, old) in sorted(counts.items())]


def table() -> str:
    lines = ["| defense | never-watermarked model | decisions | target | false positives, new rule [95 % CI] | "
             "assuming independent trials (old) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for defense in DEFENSES:
        path = ROOT / f"null_{defense}.json"
        if path.is_file():
            lines += fpr_rows(defense, json.loads(path.read_text()))
    lines += ["", "| defense | watermarked model | models | detected, new rule | detected, old rule |",
              "|---|---|---|---|---|", *tpr_rows(ROOT / "tpr")]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["run", "table"])
    args = parser.parse_args()
    if args.what == "run":
        run()
    print(table())


if __name__ == "__main__":
    main()
