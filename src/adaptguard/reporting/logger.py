"""What a run sends to its Lightning logger (wandb, CSV): scalars, curves, images and the summary table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

from adaptguard.reporting.results import RunResult
from adaptguard.reporting.table import summary_rows


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves as ``a/b/c`` keys (booleans as 0/1), for loggers."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        elif isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, int | float):
            out[key] = float(v)
    return out


def log_results(logger: Logger | None, result: RunResult, out_dir: Path) -> None:
    """Scalars as metrics, grids as images and the summary as a table (wandb); CSV gets scalars."""
    if logger is None:
        return
    d = result.to_dict()
    parts = {k: d[k] for k in ("base", "protected", "summary", "protect", "stages") if d.get(k)}
    parts["attacks"] = {dom: {k: v for k, v in a.items() if k != "curve"} for dom, a in d["attacks"].items()}
    logger.log_metrics({f"results/{k}": v for k, v in flatten(parts).items()})
    for domain, attack in d["attacks"].items():  # x axis: the attack's step
        for p in attack["curve"]:
            values = flatten({k: v for k, v in p.items() if k != "step"})
            logger.log_metrics({f"curve/{domain}/{k}": v for k, v in values.items()}, step=int(p["step"]))
    if hasattr(logger, "log_image"):
        for name, file in result.files.items():
            if file.endswith(".png"):
                group = "plots" if name == "curves" else "samples"
                logger.log_image(key=f"{group}/{name}", images=[str(Path(out_dir) / file)])
    if hasattr(logger, "log_table"):
        columns = ["metric", *result.models()]
        logger.log_table(key="summary", columns=columns, data=[list(r) for r in summary_rows(result)])
    logger.save()
