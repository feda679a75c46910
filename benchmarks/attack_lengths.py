"""How long must an attack run before it has adapted the model? Each fine-tuning attack's gain on the
attacker's domain against its steps, on the unprotected base (docs/attacks.md, "Attack lengths").

    python -m benchmarks.attack_lengths run [--attacks full lora] [--seeds 0 1 2] [--max-steps 1200]
    python -m benchmarks.attack_lengths table

`run` is, per attack and seed (each skipped when its results.json says ok, so a rerun resumes):
`python -m experiments.run defense=none attack=<a> attack.steps=<max> eval.at_steps=[0,...,max] seed=<s>`,
which scores FID/KID and prompt fidelity on held-out images of the attacker's domain (`eval_attacker`) at
each step. `table` prints the gain (step 0 minus step s for FID; step s minus step 0 for fidelity) per step,
mean ± t-interval over seeds, and the plateau length: the first step whose mean FID gain reaches
`--share` (0.9) of the largest mean gain on the curve.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from adaptguard.metrics.stats import SeedInterval

ROOT = Path("multirun/attack_lengths")
FIDELITY = "kind+colour"


def steps_grid(max_steps: int) -> list[int]:
    """0, then doubling from 25 up to ``max_steps`` (the last point is ``max_steps`` itself)."""
    grid, s = [0], 25
    while s < max_steps:
        grid.append(s)
        s *= 2
    return [*grid, max_steps]


def run(attacks: list[str], seeds: list[int], max_steps: int, extra: list[str]) -> None:
    grid = ",".join(map(str, steps_grid(max_steps)))
    for attack in attacks:
        for seed in seeds:
            out = ROOT / f"{attack}_s{seed}"
            done = out / "results.json"
            if done.is_file() and json.loads(done.read_text()).get("status") == "ok":
                continue
            cmd = [sys.executable, "-m", "experiments.run", "defense=none", f"attack={attack}",
                   f"attack.steps={max_steps}", f"eval.at_steps=[{grid}]", f"seed={seed}", "eval.clean_split=null",
                   "logger=none", "progress=false", f"hydra.run.dir={out}", *extra]  # fmt: skip
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)


def curves(attack: str) -> dict[int, dict[str, list[float]]]:
    """step -> {"fid": [gain per seed], "fidelity": [...]} for one attack's finished runs."""
    out: dict[int, dict[str, list[float]]] = {}
    for path in sorted(ROOT.glob(f"{attack}_s*/results.json")):
        r = json.loads(path.read_text())
        if r.get("status") != "ok":
            continue
        (report,) = r["attacks"].values()
        points = {p["step"]: (p.get("quality") or {}).get("attacker") for p in report["curve"]}
        start = points.get(0)
        if not start:
            continue
        for step, q in sorted(points.items()):
            if q:
                gains = out.setdefault(step, {"fid": [], "fidelity": []})
                gains["fid"].append(start["fid"] - q["fid"])
                gains["fidelity"].append(q["fidelity"].get(FIDELITY, float("nan")) - start["fidelity"].get(FIDELITY, 0))
    return out


def plateau(gains: dict[int, dict[str, list[float]]], share: float) -> int | None:
    means = {s: sum(g["fid"]) / len(g["fid"]) for s, g in gains.items() if g["fid"]}
    top = max(means.values(), default=0.0)
    if top <= 0:
        return None
    return min(s for s, m in means.items() if m >= share * top)


def _cell(values: list[float], digits: int) -> str:
    """Mean, with its 95 % t-interval over seeds where there are two or more."""
    iv = SeedInterval.of(values)
    if iv.low is None:
        return f"{iv.mean:+.{digits}f}"
    return f"{iv.mean:+.{digits}f} [{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]"


def table(attacks: list[str], share: float) -> str:
    lines = []
    for attack in attacks:
        gains = curves(attack)
        if not gains:
            continue
        seeds = max(len(g["fid"]) for g in gains.values())
        lines += [f"**{attack}** ({seeds} seeds; gain = step 0 minus step s for FID, step s minus step 0 for "
                  f"{FIDELITY} fidelity, on held-out orange shapes):", "",
                  f"| steps | FID gain | {FIDELITY} fidelity gain |", "|---|---|---|"]  # fmt: skip
        for step, g in sorted(gains.items()):
            lines.append(f"| {step} | {_cell(g['fid'], 1)} | {_cell(g['fidelity'], 3)} |")
        length = plateau(gains, share)
        lines += ["", f"Plateau ({share:.0%} of the largest mean FID gain): "
                  f"{'none (no gain)' if length is None else f'{length} steps'}.", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["run", "table"])
    parser.add_argument("--attacks", nargs="+", default=["full", "lora"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=1200)
    parser.add_argument("--share", type=float, default=0.9)
    parser.add_argument("overrides", nargs="*", help="more config overrides for every run")
    args = parser.parse_args()
    if args.what == "run":
        run(args.attacks, args.seeds, args.max_steps, args.overrides)
    print(table(args.attacks, args.share))


if __name__ == "__main__":
    main()
