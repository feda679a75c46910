"""Tables for a sweep: every job's results.json, a row per (job, attack domain), and the curves.

Defense-specific columns come from each run's ``summary`` (``Defense.summary``) and each
verification's ``figures``: this module never names a defense's internals.
"""

from __future__ import annotations

from pathlib import Path

from adaptguard.metrics.quality import QualityReport
from adaptguard.reporting.declared import declared
from adaptguard.reporting.results import AttackReport, CurvePoint, RunResult, VerificationReport
from adaptguard.reporting.table import fmt, label


def collect(folder: Path, failed: bool = False) -> list[RunResult]:
    """Every finished results.json under ``folder`` (schema 1 or 2), sorted by defense, attack and seed;
    ``failed``: instead, the runs that failed or were interrupted."""
    runs = []
    for path in sorted(Path(folder).rglob("results.json")):
        run = RunResult.read(path)
        run.run.out_dir = str(path.parent)  # where the job is now (sweeps get moved, copied, resumed)
        runs.append(run)
    runs = [r for r in runs if (r.status != "ok") == failed]
    return sorted(runs, key=lambda r: (r.run.defense, str(r.summary), r.run.attack, r.run.seed))


def failed_table(runs: list[RunResult]) -> str:
    """One row per job that did not finish: where it stopped and why (its results.json's error)."""
    lines = ["| job | defense | attack | seed | status | stage | error |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        error = r.error or {}
        message = str(error.get("message", "?")).replace("|", "\\|")
        lines.append(f"| {r.run.out_dir} | {r.run.defense} | {r.run.attack} | {r.run.seed} | {r.status} | "
                     f"{error.get('stage', '?')} | {message} |")  # fmt: skip
    return "\n".join(lines)


def _rate(v: VerificationReport | None) -> str:
    if v is None:
        return "-"
    ci = f" [{v.ci[0]:.2f}, {v.ci[1]:.2f}]" if v.ci else ""
    return f"{v.rate:.3f}{ci}" + ("" if v.detected else " (not detected)")


def _fid_kid(q: QualityReport | None) -> str:
    return f"{q.fid:.2f} / {q.kid_mean:.3f}" if q is not None else "-"


Row = tuple[RunResult, str | None, AttackReport | None]


def _rows(runs: list[RunResult]) -> list[Row]:
    return [(r, dom, a) for r in runs for dom, a in (r.attacks.items() or [(None, None)])]


def _reference(runs: list[RunResult], row: Row) -> QualityReport | None:
    """The same attack on the same domain under the unconstrained reference defense, when the sweep has it."""
    r, dom, _ = row
    for other in runs:
        if declared(other, "defense").reference and other.run.attack == r.run.attack and dom in other.attacks:
            return other.attacks[dom].model.quality.get(dom)
    return None


def _change(q: QualityReport | None, ref: QualityReport | None) -> str:
    return "-" if q is None or ref is None or not ref.fid else f"{100 * (q.fid / ref.fid - 1):+.0f} %"


def sweep_table(folder: Path) -> str:
    """Verification before / after the attack, the never-watermarked control, FID/KID per model and domain."""
    runs, failed = collect(folder), collect(folder, failed=True)
    if not runs and not failed:
        raise FileNotFoundError(f"no results.json under {folder}")
    summary_keys = list(dict.fromkeys(k for r in runs for k in r.summary))
    figure_keys = list(dict.fromkeys(k for r in runs for a in r.attacks.values() if a.model.verification
                                     for k in a.model.verification.figures))  # fmt: skip
    head = ["defense", "attack", "domain", *map(label, summary_keys), "rate before", "rate after", "never-watermarked",
            *(f"{label(k)} (after)" for k in figure_keys), "FID/KID base", "FID/KID protected", "FID/KID attacked",
            "FID/KID base (domain)", "FID/KID attacked (domain)", "FID vs reference (domain)", "trainable params", "step s",
            "peak MB"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in _rows(runs):
        r, dom, a = row
        after = a.model.verification if a else None
        attacked_q = a.model.quality if a else {}
        peak = (r.stages.get(f"attack_{dom}") or r.stages.get("attack") or {}).get("peak_rss_mb")
        cells = [r.run.defense, r.run.attack, dom or "-", *(fmt(r.summary.get(k)) for k in summary_keys),
                 _rate(r.protected.verification), _rate(after), _rate(r.base.verification),
                 *(fmt(after.figures.get(k) if after else None) for k in figure_keys),
                 _fid_kid(r.base.quality.get("clean")), _fid_kid(r.protected.quality.get("clean")),
                 _fid_kid(attacked_q.get("clean")), _fid_kid(r.base.quality.get(dom or "")),
                 _fid_kid(attacked_q.get(dom or "")), _change(attacked_q.get(dom or ""), _reference(runs, row)),
                 fmt((a.cost if a else {}).get("trainable_params")), fmt((a.cost if a else {}).get("step_time_s")),
                 fmt(peak)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if any(a.curve for r in runs for a in r.attacks.values()):
        lines += ["", curve_table(runs)]
    if failed:
        lines += ["", f"{len(failed)} of {len(runs) + len(failed)} jobs did not finish:", "", failed_table(failed)]
    return "\n".join(lines)


def sweep_curves(runs: list[RunResult]) -> dict[str, list[CurvePoint]]:
    """Every job's eval.at_steps curves, labelled ``defense/attack`` (``/domain`` with several domains)."""
    out: dict[str, list[CurvePoint]] = {}
    for r in runs:
        for dom, a in r.attacks.items():
            if a.curve:
                out[f"{r.run.defense}/{r.run.attack}" + (f"/{dom}" if len(r.attacks) > 1 else "")] = a.curve
    return out


def curve_table(runs: list[RunResult]) -> str:
    """Verification rate and FID per attack step, one column pair per curve."""
    curves = sweep_curves(runs)
    steps = sorted({p.step for points in curves.values() for p in points})
    head = ["step"] + [f"{name}: {m}" for name in curves for m in ("rate", "FID")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        cells = [str(step)]
        for points in curves.values():
            p = next((p for p in points if p.step == step), None)
            rate = p.verification.rate if p and p.verification else None
            fid = next((q.fid for q in p.quality.values()), None) if p else None
            cells += ["-" if rate is None else f"{rate:.3f}", "-" if fid is None else f"{fid:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
