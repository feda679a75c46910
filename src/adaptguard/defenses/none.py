from __future__ import annotations

from dataclasses import dataclass

from adaptguard.defenses.base import Defense, Protected


@dataclass
class NoDefense(Defense):
    """The control: publish the base model unprotected."""

    name: str = "none"

    def protect(self, model, data, ctx):
        return Protected(model=model, key=None, info={})
