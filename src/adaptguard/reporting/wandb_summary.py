"""``adaptguard report --wandb``: each sweep's seed-averaged summary as a wandb table and artifact.

The report run joins the sweep's group (its jobs log there, see ``cli.build.make_logger``), so the table
sits beside the runs it summarises. Offline by default, like the runs: ``wandb sync`` uploads it later.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from adaptguard.reporting.comparisons import split
from adaptguard.reporting.page import Page, group_rows, write_csv
from adaptguard.reporting.seeds import group_by_config
from adaptguard.reporting.sweep import collect


def log_summary(folders: Sequence[Path], page: Page, project: str = "adaptguard") -> list[str]:
    """One wandb run (job_type ``report``) per sweep folder; returns their run folders."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    made = []
    for folder in folders:
        runs = collect(folder)
        if not runs:
            continue
        group = runs[0].run.sweep or str(folder)
        comparisons = split(group_by_config(runs), [folder])
        columns, rows = group_rows(comparisons)
        run = wandb.init(project=project, group=group, job_type="report", name=f"report {group}", dir=str(folder),
                         mode=os.environ.get("WANDB_MODE", "offline"), config={"sweep": group, "jobs": len(runs)},
                         reinit="create_new")  # fmt: skip
        run.log({"summary": wandb.Table(columns=columns, data=rows)})
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]+", "-", f"summary-{group}").strip("-"), type="results")
        with tempfile.TemporaryDirectory() as tmp:
            for csv_file in write_csv(comparisons, runs, Path(tmp)):
                artifact.add_file(str(csv_file))
            for file in page.files:
                if file.suffix == ".png":
                    artifact.add_file(str(file))
            run.log_artifact(artifact)
            run.finish()
        made.append(str(Path(run.dir).parent))
    return made
