"""The printed summary of one run: a row per metric, a column per evaluated model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptguard.reporting.results import ModelReport, RunResult, VerificationReport


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_rate(v: VerificationReport | None) -> str:
    if v is None:
        return "-"
    ci = f" [{v.ci[0]:.2f},{v.ci[1]:.2f}]" if v.ci else ""
    return f"{v.rate:.3f}{ci}"


def label(name: str) -> str:
    """``untriggered_bit_accuracy`` -> ``untriggered bit accuracy``."""
    return name.replace("_", " ")


Row = tuple[str, ...]


def _verification_rows(models: list[ModelReport]) -> list[Row]:
    vers = [m.verification for m in models]
    if not any(vers):
        return []
    rows: list[Row] = [
        ("verification rate [95% CI]", *[fmt_rate(v) for v in vers]),
        ("detected", *[fmt(v and v.detected) for v in vers]),
        ("p-value", *[fmt(v and v.p_value) for v in vers]),
    ]
    figures = dict.fromkeys(k for v in vers if v for k in v.figures)
    rows += [(label(k), *[fmt(v.figures.get(k) if v else None) for v in vers]) for k in figures]
    fprs = dict.fromkeys(f for v in vers if v for f in v.tpr_at_fpr)
    for fpr in fprs:
        rows.append(
            (f"TPR @ FPR {fpr}", *[fmt(v.tpr_at_fpr[fpr].tpr if v and fpr in v.tpr_at_fpr else None) for v in vers])
        )
    transforms = dict.fromkeys(t for m in models for t in m.image_attacks)
    rows += [(f"rate after {t}", *[fmt_rate(m.image_attacks.get(t)) for m in models]) for t in transforms]
    return rows


def _quality_rows(models: list[ModelReport]) -> list[Row]:
    domains = dict.fromkeys(["clean", *(d for m in models for d in m.quality)])
    rows: list[Row] = []
    for domain in domains:
        reports = [m.quality.get(domain) for m in models]
        names = dict.fromkeys(n for q in reports if q for n in q.metrics())
        rows += [(f"{n} ({domain})", *[fmt(q.metrics().get(n) if q else None) for q in reports]) for n in names]
    return rows


def _paired_rows(models: list[ModelReport]) -> list[Row]:
    """Each model minus the one it was made from, on the same prompts and noise, with its 95 % interval
    (FID, KID, prompt fidelity and its groups; per attribute only in results.json)."""
    shown = [(dom, k) for m in models for dom, metrics in m.paired.items() for k in metrics]
    keys = dict.fromkeys((dom, k) for dom, k in shown if k in ("fid", "kid", "fidelity/all") or "+" in k)
    rows: list[Row] = []
    for dom, k in keys:
        cells = [str(m.paired[dom][k]) if k in m.paired.get(dom, {}) else "-" for m in models]
        rows.append((f"Δ {k.replace('fidelity/all', 'fidelity')} ({dom}) vs model before", *cells))
    return rows


def summary_rows(result: RunResult) -> list[Row]:
    """(metric, base, protected, attacked...) rows: the never-watermarked base model is the null."""
    columns = result.models()
    models = list(columns.values())
    rows = _verification_rows(models) + _quality_rows(models) + _paired_rows(models)
    blank = ["-"] * (len(models) - 2)
    rows += [(label(k), "-", fmt(v), *blank) for k, v in result.summary.items()]
    attacked = [a.cost for a in result.attacks.values()]
    for key, name in (("trainable_params", "trainable params"), ("step_time_s", "step time s")):
        if any(c.get(key) is not None for c in attacked):
            rows.append((name, "-", "-", *[fmt(c.get(key)) for c in attacked]))
    return rows


def format_table(result: RunResult) -> str:
    run = result.run
    head = " ".join(f"{k}={getattr(run, k)}" for k in ("model", "dataset", "defense", "attack"))
    rows = [("metric", *result.models()), *summary_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"adaptguard | {head}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for domain, attack in result.attacks.items():
        if attack.curve:
            lines.append(f"curve ({domain}): step -> verification rate, FID")
            for p in attack.curve:
                fid = next((q.fid for q in p.quality.values()), None)
                lines.append(f"  {p.step:>6}  {fmt(p.verification and p.verification.rate)}  {fmt(fid)}")
    lines += [f"note: {n}" for n in result.notes]
    if result.stages:
        lines.append("stage times: " + " | ".join(f"{k} {v['wall_s']:.1f}s" for k, v in result.stages.items()))
    lines.append(f"results: {Path(run.out_dir) / 'results.json'}")
    return "\n".join(lines)
