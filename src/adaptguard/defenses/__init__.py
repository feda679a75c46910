from adaptguard.defenses.aiao import AIAODefense, AIAOKey
from adaptguard.defenses.backdoor import BackdoorDefense, BackdoorKey
from adaptguard.defenses.base import Defense, OutputWatermark, Protected, SecretKey
from adaptguard.defenses.none import NoDefense
from adaptguard.defenses.sleepermark import SleeperMarkDefense, SleeperMarkKey

__all__ = [
    "AIAODefense",
    "AIAOKey",
    "BackdoorDefense",
    "BackdoorKey",
    "Defense",
    "OutputWatermark",
    "Protected",
    "SecretKey",
    "NoDefense",
    "SleeperMarkDefense",
    "SleeperMarkKey",
]
