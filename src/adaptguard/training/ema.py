"""Exponential moving average of trainable weights, as diffusers' training examples use."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class EMACallback(L.Callback):
    """Keeps an EMA of the trainable parameters and copies it into the model when training ends.

    Its state is part of Lightning checkpoints, so resumed runs continue the same average.
    """

    def __init__(self, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}

    def _params(self, pl_module: L.LightningModule):
        return ((n, p) for n, p in pl_module.named_parameters() if p.requires_grad)

    def on_fit_start(self, trainer, pl_module) -> None:
        for name, p in self._params(pl_module):
            if name not in self.shadow:
                self.shadow[name] = p.detach().clone()
            else:
                self.shadow[name] = self.shadow[name].to(p.device)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up, as in diffusers' EMAModel
        for name, p in self._params(pl_module):
            self.shadow[name].lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def on_fit_end(self, trainer, pl_module) -> None:
        for name, p in self._params(pl_module):
            p.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.decay = state_dict["decay"]
        self.shadow = dict(state_dict["shadow"])
