"""One markdown table for a sweep: every job's results.json, a row per (defense, attack)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _rate(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    lo, hi = entry["ci"]
    return f"{entry['rate']:.3f} [{lo:.2f}, {hi:.2f}]" + ("" if entry["detected"] else " (not detected)")


def _fid(results: dict[str, Any], stage: str, domain: str = "clean") -> str:
    metrics = (results.get("quality") or {}).get(stage, {}).get(domain)
    if not metrics:
        return "-"
    fid = next((v for k, v in metrics.items() if k.startswith("fid_")), None)
    kid = next((v for k, v in metrics.items() if k.startswith("kid_") and k.endswith("_mean")), None)
    return f"{fid:.2f} / {kid:.3f}" if fid is not None and kid is not None else "-"


def collect(folder: Path) -> list[dict[str, Any]]:
    runs = [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("results.json"))]
    return sorted(runs, key=lambda r: (r["run"]["defense"], r["run"]["attack"]))


def sweep_table(folder: Path) -> str:
    """Verification before / after the attack, the never-watermarked control, FID/KID per stage."""
    runs = collect(folder)
    if not runs:
        raise FileNotFoundError(f"no results.json under {folder}")
    head = (
        "| defense | attack | rate before | rate after | never-watermarked | untriggered (after) "
        "| FID/KID base | FID/KID protected | FID/KID attacked | FID/KID attacked (attacker domain) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in runs:
        ver = r.get("verification") or {}
        after = ver.get("after_attack") or {}
        untriggered = (after.get("details") or {}).get("untriggered_rate")
        cells = [
            r["run"]["defense"],
            r["run"]["attack"],
            _rate(ver.get("before_attack")),
            _rate(ver.get("after_attack")),
            _rate(ver.get("never_watermarked")),
            "-" if untriggered is None else f"{untriggered:.3f}",
            _fid(r, "base"),
            _fid(r, "protected"),
            _fid(r, "attacked"),
            _fid(r, "attacked", "attacker"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
