"""A composed config -> the library's objects (every class comes from a ``_target_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from adaptguard.pipeline import Experiment


def instantiate(node: Any, **kwargs: Any) -> Any:
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(node, _convert_="all", **kwargs)


def make_logger(cfg: DictConfig) -> Any:
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    kwargs: dict[str, Any] = {}
    if "tags" in cfg.logger and cfg.get("tags"):
        kwargs["tags"] = list(cfg.logger.tags) + list(cfg.tags)
    return instantiate(cfg.logger, **kwargs)


def make_context(cfg: DictConfig, output_dir: Path, logger: Any = None) -> RunContext:
    """The RunContext every command shares: cache, trainer factory, callbacks, seed, device."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    return RunContext(
        cache=ArtifactCache(cfg.paths.cache),
        make_trainer=instantiate(cfg.trainer),
        logger=logger,
        out_dir=output_dir,
        seed=int(cfg.seed),
        progress=bool(cfg.progress),
        device=str(cfg.device),
        callbacks=callbacks,
    )


def build_experiment(cfg: DictConfig) -> Experiment:
    return Experiment(
        model=instantiate(cfg.model),
        data=instantiate(cfg.dataset),
        defense=instantiate(cfg.defense),
        attack=instantiate(cfg.attack),
        eval=instantiate(cfg.eval),
    )
