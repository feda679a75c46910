"""Model-level perturbation attacks: pruning, int8 weight quantization, weight noise.

Each edits the UNet's Linear / Conv weights of a copy, without data. Tensors a
FineTuneConstraint freezes are left untouched: the constraint is the publisher's API
contract, and an attacker who edits them has left that setting (a defense that wants
to model such an attacker should report it separately).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import prune

from adaptguard.attacks.base import Attack
from adaptguard.core.config import setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.models.bundle import DiffusionModel


def editable_weights(model: DiffusionModel, constraint: FineTuneConstraint | None) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for every UNet Linear / Conv2d whose weight the constraint does not freeze."""
    for name, module in model.unet.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and not (constraint and constraint.freezes_module(f"unet.{name}")):
            yield name, module


class _WeightEdit(Attack):
    """An attack that edits weights without data; ``edit`` changes the copy in place and returns its cost."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._cost: dict[str, Any] = {}

    def run(
        self,
        model: DiffusionModel,
        data: CaptionedImageDataModule,
        constraint: FineTuneConstraint | None,
        ctx: RunContext,
    ) -> DiffusionModel:
        attacked = model.clone()
        with torch.no_grad():
            self._cost = self.edit(attacked, constraint, ctx)
        return attacked

    @abstractmethod
    def edit(self, model: DiffusionModel, constraint: FineTuneConstraint | None, ctx: RunContext) -> dict[str, Any]:
        """Edit ``model`` in place (gradients off); returns what the edit did, for the cost report."""

    def cost(self) -> dict[str, Any]:
        return dict(self._cost)


@dataclass
class MagnitudePrune(_WeightEdit):
    """Global magnitude pruning (torch.nn.utils.prune, L1 unstructured) of a share of the UNet weights."""

    ratio: float = setting(0.3, ge=0, lt=1, doc="share of the editable weights set to zero")
    name: str = setting("prune", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ("ratio",)

    def edit(self, model: DiffusionModel, constraint: FineTuneConstraint | None, ctx: RunContext) -> dict[str, Any]:
        targets = [module for _, module in editable_weights(model, constraint)]
        if self.ratio > 0 and targets:
            prune.global_unstructured(
                [(m, "weight") for m in targets], pruning_method=prune.L1Unstructured, amount=self.ratio
            )
            for m in targets:
                prune.remove(m, "weight")
        total = sum(m.weight.numel() for m in targets)
        zeros = sum(int((m.weight == 0).sum()) for m in targets)
        return {"pruned_weights": zeros, "editable_weights": total, "modules": len(targets)}


@dataclass
class Int8Quantize(_WeightEdit):
    """Per-output-channel symmetric int8 weight quantization (round to 255 levels), stored dequantized.

    Simulates publishing / loading the weights in int8; torch's quantized tensors are deprecated.
    """

    name: str = setting("quantize", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ()

    def edit(self, model: DiffusionModel, constraint: FineTuneConstraint | None, ctx: RunContext) -> dict[str, Any]:
        err, count = 0.0, 0
        for _, module in editable_weights(model, constraint):
            w = module.weight.float()
            scale = (w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0).view(-1, *[1] * (w.dim() - 1))
            q = torch.round(w / scale).clamp(-127, 127) * scale
            err += float((q - w).pow(2).sum())
            count += w.numel()
            module.weight.copy_(q.to(module.weight.dtype))
        return {"quantized_weights": count, "rms_error": (err / max(count, 1)) ** 0.5}


@dataclass
class WeightNoise(_WeightEdit):
    """Gaussian noise on every editable weight, ``sigma`` times that tensor's own standard deviation."""

    sigma: float = setting(0.05, ge=0, doc="noise scale, in units of each tensor's own std")
    name: str = setting("weight_noise", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ("sigma",)

    def edit(self, model: DiffusionModel, constraint: FineTuneConstraint | None, ctx: RunContext) -> dict[str, Any]:
        g = ctx.generator(offset=900)
        count = 0
        for _, module in editable_weights(model, constraint):
            w = module.weight
            noise = torch.randn(w.shape, generator=g).to(w.device, w.dtype)
            w.add_(self.sigma * w.float().std().to(w.dtype) * noise)
            count += w.numel()
        return {"perturbed_weights": count}
