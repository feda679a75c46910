"""A composed config -> the library's objects (every class comes from a ``_target_``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.config import Rule, check_value
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.pipeline import Experiment


def instantiate(node: Any, **kwargs: Any) -> Any:
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(node, _convert_="all", **kwargs)


def defense_config(name: str, key: str) -> DictConfig:
    """``conf/defense/<name>.yaml`` with its ``defaults`` (other defense configs it extends) merged under it."""
    from omegaconf import OmegaConf

    from adaptguard.cli.config import config_dir

    folder = config_dir() / "defense"
    path = folder / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        options = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"{key}: {name!r} is not a defense config; one of: {options}")
    node = OmegaConf.load(path)
    bases = [d for d in node.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*[defense_config(b, key) for b in bases], node) if bases else node


def defense_node(node: DictConfig) -> Any:
    """``defense=stack``: each member named by its config (``sleepermark``) or ``{defense: <name>, <key>: value}``,
    replaced by that config, so Hydra instantiates the members with the stack."""
    from omegaconf import OmegaConf

    if "members" not in node or not str(node.get("_target_", "")).endswith(".StackDefense"):
        return node
    members = []
    for i, member in enumerate(node.members):
        key = f"defense.members[{i}]"
        if isinstance(member, str):
            members.append(defense_config(member, key))
        elif OmegaConf.is_dict(member) and "defense" in member:
            overrides = {k: v for k, v in member.items() if k != "defense"}
            members.append(OmegaConf.merge(defense_config(member.defense, f"{key}.defense"), overrides))
        elif OmegaConf.is_dict(member) and "_target_" in member:
            members.append(member)
        else:
            raise ConfigError(f"{key}: name a defense config (sleepermark) or give {{defense: <name>, <key>: value}}")
    resolved = OmegaConf.to_container(node, resolve=True)
    resolved["members"] = [OmegaConf.to_container(m, resolve=True) for m in members]
    return OmegaConf.create(resolved)


def make_logger(cfg: DictConfig) -> Any:
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    kwargs: dict[str, Any] = {}
    if "tags" in cfg.logger and cfg.get("tags"):
        kwargs["tags"] = list(cfg.logger.tags) + list(cfg.tags)
    if "group" in cfg.logger and (sweep := sweep_name()):
        kwargs["group"] = sweep  # one wandb group per sweep: its seeds average in wandb's grouping
    return instantiate(cfg.logger, **kwargs)


def sweep_name() -> str | None:
    """``multirun/2026-11-27/17-02-01`` for a job of a Hydra sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)


def check_environment(cfg: DictConfig, output_dir: Path, cache: ArtifactCache) -> None:
    """What the machine must provide, checked before any work: one line naming the key instead of a late traceback."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: {accelerator} needs a CUDA GPU and none is visible "
                          "(torch.cuda.is_available() is False); run with trainer=cpu or trainer=default")  # fmt: skip
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {cfg.device} but no CUDA GPU is visible; use device=auto or device=cpu")
    cache_key = "paths.cache" if cfg.paths.get("cache") else "ADAPTGUARD_CACHE"
    for key, folder in ((cache_key, cache.root), ("hydra.run.dir", Path(output_dir))):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ConfigError(
                f"{key}: {folder} is not writable ({err.strerror}); point it at a writable folder"
            ) from None


def make_context(cfg: DictConfig, output_dir: Path, logger: Any = None) -> RunContext:
    """The RunContext every command shares: cache, trainer factory, callbacks, seed, device."""
    cache = ArtifactCache(cfg.paths.cache)
    check_environment(cfg, output_dir, cache)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    return RunContext(
        cache=cache,
        make_trainer=instantiate(cfg.trainer),
        logger=logger,
        out_dir=output_dir,
        seed=check_value("seed", cfg.seed, int),
        checkpoint_every=check_value("checkpoint_every", cfg.get("checkpoint_every", 200), int, Rule(ge=0)),
        progress=bool(cfg.progress),
        device=str(cfg.device),
        callbacks=callbacks,
        sweep=sweep_name() or "",
    )


def build_experiment(cfg: DictConfig) -> Experiment:
    """Everything ``run`` needs: model, data, defense, attack and evaluation."""
    return Experiment(
        model=instantiate(cfg.model),
        data=instantiate(cfg.dataset),
        defense=instantiate(defense_node(cfg.defense)),
        attack=instantiate(cfg.attack),
        eval=instantiate(cfg.eval),
    )


def build_protection(cfg: DictConfig) -> Experiment:
    """What ``protect`` needs: model, data and defense. A preset's attack and evaluation settings
    (``attack.*``, ``eval.*``) are for ``run``; ``protect`` neither builds nor checks them, so any
    ``experiment=<preset>`` protects the preset's model with its defense."""
    return Experiment(
        model=instantiate(cfg.model), data=instantiate(cfg.dataset), defense=instantiate(defense_node(cfg.defense))
    )
