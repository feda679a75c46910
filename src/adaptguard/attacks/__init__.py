"""Attacks: adaptations of a published model (fine-tuning, DreamBooth, weight edits)."""

from adaptguard.attacks.base import Attack
from adaptguard.attacks.dreambooth import DreamBooth
from adaptguard.attacks.external import ExternalModel
from adaptguard.attacks.finetune import FineTuning, FullFineTune, LoraFineTune
from adaptguard.attacks.none import NoAttack
from adaptguard.attacks.perturb import Int8Quantize, MagnitudePrune, WeightNoise

__all__ = [
    "Attack",
    "DreamBooth",
    "ExternalModel",
    "FineTuning",
    "FullFineTune",
    "Int8Quantize",
    "LoraFineTune",
    "MagnitudePrune",
    "NoAttack",
    "WeightNoise",
]
