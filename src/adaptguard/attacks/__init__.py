from adaptguard.attacks.base import Attack
from adaptguard.attacks.constraint import FineTuneConstraint
from adaptguard.attacks.finetune import FullFineTune, LoraFineTune
from adaptguard.attacks.none import NoAttack

__all__ = ["Attack", "FineTuneConstraint", "FullFineTune", "LoraFineTune", "NoAttack"]
