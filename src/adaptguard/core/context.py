"""What every stage gets besides the model and data: cache, trainer factory, logger, seed, device."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from adaptguard.core.artifacts import ArtifactCache

TrainerFactory = Callable[..., L.Trainer]


def default_trainer_factory() -> TrainerFactory:
    """A plain single-device Trainer; Hydra's ``trainer`` group replaces this."""
    return functools.partial(L.Trainer, accelerator="auto", devices=1, log_every_n_steps=10, enable_model_summary=False)


@dataclass
class RunContext:
    cache: ArtifactCache = field(default_factory=ArtifactCache)
    make_trainer: TrainerFactory = field(default_factory=default_trainer_factory)
    logger: Logger | None = None
    out_dir: Path = field(default_factory=lambda: Path("outputs"))
    seed: int = 0
    progress: bool = True
    device: str = "auto"  # where sampling and evaluation run
    callbacks: Sequence[Callback] = ()  # added to every fit under this context (config callbacks, step probes)
    # where fits under this context keep resume checkpoints (one folder per fit label); None: no checkpoints
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 200  # optimizer steps between checkpoints (config key checkpoint_every; 0: none)
    sweep: str = ""  # the Hydra sweep this run is a job of (its wandb group; results.json -> run.sweep)
    fresh_keys: bool = False  # ``protect``: keys whose seed is null are drawn fresh, not from the run seed
    # the experiment's never-protected base model (a DiffusionModel), for attacks that start from it as model-hub
    # users do (merges with an independent fine-tune, VAE swaps back to the original); None outside experiments
    base_model: Any = None
    # the owner's key, handed only to attacks that model a leak (``Attack.reads_leaked_key``); None otherwise
    leaked_key: Any = None

    def key_seed(self, configured: int | None) -> int:
        """The seed a defense draws its key from: ``configured`` if set; else derived from the run seed, so
        the same command gives the same key on a fresh cache; an owner's ``protect`` draws a fresh secret one."""
        if configured is not None:
            return configured
        if self.fresh_keys:
            return secrets.randbits(62)
        return (self.seed * 1_000_003 + 0x5EED) % 2**62

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator for sampling, reproducible per run seed and use."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    def with_checkpoints(self, folder: Path | None) -> RunContext:
        """The same context, with fits checkpointing into ``folder`` and resuming from it."""
        return replace(self, checkpoint_dir=folder if self.checkpoint_every > 0 else None)

    def with_base(self, base: Any) -> RunContext:
        """The same context, knowing the experiment's base model."""
        return replace(self, base_model=base)

    def with_callbacks(self, *callbacks: Callback) -> RunContext:
        """The same context with ``callbacks`` added to every fit."""
        return replace(self, callbacks=[*self.callbacks, *callbacks])
