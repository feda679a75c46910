"""results.json, the printed summary table, sample grids, and what goes to the logger."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from lightning.pytorch.loggers import Logger

SCHEMA_VERSION = 1


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    torchvision.utils.save_image(images.float() * 0.5 + 0.5, path, nrow=nrow, padding=1)
    return path


def curve_series(points: list[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """A curve's numeric leaves as ``name -> [(step, value)]`` (e.g. ``verification/rate``)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        for name, value in flatten({k: v for k, v in p.items() if k != "step"}).items():
            series.setdefault(name, []).append((int(p["step"]), value))
    return series


def plot_curves(curves: Mapping[str, list[Mapping[str, Any]]], path: Path) -> Path:
    """Verification rate and FID vs fine-tuning step; one colour per attacked run in both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, fid_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (label, points) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        for name, xy in curve_series(points).items():
            steps, values = zip(*xy, strict=True)
            if name == "verification/rate":
                rate_ax.plot(steps, values, marker="o", color=colour, label=label)
            elif "/fid_" in name:  # quality/<domain>/fid_<extractor>
                _, domain, metric = name.split("/")
                fid_ax.plot(steps, values, marker="o", color=colour, label=f"{label} ({domain})")
                fid_ax.set_ylabel(metric)
    rate_ax.set_ylim(-0.03, 1.03)
    rate_ax.set_ylabel("verification rate")
    for ax in (rate_ax, fid_ax):
        ax.set_xlabel("attack step")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(results: Mapping[str, Any], out_dir: Path) -> Path:
    path = Path(out_dir) / "results.json"
    path.write_text(json.dumps(results, indent=2, default=_jsonable))
    return path


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves as ``a/b/c`` keys (booleans as 0/1), for loggers."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        elif isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, int | float) and v is not None:
            out[key] = float(v)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


COLUMNS = ("base", "protected", "attacked")


def summary_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, base, protected, attacked) rows: the never-watermarked base model is the null."""
    rows: list[tuple[str, str, str, str]] = []
    ver = results.get("verification")
    if ver:
        cols = [ver.get("never_watermarked"), ver.get("before_attack"), ver.get("after_attack")]

        def rate(v):
            return None if v is None else f"{v['rate']:.3f} [{v['ci'][0]:.2f},{v['ci'][1]:.2f}]"

        rows.append(("verification rate [95% CI]", *[rate(v) for v in cols]))
        rows.append(("detected", *[_fmt(v and v["detected"]) for v in cols]))
        rows.append(("p-value", *[_fmt(v and v["p_value"]) for v in cols]))
        if any(v and v["details"].get("bit_accuracy") is not None for v in cols):
            rows.append(("bit accuracy", *[_fmt(v and v["details"].get("bit_accuracy")) for v in cols]))
        untriggered = [v and v["details"].get("untriggered_bit_accuracy") for v in cols]
        if any(u is not None for u in untriggered):
            rows.append(("bit accuracy, no trigger", *[_fmt(u) for u in untriggered]))
        for fpr, entry in (ver.get("tpr_at_fpr") or {}).items():
            rows.append((f"TPR @ FPR {fpr}", "-", _fmt(entry.get("before_attack")), _fmt(entry.get("after_attack"))))
        image_attacks = ver.get("image_attacks")
        if isinstance(image_attacks, Mapping):
            for label, stages in image_attacks.items():
                cells = [stages.get(s) for s in ("before_attack", "after_attack")]
                rows.append((f"rate after {label}", "-", *[rate(v) for v in cells]))
    quality = results.get("quality", {})
    metrics = sorted({m for stage in quality.values() for dom in stage.values() for m in dom if m != "num_samples"})
    domains = dict.fromkeys(["clean", "attacker", *(d for stage in quality.values() for d in stage)])
    for domain in domains:
        for m in metrics:
            vals = [_stage_quality(quality, stage, domain).get(m) for stage in COLUMNS]
            if any(v is not None for v in vals):
                rows.append((f"{m} ({domain})", *[_fmt(v) for v in vals]))
    mask = (results.get("protect") or {}).get("mask")
    if mask:
        rows.append(
            ("frozen tensors / params", "-", f"{mask['ratio_by_tensors']:.3f} / {mask['ratio_by_params']:.3f}", "-")
        )
    for domain, entry in (results.get("adaptation") or {}).items():
        cost = entry.get("attack") or {}
        if cost.get("trainable_params") is not None:
            rows.append((f"trainable params ({domain})", "-", "-", _fmt(cost["trainable_params"])))
        if cost.get("step_time_s") is not None:
            rows.append((f"step time s ({domain})", "-", "-", _fmt(cost["step_time_s"])))
    return [tuple(_fmt(c) if not isinstance(c, str) else c for c in r) for r in rows]


def _stage_quality(quality: Mapping[str, Any], stage: str, domain: str) -> Mapping[str, Any]:
    """A stage's metrics on a domain; the attacked column of an adaptation domain is its own attack."""
    found = quality.get(stage, {}).get(domain)
    if found is None and stage == "attacked":
        found = quality.get(f"attacked_{domain}", {}).get(domain)
    return found or {}


def format_table(results: Mapping[str, Any]) -> str:
    run = results["run"]
    head = " ".join(f"{k}={run[k]}" for k in ("model", "dataset", "defense", "attack"))
    rows = [("metric", *COLUMNS), *summary_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"adaptguard | {head}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for label, points in (results.get("curves") or {}).items():
        series = curve_series(points)
        shown = [n for n in series if n in ("verification/rate",) or "/fid_" in n]
        lines.append(f"curve ({label}): step -> " + ", ".join(shown))
        for p in points:
            values = [dict(series[n]).get(int(p["step"])) for n in shown]
            lines.append(f"  {p['step']:>6}  " + "  ".join(_fmt(v) for v in values))
    stages = results.get("stages", {})
    if stages:
        lines.append("stage times: " + " | ".join(f"{k} {v['wall_s']:.1f}s" for k, v in stages.items()))
    lines.append(f"results: {Path(run['out_dir']) / 'results.json'}")
    return "\n".join(lines)


def log_results(logger: Logger | None, results: Mapping[str, Any], out_dir: Path) -> None:
    """Scalars as metrics, grids as images and the summary as a table (wandb); CSV gets scalars."""
    if logger is None:
        return
    scalars = {
        f"results/{k}": v
        for k, v in flatten(
            {
                k: results[k]
                for k in ("verification", "quality", "stages", "attack", "adaptation", "protect")
                if results.get(k)
            }
        ).items()
    }
    logger.log_metrics(scalars)
    for label, points in (results.get("curves") or {}).items():  # x axis: the attack's step
        for p in points:
            logger.log_metrics(
                {f"curve/{label}/{k}": v for k, v in flatten({k: v for k, v in p.items() if k != "step"}).items()},
                step=int(p["step"]),
            )
    if hasattr(logger, "log_image"):
        for name, file in results.get("files", {}).items():
            if file.endswith(".png"):
                group = "plots" if name == "curves" else "samples"
                logger.log_image(key=f"{group}/{name}", images=[str(Path(out_dir) / file)])
    if hasattr(logger, "log_table"):
        logger.log_table(key="summary", columns=["metric", *COLUMNS], data=[list(r) for r in summary_rows(results)])
    logger.save()
