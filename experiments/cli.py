"""Config -> library objects, with user errors reported as one line and a non-zero exit."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

log = logging.getLogger("adaptguard")
EXIT_USER_ERROR = 2


def check_overrides(argv: list[str]) -> None:
    """Parse command-line overrides up front so a malformed one is reported with its text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-"):
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            reason = str(err).splitlines()[0]
            print(
                f"error: cannot parse override {arg!r}: {reason}.\n"
                "Write key=value (e.g. attack.steps=200, dataset.splits.owner.where.kind=[circle,star]); "
                "quote values with spaces or special characters: key='\"a b\"'. "
                "Grammar: https://hydra.cc/docs/advanced/override_grammar/basic/",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)


def _quiet_libraries() -> None:
    """Keep stdout for our progress and summary: no per-file bars or tips from libraries."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger(f"{name}.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
    os.environ.setdefault("WANDB_SILENT", "true")


def _redact_hydra_files(output_dir: Path) -> None:
    """Hydra saved the composed config before we ran: strip secret values from those copies."""
    import yaml

    from adaptguard.redact import redact, redact_override

    def redact_hydra_node(data: dict) -> dict:
        hydra_node = data.pop("hydra", None) or {}
        task = hydra_node.get("overrides", {}).get("task")
        if task:
            hydra_node["overrides"]["task"] = [redact_override(o) for o in task]
        job = hydra_node.get("job", {})
        if "override_dirname" in job:
            job["override_dirname"] = ",".join(redact_override(o) for o in job["override_dirname"].split(","))
        return {"hydra": hydra_node, **redact(data)} if hydra_node else redact(data)

    # a sweep also saves multirun.yaml (hydra node + composed config) in the sweep dir
    paths = [output_dir / ".hydra" / n for n in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    paths.append(output_dir.parent / "multirun.yaml")
    for path in paths:
        if not path.exists():
            continue
        data = yaml.safe_load(path.read_text())
        if path.name == "overrides.yaml":
            data = [redact_override(o) for o in data or []]
        else:
            data = redact_hydra_node(data or {})
        tmp = path.with_name(f".{path.name}.{os.getpid()}")  # parallel sweep jobs share multirun.yaml
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(path)


def build(cfg: DictConfig, output_dir: Path):
    """Instantiate the experiment and its run context from a composed config."""
    from hydra.utils import instantiate

    from adaptguard.pipeline import Experiment

    model = instantiate(cfg.model, _convert_="all")
    data = instantiate(cfg.dataset, _convert_="all")
    defense = instantiate(cfg.defense, _convert_="all")
    attack = instantiate(cfg.attack, _convert_="all")
    evaluation = instantiate(cfg.eval, _convert_="all")
    logger = None
    if cfg.get("logger") and "_target_" in cfg.logger:
        kwargs: dict[str, Any] = {}
        if "tags" in cfg.logger and cfg.get("tags"):
            kwargs["tags"] = list(cfg.logger.tags) + list(cfg.tags)
        logger = instantiate(cfg.logger, **kwargs)
    ctx = make_context(cfg, output_dir, logger)
    return Experiment(model=model, data=data, defense=defense, attack=attack, eval=evaluation), ctx


def make_context(cfg: DictConfig, output_dir: Path, logger: Any = None):
    """The RunContext every entry point shares: cache, trainer factory, seed, device."""
    from hydra.utils import instantiate

    from adaptguard.artifacts import ArtifactCache
    from adaptguard.context import RunContext

    return RunContext(
        cache=ArtifactCache(cfg.paths.cache),
        make_trainer=instantiate(cfg.trainer),
        logger=logger,
        out_dir=output_dir,
        seed=int(cfg.seed),
        progress=bool(cfg.progress),
        device=str(cfg.device),
    )


def _user_error(err: BaseException) -> str | None:
    """The message for an error the user can fix, or None for a bug (shown with traceback)."""
    from hydra.errors import InstantiationException

    from adaptguard.errors import AdaptguardError

    seen = err
    while seen is not None:
        if isinstance(seen, AdaptguardError):
            return str(seen)
        if isinstance(seen, MissingMandatoryValue):
            key = getattr(seen, "full_key", None) or "?"
            return f"{key}: this value is required; set it on the command line, e.g. {key}=..."
        if isinstance(seen, OmegaConfBaseException):
            key = getattr(seen, "full_key", None)
            first = str(seen).splitlines()[0]
            return f"{key}: {first}" if key else first
        if isinstance(seen, InstantiationException) and (
            seen.__cause__ is None or isinstance(seen.__cause__, TypeError)  # e.g. an unexpected config key
        ):
            return " ".join(str(seen).split())
        seen = seen.__cause__ or seen.__context__
    return None


def run_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from adaptguard.redact import redact_override

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    _redact_hydra_files(output_dir)
    # wandb records the command line as run metadata: Hydra has parsed it, so redact it here.
    sys.argv[1:] = [redact_override(a) for a in sys.argv[1:]]
    _quiet_libraries()
    logger = None
    try:
        from adaptguard.pipeline import run_experiment
        from adaptguard.reporting import format_table

        exp, ctx = build(cfg, output_dir)
        logger = ctx.logger
        if logger is not None:
            from adaptguard.redact import redact

            logger.log_hyperparams(redact(OmegaConf.to_container(cfg, resolve=True)))
        results = run_experiment(exp, ctx)
        print(format_table(results))
        _finish(logger, "success")
    except Exception as err:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        message = _user_error(err)
        _finish(logger, "failed")
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    ver = results.get("verification") or {}
    after = ver.get("after_attack") or ver.get("before_attack")
    return None if after is None else float(after["rate"])


def _finish(logger, status: str) -> None:
    """Close this job's logger (each sweep job must end its own wandb run)."""
    if logger is None:
        return
    logger.finalize(status)
    if type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish(exit_code=0 if status == "success" else 1)
