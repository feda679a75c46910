"""Hydra callbacks: secrets out of the config files Hydra writes for each job and sweep; a sweep's failed jobs."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from adaptguard.core.redact import redact, redact_override, secret_names


def redact_hydra_files(output_dir: Path, names: frozenset[str]) -> None:
    """Strip secret values from ``.hydra/{config,hydra,overrides}.yaml`` and the sweep's ``multirun.yaml``."""

    def redact_hydra_node(data: dict) -> dict:
        hydra_node = data.pop("hydra", None) or {}
        task = hydra_node.get("overrides", {}).get("task")
        if task:
            hydra_node["overrides"]["task"] = [redact_override(o, names) for o in task]
        job = hydra_node.get("job", {})
        if "override_dirname" in job:
            job["override_dirname"] = redact_joined(job["override_dirname"], names)
        return {"hydra": hydra_node, **redact(data, names)} if hydra_node else redact(data, names)

    paths = [output_dir / ".hydra" / n for n in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    paths.append(output_dir.parent / "multirun.yaml")
    for path in paths:
        if not path.exists():
            continue
        data = yaml.safe_load(path.read_text())
        data = (
            [redact_override(o, names) for o in data or []]
            if path.name == "overrides.yaml"
            else redact_hydra_node(data or {})
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}")  # parallel sweep jobs share multirun.yaml
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(path)


def redact_joined(joined: str, names: frozenset[str]) -> str:
    """Comma-joined overrides (Hydra's ``override_dirname``); in a sweep's, a swept value list continues past its
    commas (``defense.key_seed=1,2``): every value of a secret key goes."""
    out, secret = [], False
    for part in joined.split(","):
        if "=" in part:
            shown = redact_override(part, names)
            secret = shown != part
            out.append(shown)
        elif not secret:
            out.append(part)
    return ",".join(out)


LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core",
                    "hydra_plugins.hydra_submitit_launcher.submitit_launcher")  # fmt: skip
SUBMITIT_FOLDER = ".submitit"  # under the sweep dir: submitit's pickled jobs (their overrides) and job logs


class RedactOverrides(logging.Filter):
    """Launchers log each job's overrides (``#0 : defense.key_seed=1234 ...``): redact secret values."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = " ".join(redact_override(t, self.names) for t in message.split(" ")), None
        return True


class RedactSecrets(Callback):
    """Hydra saved the composed config before the job starts: redact those copies before any work; and the
    launcher's log of each sweep job's overrides."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        names = secret_names(OmegaConf.to_container(config, resolve=False))
        for name in LAUNCHER_LOGGERS:
            logging.getLogger(name).addFilter(RedactOverrides(names))
        if "submitit" in str(config.hydra.launcher.get("_target_", "")):
            # submitit pickles each job with its overrides, secret values included (they must reach the job):
            # its folder is the owner's alone
            folder = Path(str(config.hydra.sweep.dir)) / SUBMITIT_FOLDER
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        output_dir = Path(config.hydra.runtime.output_dir)
        names = secret_names(OmegaConf.to_container(config, resolve=False))
        redact_hydra_files(output_dir, names)


class SweepStatus(Callback):
    """At the end of a sweep, count the jobs whose results.json is missing or not ``ok`` and say which;
    ``adaptguard run -m`` then exits with EXIT_SWEEP_FAILED (the launcher kept going past them)."""

    failed: ClassVar[int] = 0

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted({p.parent.parent for p in sweep.rglob(".hydra/config.yaml")})
        failed = [(job, job_error(job)) for job in jobs if job_error(job) is not None]
        type(self).failed = len(failed)
        if failed:
            print(f"sweep: {len(failed)} of {len(jobs)} jobs failed ({sweep}); "
                  f"'adaptguard report {sweep}' lists them", file=sys.stderr)  # fmt: skip
            for job, error in failed:
                print(f"  {job.name}: {error}", file=sys.stderr)


def job_error(job: Path) -> str | None:
    """None for a job that finished ok; else why it did not (its results.json's error, or that it has none)."""
    path = job / "results.json"
    if not path.is_file():
        return "no results.json (the job was killed before it could write one)"
    data = json.loads(path.read_text())
    if data.get("status", "ok") == "ok":
        return None
    error = data.get("error") or {}
    return f"{data['status']} in {error.get('stage', '?')}: {error.get('message', '?')}"
