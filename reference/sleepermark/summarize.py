"""Collect one run.sh mode's results into <out>/summary.json: each stage's time (from the timestamped logs), the
per-step time of both trainings, and the evaluations' own summary.json files.

    python reference/sleepermark/summarize.py /work/refcode/runs/smoke smoke [KEY=VALUE ...]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

STAGE1_STEP = re.compile(r"Global step (\d+):")
BAR = re.compile(r"\|\s*(\d+)/(\d+) \[")


def read_log(path: Path) -> list[tuple[float, str]]:
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        ts, _, text = line.partition(" ")
        try:
            rows.append((float(ts), text))
        except ValueError:
            continue
    return rows


def first_times(rows: list[tuple[float, str]], pattern: re.Pattern[str], prefix: str = "") -> dict[int, float]:
    """The first timestamp at which each counter value appears."""
    seen: dict[int, float] = {}
    for ts, text in rows:
        m = pattern.search(text)
        if m and text.startswith(prefix):
            seen.setdefault(int(m.group(1)), ts)
    return seen


def without_zero(seen: dict[int, float]) -> dict[int, float]:
    return {k: v for k, v in seen.items() if k > 0}


def per_item(seen: dict[int, float]) -> float | None:
    """Seconds per step between the first and the last counter value (the first step's setup excluded)."""
    if len(seen) < 2:
        return None
    lo, hi = min(seen), max(seen)
    return round((seen[hi] - seen[lo]) / (hi - lo), 3)


def stage_timing(rows: list[tuple[float, str]]) -> dict[str, float | None]:
    """The step's time inside the CPU lock (run.sh echoes the clock when the lock is taken and at the end)."""
    start = next((float(text.split()[1]) for _, text in rows if text.startswith("@start ")), None)
    end = next((float(text.split()[1]) for _, text in rows if text.startswith("@end ")), None)
    return {"seconds": round(end - start, 1) if start and end else None}


def main() -> None:
    out, mode, *settings = sys.argv[1:]
    out = Path(out)
    summary: dict = {"mode": mode, "settings": dict(s.split("=", 1) for s in settings), "stages": {}}
    for log in sorted((out / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime):
        rows = read_log(log)
        timing = stage_timing(rows)
        if log.stem == "stage1":
            timing["seconds_per_step"] = per_item(first_times(rows, STAGE1_STEP))
        elif log.stem == "stage2":  # from the bar's first step on (0 is printed when the bar is made)
            timing["seconds_per_step"] = per_item(without_zero(first_times(rows, BAR, prefix="Steps")))
        elif log.stem == "eval_stage1":  # one block of running means per image, ending with its PSNR
            timing["seconds_per_item"] = per_item(
                {i: ts for i, (ts, _) in enumerate(r for r in rows if r[1] == "PSNR")}
            )
        elif log.stem.startswith("eval"):  # the prompt bar: the last bar to finish (the sampler's bars nest in it)
            bars = [(ts, m) for ts, text in rows if (m := BAR.search(text)) and not text.endswith("[A")]
            total = bars[-1][1].group(2) if bars else None
            outer = [(ts, text) for ts, m in bars if m.group(2) == total for text in [m.group(0)]]
            timing["seconds_per_item"] = per_item(without_zero(first_times(outer, BAR)))
        summary["stages"][log.stem] = timing
    for name in ("stage1_eval", "stage2_eval_wm", "stage2_eval_base"):
        file = out / name / "summary.json"
        if file.is_file():
            result = json.loads(file.read_text())
            result.pop("args", None)
            summary[name] = result
    target = out / "summary.json"
    target.write_text(json.dumps(summary, indent=1) + "\n")
    print(target)


if __name__ == "__main__":
    main()
