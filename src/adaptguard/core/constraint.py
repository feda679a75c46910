"""Restrictions a defense puts on fine-tuning, honoured by every attack."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from adaptguard.core.errors import ConfigError


@dataclass(frozen=True)
class FineTuneConstraint:
    """Parameter names (as in the model bundle's ``named_parameters()``) that must not change.

    Frozen tensors get ``requires_grad=False`` so they receive no gradient and are never
    handed to an optimizer (hence no optimizer state); LoRA skips adapters on modules
    whose weight is frozen, and weight edits leave them as published.
    """

    frozen: frozenset[str] = field(default_factory=frozenset)

    def apply(self, model: nn.Module) -> int:
        """Freeze the named tensors; returns how many parameters (elements) that froze."""
        params = dict(model.named_parameters())
        unknown = sorted(self.frozen - params.keys())
        if unknown:
            raise ConfigError(
                f"defense constraint names {len(unknown)} tensors this model does not have "
                f"(first: {unknown[0]!r}); was the key made for another model?"
            )
        count = 0
        for name in self.frozen:
            params[name].requires_grad_(False)
            count += params[name].numel()
        return count

    def freezes_module(self, module_name: str) -> bool:
        """True when a module's weight is frozen (``module_name`` as in named_modules())."""
        return f"{module_name}.weight" in self.frozen
