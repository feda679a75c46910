"""What every stage gets besides the model and data: cache, trainer factory, logger, seed."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from adaptguard.artifacts import ArtifactCache

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
    callbacks: Sequence[Callback] = ()  # added to every fit under this context (e.g. an attack's step probes)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator for sampling, reproducible per run seed and use."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    def fit(
        self,
        module: L.LightningModule,
        dataloader: Any,
        max_steps: int,
        checkpoint_dir: Path | None = None,
        checkpoint_every: int = 200,
        callbacks: Sequence[Callback] = (),
        **trainer_kwargs: Any,
    ) -> L.Trainer:
        """Train for ``max_steps`` optimizer steps; resumable when ``checkpoint_dir`` is given."""
        L.seed_everything(self.seed, verbose=False)
        cbs = [*self.callbacks, *callbacks]
        ckpt_path = None
        if checkpoint_dir is not None:
            cbs.append(ModelCheckpoint(dirpath=checkpoint_dir, every_n_train_steps=checkpoint_every, save_last=True))
            last = Path(checkpoint_dir) / "last.ckpt"
            ckpt_path = str(last) if last.exists() else None
        trainer = self.make_trainer(
            max_steps=max_steps,
            logger=self.logger if self.logger is not None else False,
            enable_checkpointing=checkpoint_dir is not None,
            enable_progress_bar=self.progress,
            callbacks=cbs,
            default_root_dir=str(self.out_dir),
            **trainer_kwargs,
        )
        module.train()  # bundles come back from load()/sampling in eval mode; Lightning keeps the mode it finds
        trainer.fit(module, train_dataloaders=dataloader, ckpt_path=ckpt_path)
        module.eval()
        return trainer
