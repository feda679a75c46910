from __future__ import annotations

from dataclasses import dataclass

from adaptguard.attacks.base import Attack


@dataclass
class NoAttack(Attack):
    """The control: the model is published and used as is."""

    name: str = "none"

    def run(self, model, data, constraint, ctx):
        return model
