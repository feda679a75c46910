"""The denoising LightningModule that pretraining, protection and fine-tuning attacks share.

What is trained is decided by ``requires_grad`` on the bundle's parameters (a defense's
trainable subset, an attack's LoRA adapters, a FineTuneConstraint), and only those
parameters reach the optimizer, so frozen tensors get neither gradients nor optimizer
state. A stage with its own loss passes an ``objective``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from diffusers.optimization import get_scheduler

from adaptguard.core.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel


def drop_captions(captions: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Each caption replaced by "" with probability ``p`` (classifier-free guidance's unconditional branch);
    one draw per caption from ``generator``."""
    empty = torch.rand(len(captions), generator=generator) < p
    return ["" if e else c for e, c in zip(empty.tolist(), captions, strict=True)]


Objective = Callable[[DiffusionModel, Mapping[str, Any]], "torch.Tensor | dict[str, torch.Tensor]"]
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule of one training stage (filled from that stage's config keys)."""

    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    warmup_steps: int = 0

    def build(self, params: list[torch.nn.Parameter], max_steps: int) -> dict[str, Any]:
        """Lightning's ``configure_optimizers`` answer for ``params``."""
        if not params:
            raise ConfigError("nothing to train: every parameter is frozen for this stage")
        kwargs: dict[str, Any] = {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.optimizer != "sgd":
            kwargs["betas"] = tuple(self.betas)
        optimizer = OPTIMIZERS[self.optimizer](params, **kwargs)
        scheduler = get_scheduler(
            self.lr_scheduler, optimizer, num_warmup_steps=self.warmup_steps, num_training_steps=max_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DenoisingModule(L.LightningModule):
    def __init__(
        self,
        model: DiffusionModel,
        optim: OptimConfig | None = None,
        objective: Objective | None = None,
        caption_dropout: float = 0.0,
        log_prefix: str = "train",
        max_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim or OptimConfig()
        self.objective = objective
        self.caption_dropout = caption_dropout
        self.log_prefix = log_prefix
        self.max_steps = max_steps

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        if self.caption_dropout > 0:
            batch = dict(batch)
            batch["caption"] = ["" if random.random() < self.caption_dropout else c for c in batch["caption"]]
        if self.objective is None:
            out: Any = self.model.latent_loss(self.model.batch_latents(batch), batch["caption"])
        else:
            out = self.objective(self.model, batch)
        terms = out if isinstance(out, dict) else {"loss": out}
        bs = len(batch["caption"])
        self.log_dict({f"{self.log_prefix}/{k}": v.detach() for k, v in terms.items()}, prog_bar=True, batch_size=bs)
        return terms["loss"]

    def configure_optimizers(self) -> dict[str, Any]:
        return self.optim.build(self.trainable_parameters(), self.max_steps or 1)
