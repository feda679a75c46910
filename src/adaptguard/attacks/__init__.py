"""Attacks: adaptations of a published model (fine-tuning, DreamBooth, weight edits, merges, VAE swaps, and
attacks aimed at the defense)."""

from adaptguard.attacks.base import Attack
from adaptguard.attacks.distill import Distill
from adaptguard.attacks.dreambooth import DreamBooth
from adaptguard.attacks.external import ExternalModel
from adaptguard.attacks.finetune import FineTuning, FullFineTune, LoraFineTune
from adaptguard.attacks.leaked_trigger import LeakedTrigger
from adaptguard.attacks.merge import WeightMerge
from adaptguard.attacks.none import NoAttack
from adaptguard.attacks.perturb import Int8Quantize, MagnitudePrune, WeightNoise
from adaptguard.attacks.targeted import TargetedFineTune
from adaptguard.attacks.vae_swap import VaeSwap

__all__ = [
    "Attack",
    "Distill",
    "DreamBooth",
    "ExternalModel",
    "FineTuning",
    "FullFineTune",
    "Int8Quantize",
    "LeakedTrigger",
    "LoraFineTune",
    "MagnitudePrune",
    "NoAttack",
    "TargetedFineTune",
    "VaeSwap",
    "WeightMerge",
    "WeightNoise",
]
