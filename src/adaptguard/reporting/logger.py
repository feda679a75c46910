"""What a run sends to its Lightning logger (wandb, CSV): scalars, curves, images and the summary table."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import Logger

from adaptguard.reporting.headline import curve_points, headline
from adaptguard.reporting.results import RunResult
from adaptguard.reporting.table import summary_rows


def log_results(logger: Logger | None, result: RunResult, out_dir: Path) -> None:
    """Headline numbers under their stable names (docs/wandb.md), curves against the attack step, grids as
    images and the summary as a table (wandb); CSV gets the scalars."""
    if logger is None:
        return
    for step, values in curve_points(result):  # x axis: the attack's step
        logger.log_metrics(values, step=step)
    logger.log_metrics(headline(result))
    if hasattr(logger, "log_image"):
        for name, file in result.files.items():
            if file.endswith(".png"):
                group = "plots" if name == "curves" else "samples"
                logger.log_image(key=f"{group}/{name}", images=[str(Path(out_dir) / file)])
    if hasattr(logger, "log_table"):
        columns = ["metric", *result.models()]
        logger.log_table(key="summary", columns=columns, data=[list(r) for r in summary_rows(result)])
    logger.save()
