"""``adaptguard run`` / ``python -m experiments.run``: one experiment, or a sweep with ``-m``.

    adaptguard run defense=backdoor attack=lora
    adaptguard run -m defense=backdoor,aiao attack=full,lora hydra/launcher=local

In-process (tests, notebooks): ``run(compose([...], output_dir=...))`` returns the :class:`RunResult`.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from adaptguard.cli.app import check_keys, check_overrides, hydra_command, quiet_libraries, user_errors
from adaptguard.cli.build import build_experiment, make_context, make_logger
from adaptguard.cli.callbacks import SweepStatus
from adaptguard.cli.errors import EXIT_SWEEP_FAILED, command_exit_code, user_error
from adaptguard.cli.gpus import own_gpu, wants_own_gpu
from adaptguard.cli.per_option import apply_per_option, experiment_config
from adaptguard.cli.ranks import start_ranks
from adaptguard.core import ranks
from adaptguard.core.redact import redact, redact_override, secret_names
from adaptguard.pipeline import run_experiment
from adaptguard.reporting.results import RunInfo, RunResult
from adaptguard.reporting.table import format_table


def run(cfg: DictConfig, output_dir: Path | None = None) -> RunResult:
    """Run the experiment ``cfg`` describes in this process; results go to ``output_dir`` (default: the config's)."""
    output_dir = Path(output_dir if output_dir is not None else cfg.paths.output_dir)
    try:
        cfg = apply_per_option(cfg)
        exp = build_experiment(cfg)
        settings = experiment_config(cfg)
        exp.settings = redact(settings, secret_names(settings))
        logger = make_logger(cfg)
        ctx = make_context(cfg, output_dir, logger)
    except BaseException as err:  # a sweep job with a bad value still leaves its results.json
        record_config_failure(cfg, output_dir, err)
        raise
    if logger is not None:
        config = OmegaConf.to_container(cfg, resolve=True)
        logger.log_hyperparams(redact(config, secret_names(config)))
    try:
        result = run_experiment(exp, ctx)
    except BaseException:
        finish_logger(logger, "failed")
        raise
    finish_logger(logger, "success")
    return result


def record_config_failure(cfg: DictConfig, output_dir: Path, err: BaseException) -> None:
    """results.json for a job that failed before any stage ran (a bad value, a missing folder); under DDP, rank 0's."""
    if not ranks.is_main():
        return

    def name(group: str) -> str:
        return str(OmegaConf.select(cfg, f"{group}.name", default=None) or "?")

    info = RunInfo(model=name("model"), dataset=name("dataset"), defense=name("defense"), attack=name("attack"),
                   seed=int(OmegaConf.select(cfg, "seed", default=0) or 0), out_dir=str(output_dir))  # fmt: skip
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        RunResult.failure(info, err, "config", user_error(err), code=command_exit_code(err)).write(output_dir)
    except OSError:  # an unwritable run dir is itself the error being reported
        pass


def finished_before(cfg: DictConfig, output_dir: Path) -> RunResult | None:
    """The results of this very job when a sweep is rerun in its own directory and the job finished: same
    seed and the same config (a killed sweep resumes where it stopped; a changed setting reruns the job)."""
    import copy
    import json

    try:
        old = RunResult.read(output_dir / "results.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if old.status != "ok" or old.run.seed != cfg.seed:
        return None
    settings = experiment_config(apply_per_option(copy.deepcopy(cfg)))
    settings = redact(settings, secret_names(settings))
    same = json.dumps(old.config.get("experiment"), sort_keys=True, default=str)
    return old if same == json.dumps(settings, sort_keys=True, default=str) else None


def finish_logger(logger, status: str) -> None:
    """Close this job's logger (each sweep job must end its own wandb run)."""
    if logger is None:
        return
    logger.finalize(status)
    if type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish(exit_code=0 if status == "success" else 1)


def task(cfg: DictConfig) -> float | None:
    """The Hydra job: run, print the table; the return value is what a sweeper optimises."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    quiet_libraries()
    names = secret_names(OmegaConf.to_container(cfg, resolve=False))
    result = None
    sweep, out = HydraConfig.get().mode == RunMode.MULTIRUN, Path(HydraConfig.get().runtime.output_dir)
    if sweep and cfg.get("skip_finished", True) and (done := finished_before(cfg, out)) is not None:
        print(f"{out}: finished before with this config ({done.run.finished}); skipped (skip_finished=false reruns)")
        return None
    with user_errors(keep_going=sweep):  # one failed job: the others run
        try:
            rank = start_ranks(cfg, sweep)  # DDP: the other ranks run this command too, with its real values
        except BaseException as err:
            record_config_failure(cfg, out, err)
            raise
        sys.argv[1:] = [redact_override(a, names) for a in sys.argv[1:]]  # wandb records the command line
        hydra = HydraConfig.get()
        with ExitStack() as job:
            if sweep and wants_own_gpu(cfg, str(hydra.launcher.get("_target_", ""))):
                job.enter_context(own_gpu(cfg, int(hydra.job.num), Path(str(hydra.sweep.dir))))
            result = run(cfg, out)
    if result is None or rank != 0:
        return None
    print(format_table(result))
    attacked = next(iter(result.attacks.values()), None)
    final = attacked.model.verification if attacked else result.protected.verification
    return None if final is None else float(final.rate)


def main() -> None:
    check_overrides(sys.argv[1:])
    check_keys(sys.argv[1:], "config")
    SweepStatus.failed = 0
    hydra_command(task, "config")()
    if SweepStatus.failed:
        sys.exit(EXIT_SWEEP_FAILED)


if __name__ == "__main__":
    main()
