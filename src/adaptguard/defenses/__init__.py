"""Defenses: protections of a published model (watermarks, freezing masks) and their verification."""

from adaptguard.defenses.aiao import AIAODefense, AIAOKey
from adaptguard.defenses.aqualora import AquaLoRADefense, AquaLoRAKey
from adaptguard.defenses.backdoor import BackdoorDefense, BackdoorKey
from adaptguard.defenses.base import Defense, OutputWatermark
from adaptguard.defenses.freezeasguard import FreezeAsGuardDefense
from adaptguard.defenses.freezing import FreezeMask, FreezingDefense
from adaptguard.defenses.imma import IMMADefense
from adaptguard.defenses.none import NoDefense
from adaptguard.defenses.random_freeze import RandomFreezeDefense
from adaptguard.defenses.sleepermark import SleeperMarkDefense, SleeperMarkKey
from adaptguard.defenses.stable_signature import StableSignatureDefense, StableSignatureKey
from adaptguard.defenses.stack import StackDefense, StackKey

__all__ = [
    "AIAODefense",
    "AIAOKey",
    "AquaLoRADefense",
    "AquaLoRAKey",
    "BackdoorDefense",
    "BackdoorKey",
    "Defense",
    "FreezeAsGuardDefense",
    "FreezeMask",
    "FreezingDefense",
    "IMMADefense",
    "NoDefense",
    "OutputWatermark",
    "RandomFreezeDefense",
    "SleeperMarkDefense",
    "SleeperMarkKey",
    "StableSignatureDefense",
    "StableSignatureKey",
    "StackDefense",
    "StackKey",
]
