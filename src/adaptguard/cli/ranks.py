"""Starting the ranks of a DDP run before the pipeline does any work.

Lightning's DDP strategy, left alone, starts the other ranks at the first ``trainer.fit``: they rerun the
command from the top while rank 0 sits inside a protection build holding its cache lock, and they wait
on that lock while rank 0 waits for them in the collective. Here the ranks are started (through Fabric's
launcher: the command again, with Hydra's run dir pinned) and the process group joined before anything
else, so every rank runs the same stages in lockstep and the cache and results follow rank 0
(:mod:`adaptguard.core.ranks`). Each later Trainer finds the group and launches nothing. Under torchrun or
SLURM (one task per GPU) the cluster has started the ranks already; they only join the group.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from adaptguard.core import ranks
from adaptguard.core.errors import ConfigError

FUNCTION_LAUNCHERS = ("spawn", "fork", "notebook")  # strategies that run ranks as functions, not the command


def ddp_settings(trainer: DictConfig) -> dict[str, Any] | None:
    """Fabric's arguments for ``trainer``'s DDP layout, or None when it trains in one process."""
    strategy = str(trainer.get("strategy", "auto"))
    if not strategy.startswith("ddp"):
        return None
    if any(word in strategy for word in FUNCTION_LAUNCHERS):
        raise ConfigError(f"trainer.strategy: {strategy} runs each rank as a function, which cannot run the whole "
                          "pipeline; use strategy=ddp (trainer=ddp)")  # fmt: skip
    return {"accelerator": str(trainer.get("accelerator", "auto")), "devices": trainer.get("devices", "auto"),
            "num_nodes": int(trainer.get("num_nodes", 1)), "strategy": "ddp"}  # fmt: skip


def start_ranks(cfg: DictConfig, sweep: bool) -> int:
    """Start (or join) the other ranks of ``cfg.trainer``'s DDP run; returns this process's rank.

    Call before anything reads the command line's secret values out of ``sys.argv``: the ranks are started
    with it. Every non-zero rank logs warnings only and draws no progress bars.
    """
    settings = ddp_settings(cfg.trainer)
    if settings is None:
        return 0
    from lightning.fabric import Fabric

    fabric = Fabric(**settings)
    if fabric.world_size <= 1:
        return 0
    if sweep and not started_by_cluster():
        raise ConfigError("trainer.strategy: ddp in a local sweep (-m) would start a sweep per rank; run each job "
                          "on its own (or under hydra/launcher=slurm with tasks_per_node = GPUs per job)")  # fmt: skip
    fabric.launch()
    if not ranks.is_main():
        logging.getLogger().setLevel(logging.WARNING)
        cfg.progress = False
    return ranks.rank()


def started_by_cluster() -> bool:
    """torchrun or SLURM started this process as one of the ranks (Lightning's own detection)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return TorchElasticEnvironment.detect() or SLURMEnvironment.detect()
