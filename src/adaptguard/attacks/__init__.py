from adaptguard.attacks.base import Attack, EvalDomain
from adaptguard.attacks.constraint import FineTuneConstraint
from adaptguard.attacks.dreambooth import DreamBooth
from adaptguard.attacks.finetune import FullFineTune, LoraFineTune
from adaptguard.attacks.none import NoAttack
from adaptguard.attacks.perturb import Int8Quantize, MagnitudePrune, WeightNoise

__all__ = [
    "Attack",
    "DreamBooth",
    "EvalDomain",
    "FineTuneConstraint",
    "FullFineTune",
    "Int8Quantize",
    "LoraFineTune",
    "MagnitudePrune",
    "NoAttack",
    "WeightNoise",
]
