"""What every tensor-freezing defense shares: the mask key, the ratio projection, the report.

A freezing defense publishes the model unchanged plus a per-tensor mask; its only
protection is the :class:`FineTuneConstraint` every attack must honour. Masks are keyed
by parameter name (as in ``DiffusionModel.named_parameters()``), never by index, so a
mask survives library upgrades that reorder modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.defenses.base import Defense
from adaptguard.models.bundle import DiffusionModel

RatioBy = Literal["tensors", "params"]


@dataclass(repr=False)
class FreezeMask(SecretKey):
    """The mask: ``mask[name]`` is 1.0 for a frozen tensor; ``scores`` ranked them."""

    mask: dict[str, float]
    scores: dict[str, float]

    @property
    def frozen(self) -> frozenset[str]:
        return frozenset(name for name, m in self.mask.items() if m >= 0.5)


def candidate_sizes(model: DiffusionModel) -> dict[str, int]:
    """Element count of every UNet tensor, keyed by its name in the bundle; the freezing candidates."""
    return {f"unet.{name}": p.numel() for name, p in model.unet.named_parameters()}


def project_to_ratio(scores: dict[str, float], sizes: dict[str, int], rho: float, by: str = "tensors") -> set[str]:
    """The highest-scored tensors that make up the freeze ratio ``rho``.

    ``by="tensors"``: exactly ``round(rho * n)`` tensors. ``by="params"``: tensors in score
    order until the frozen share of elements is as close to ``rho`` as the next tensor allows.
    Ties break by name so the projection is deterministic.
    """
    order = sorted(scores, key=lambda n: (-scores[n], n))
    if by == "tensors":
        return set(order[: round(rho * len(order))])
    total = sum(sizes[n] for n in order)
    target = rho * total
    frozen: set[str] = set()
    count = 0
    for name in order:
        if count >= target:
            break
        # take the tensor unless stopping short leaves us closer to the target
        if count + sizes[name] - target > target - count:
            break
        frozen.add(name)
        count += sizes[name]
    return frozen


def freeze_ratios(frozen: set[str] | frozenset[str], sizes: dict[str, int]) -> dict[str, Any]:
    """Achieved freeze ratio by tensor count and by element count (non-secret: counts only)."""
    frozen_params = sum(sizes[n] for n in frozen)
    total = sum(sizes.values())
    return {
        "frozen_tensors": len(frozen),
        "total_tensors": len(sizes),
        "ratio_by_tensors": len(frozen) / len(sizes) if sizes else 0.0,
        "frozen_params": frozen_params,
        "total_params": total,
        "ratio_by_params": frozen_params / total if total else 0.0,
    }


def hard_mask(frozen: set[str], scores: dict[str, float]) -> FreezeMask:
    return FreezeMask(mask={n: float(n in frozen) for n in scores}, scores=dict(scores))


class FreezingDefense(Defense):
    """A defense whose protection is a FreezeMask the attacks must honour; nothing to verify.

    Subclasses have the fields ``rho`` (freeze ratio) and ``ratio_by`` and put ``freeze_ratios``
    into the protection's info under ``mask``.
    """

    key_type: ClassVar[type[SecretKey]] = FreezeMask
    modifies_weights: ClassVar[bool] = False

    def constraint(self, key: SecretKey | None) -> FineTuneConstraint | None:
        if not isinstance(key, FreezeMask):
            raise ConfigError(f"defense {self.name}: expected a FreezeMask key, got {type(key).__name__}")
        return FineTuneConstraint(frozen=key.frozen)

    def summary(self, protected: Protected) -> dict[str, Any]:
        mask = (protected.info or {}).get("mask") or {}
        return {
            "rho": getattr(self, "rho", None),
            "frozen_tensors_ratio": mask.get("ratio_by_tensors"),
            "frozen_params_ratio": mask.get("ratio_by_params"),
        }


def random_scores(sizes: dict[str, int], seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed % 2**63)
    values = torch.rand(len(sizes), generator=g).tolist()
    return dict(zip(sorted(sizes), values, strict=True))


def sigmoid_mask(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.sigmoid(x / temperature)


def logit(p: float, temperature: float) -> float:
    """The score x with sigmoid(x / T) = p."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return temperature * math.log(p / (1 - p))
