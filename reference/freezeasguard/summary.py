"""Summary of a run.sh output folder: per seed, the frozen shares and each domain's FID / prompt fidelity.

    python summary.py OUT SEED [SEED ...]     # prints the JSON and writes OUT/summary.json

Per domain: FID (our shapes network, lower = closer to the real images) and prompt fidelity (share of images
whose kind and colour match the prompt) of the base model before any fine-tune and after the attacker's
fine-tune: unconstrained (``full``), under the learned mask and under the random mask; and each masked FID's
change against the unconstrained fine-tune, in % (the results page's "FID change"). Timings: wall seconds of
every stage, and seconds per step from the stage's own progress bar (model loading and saving excluded).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

DOMAINS = ("illegal", "legal")
MODELS = ("base", "full", "learned", "random")
FIDELITY = "kind+colour"
BAR = re.compile(r"Steps:\s+\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+) \[[0-9:]+<[0-9:?]+,\s*([0-9.]+)(it/s|s/it)")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def domain_result(seed_dir: Path, domain: str) -> dict:
    a = read(seed_dir / f"eval_{domain}_base_full.json")
    b = read(seed_dir / f"eval_{domain}_learned_random.json")
    fid = {"base": a["fid_ft"], "full": a["fid_mft"], "learned": b["fid_ft"], "random": b["fid_mft"]}
    fidelity = {"base": a["fidelity_ft"], "full": a["fidelity_mft"], "learned": b["fidelity_ft"],
                "random": b["fidelity_mft"]}  # fmt: skip
    return {
        "fid": fid,
        "fid_change_vs_full_pct": {m: 100 * (fid[m] - fid["full"]) / fid["full"] for m in ("learned", "random")},
        f"fidelity_{FIDELITY}": {m: fidelity[m].get(FIDELITY) for m in MODELS},
        f"fidelity_{FIDELITY}_real": a["fidelity_real"].get(FIDELITY),
        "fidelity_all": {m: fidelity[m].get("all") for m in MODELS},
        "num_samples": a["num_samples"],
    }


def frozen(seed_dir: Path) -> dict:
    out = {}
    for mask in ("learned", "random"):
        s = read(seed_dir / f"mask_{mask}.json")
        out[mask] = {"params": s["ratio_by_params"], "tensors": s["ratio_by_tensors"],
                     "frozen_tensors": s["frozen_tensors"], "total_tensors": s["total_tensors"]}  # fmt: skip
    return out


def step_seconds(log: Path) -> float | None:
    """Seconds per counted step: the rate tqdm shows on the last ``Steps:`` bar of upstream's trainers (its moving
    average; for the mask learner a counted step is a user step, the mask steps between them included)."""
    if not log.is_file():
        return None
    bars = BAR.findall(log.read_text(errors="replace"))
    if not bars:
        return None
    rate, unit = float(bars[-1][2]), bars[-1][3]
    return 1 / rate if unit == "it/s" else rate


def timings(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines() if line.strip()]
    by_stage: dict[str, list[dict]] = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append(r)
    result = {}
    for stage, rs in by_stage.items():
        per_step = [x for x in (step_seconds(Path(r["log"])) for r in rs) if x is not None]
        result[stage] = {
            "runs": len(rs),
            "steps": rs[0]["steps"],
            "wall_seconds_mean": round(statistics.mean(r["seconds"] for r in rs), 1),
            "seconds_per_step_mean": round(statistics.mean(per_step), 2) if per_step else None,
        }
    return result


def mean_sd(values: list[float]) -> list[float]:
    values = [v for v in values if v is not None]
    if not values:
        return []
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def main() -> None:
    out, seeds = Path(sys.argv[1]), sys.argv[2:]
    per_seed = {}
    for seed in seeds:
        d = out / f"seed{seed}"
        per_seed[seed] = {"frozen_share": frozen(d), **{dom: domain_result(d, dom) for dom in DOMAINS}}
    over = {
        "frozen_params": {m: mean_sd([r["frozen_share"][m]["params"] for r in per_seed.values()])
                          for m in ("learned", "random")},
        "frozen_tensors": {m: mean_sd([r["frozen_share"][m]["tensors"] for r in per_seed.values()])
                           for m in ("learned", "random")},
    }  # fmt: skip
    for dom in DOMAINS:
        over[f"{dom}_fid_change_vs_full_pct"] = {
            m: mean_sd([r[dom]["fid_change_vs_full_pct"][m] for r in per_seed.values()]) for m in ("learned", "random")
        }
    settings = read(out / "settings.json") if (out / "settings.json").is_file() else {}
    summary = {"settings": settings, "seeds": per_seed, "mean_sd_over_seeds": over, "timings": timings(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
