"""Defenses: protections of a published model (watermarks, freezing masks) and their verification."""

from adaptguard.defenses.aiao import AIAODefense, AIAOKey
from adaptguard.defenses.backdoor import BackdoorDefense, BackdoorKey
from adaptguard.defenses.base import Defense, OutputWatermark
from adaptguard.defenses.freezeasguard import FreezeAsGuardDefense
from adaptguard.defenses.freezing import FreezeMask, FreezingDefense
from adaptguard.defenses.none import NoDefense
from adaptguard.defenses.random_freeze import RandomFreezeDefense
from adaptguard.defenses.sleepermark import SleeperMarkDefense, SleeperMarkKey
from adaptguard.defenses.stable_signature import StableSignatureDefense, StableSignatureKey

__all__ = [
    "AIAODefense",
    "AIAOKey",
    "BackdoorDefense",
    "BackdoorKey",
    "Defense",
    "FreezeAsGuardDefense",
    "FreezeMask",
    "FreezingDefense",
    "NoDefense",
    "OutputWatermark",
    "RandomFreezeDefense",
    "SleeperMarkDefense",
    "SleeperMarkKey",
    "StableSignatureDefense",
    "StableSignatureKey",
]
