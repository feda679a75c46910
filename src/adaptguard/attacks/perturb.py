"""Model-level perturbation attacks: pruning, int8 weight quantization, weight noise.

Each edits the UNet's Linear / Conv weights of a copy, without data. Tensors a
FineTuneConstraint freezes are left untouched: the constraint is the publisher's API
contract, and an attacker who edits them has left that setting (a defense that wants
to model such an attacker should report it separately).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from adaptguard.attacks.base import Attack
from adaptguard.attacks.constraint import FineTuneConstraint
from adaptguard.context import RunContext
from adaptguard.errors import require
from adaptguard.models.bundle import DiffusionModel


def editable_weights(model: DiffusionModel, constraint: FineTuneConstraint | None) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for every UNet Linear / Conv2d whose weight the constraint does not freeze."""
    for name, module in model.unet.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and not (constraint and constraint.freezes_module(f"unet.{name}")):
            yield name, module


class _WeightEdit(Attack):
    def __post_init__(self) -> None:
        self._cost: dict[str, Any] = {}

    def cost(self) -> dict[str, Any]:
        return dict(self._cost)


@dataclass
class MagnitudePrune(_WeightEdit):
    """Global magnitude pruning (torch.nn.utils.prune, L1 unstructured) of a share of the UNet weights."""

    ratio: float = 0.3
    name: str = "prune"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            0.0 <= self.ratio < 1.0, "attack.ratio", f"share of weights to prune must be in [0, 1), got {self.ratio}"
        )

    def run(self, model, data, constraint, ctx) -> DiffusionModel:
        attacked = model.clone()
        targets = [module for _, module in editable_weights(attacked, constraint)]
        if self.ratio > 0 and targets:
            with torch.no_grad():
                prune.global_unstructured(
                    [(m, "weight") for m in targets], pruning_method=prune.L1Unstructured, amount=self.ratio
                )
                for m in targets:
                    prune.remove(m, "weight")
        total = sum(m.weight.numel() for m in targets)
        zeros = sum(int((m.weight == 0).sum()) for m in targets)
        self._cost = {"pruned_weights": zeros, "editable_weights": total, "modules": len(targets)}
        return attacked


@dataclass
class Int8Quantize(_WeightEdit):
    """Per-output-channel symmetric int8 weight quantization (round to 255 levels), stored dequantized.

    Simulates publishing / loading the weights in int8; torch's quantized tensors are deprecated.
    """

    name: str = "quantize"

    def run(self, model, data, constraint, ctx) -> DiffusionModel:
        attacked = model.clone()
        err, count = 0.0, 0
        with torch.no_grad():
            for _, module in editable_weights(attacked, constraint):
                w = module.weight.float()
                scale = (w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0).view(-1, *[1] * (w.dim() - 1))
                q = torch.round(w / scale).clamp(-127, 127) * scale
                err += float((q - w).pow(2).sum())
                count += w.numel()
                module.weight.copy_(q.to(module.weight.dtype))
        self._cost = {"quantized_weights": count, "rms_error": (err / max(count, 1)) ** 0.5}
        return attacked


@dataclass
class WeightNoise(_WeightEdit):
    """Gaussian noise on every editable weight, ``sigma`` times that tensor's own standard deviation."""

    sigma: float = 0.05
    name: str = "weight_noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.sigma >= 0, "attack.sigma", f"noise scale must be >= 0, got {self.sigma}")

    def run(self, model, data, constraint, ctx: RunContext) -> DiffusionModel:
        attacked = model.clone()
        g = ctx.generator(offset=900)
        count = 0
        with torch.no_grad():
            for _, module in editable_weights(attacked, constraint):
                w = module.weight
                noise = torch.randn(w.shape, generator=g).to(w.device, w.dtype)
                w.add_(self.sigma * w.float().std().to(w.dtype) * noise)
                count += w.numel()
        self._cost = {"perturbed_weights": count}
        return attacked
