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


def _fid_kid(results: dict[str, Any], stage: str, domain: str) -> tuple[float | None, float | None]:
    metrics = (results.get("quality") or {}).get(stage, {}).get(domain) or {}
    fid = next((v for k, v in metrics.items() if k.startswith("fid_")), None)
    kid = next((v for k, v in metrics.items() if k.startswith("kid_") and k.endswith("_mean")), None)
    return fid, kid


def _fid(results: dict[str, Any], stage: str, domain: str = "clean") -> str:
    fid, kid = _fid_kid(results, stage, domain)
    return f"{fid:.2f} / {kid:.3f}" if fid is not None and kid is not None else "-"


def _attack_domain(results: dict[str, Any]) -> str:
    """Where the attack's own goal was scored: ``attacker``, or e.g. DreamBooth's ``subject``."""
    attacked = (results.get("quality") or {}).get("attacked") or {}
    return next((d for d in attacked if d != "clean"), "attacker")


def collect(folder: Path) -> list[dict[str, Any]]:
    runs = [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("results.json"))]
    return sorted(runs, key=lambda r: (r["run"]["defense"], r["run"]["attack"]))


def sweep_table(folder: Path) -> str:
    """Verification before / after the attack, the never-watermarked control, FID/KID per stage."""
    everything = collect(folder)
    if not everything:
        raise FileNotFoundError(f"no results.json under {folder}")
    adapted = [r for r in everything if r.get("adaptation")]
    runs = [r for r in everything if not r.get("adaptation")]
    if not runs:
        return adaptation_table(adapted)
    head = (
        "| defense | attack | rate before | rate after | never-watermarked | untriggered (after) "
        "| FID/KID base | FID/KID protected | FID/KID attacked | FID/KID attacked (attacker domain / subject) |"
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
            _fid(r, "attacked", _attack_domain(r)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if adapted:
        lines += ["", adaptation_table(adapted)]
    if any(r.get("curves") for r in everything):
        lines += ["", curve_table(everything)]
    return "\n".join(lines)


def sweep_curves(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every job's eval.at_steps curves, labelled ``defense/attack`` (``/domain`` with eval.adaptation)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        for label, points in (r.get("curves") or {}).items():
            name = f"{r['run']['defense']}/{r['run']['attack']}" + ("" if label == "attack" else f"/{label}")
            out[name] = points
    return out


def curve_table(runs: list[dict[str, Any]]) -> str:
    """Verification rate and FID per attack step, one column pair per curve."""
    curves = sweep_curves(runs)
    steps = sorted({p["step"] for points in curves.values() for p in points})
    head = ["step"] + [f"{name}: {m}" for name in curves for m in ("rate", "FID")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        cells = [str(step)]
        for points in curves.values():
            p = next((p for p in points if p["step"] == step), None) or {}
            rate = (p.get("verification") or {}).get("rate")
            fid = next(
                (v for m in (p.get("quality") or {}).values() for k, v in m.items() if k.startswith("fid_")), None
            )
            cells += ["-" if rate is None else f"{rate:.3f}", "-" if fid is None else f"{fid:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def adaptation_table(runs: list[dict[str, Any]]) -> str:
    """Per (defense, rho, attack): FID/KID on each adaptation domain after that domain's attack, its change
    against the same attack on ``defense=none`` (when the sweep has one), the achieved freeze ratio and the
    attack's cost (trainable parameters, step time, peak memory of the attack stage)."""
    domains = sorted({d for r in runs for d in r["adaptation"]})
    head = ["defense", "rho", "attack", "frozen (tensors / params)"]
    for d in domains:
        head += [f"{d}: FID/KID base", f"{d}: FID/KID attacked", f"{d}: FID vs none"]
    head += ["trainable params", "step s", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    unconstrained = {r["run"]["attack"]: r for r in runs if r["run"]["defense"] == "none"}

    def key(r: dict[str, Any]) -> tuple:
        return (r["run"]["defense"], _rho(r) or 0.0, r["run"]["attack"])

    for r in sorted(runs, key=key):
        mask = (r.get("protect") or {}).get("mask")
        frozen = f"{mask['ratio_by_tensors']:.2f} / {mask['ratio_by_params']:.2f}" if mask else "0 / 0"
        cells = [r["run"]["defense"], _fmt_rho(r), r["run"]["attack"], frozen]
        ref = unconstrained.get(r["run"]["attack"])
        for d in domains:
            fid = _fid_kid(r, f"attacked_{d}", d)[0]
            ref_fid = _fid_kid(ref, f"attacked_{d}", d)[0] if ref else None
            change = "-" if fid is None or not ref_fid else f"{100 * (fid / ref_fid - 1):+.0f} %"
            cells += [_fid(r, "base", d), _fid(r, f"attacked_{d}", d), change]
        first = next(iter(r["adaptation"].values()))["attack"]
        steps = [e["attack"].get("step_time_s") for e in r["adaptation"].values()]
        peaks = [(r.get("stages") or {}).get(f"attack_{d}", {}).get("peak_rss_mb") for d in r["adaptation"]]
        cells += [
            str(first.get("trainable_params", "-")),
            f"{sum(steps) / len(steps):.3f}" if all(s is not None for s in steps) else "-",
            f"{max(peaks):.0f}" if all(p is not None for p in peaks) else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rho(r: dict[str, Any]) -> float | None:
    return ((r.get("config") or {}).get("defense") or {}).get("rho")


def _fmt_rho(r: dict[str, Any]) -> str:
    rho = _rho(r)
    return "-" if rho is None else f"{rho:g}"
