from adaptguard.defenses.backdoor import BackdoorDefense, BackdoorKey
from adaptguard.defenses.base import Defense, Protected, SecretKey
from adaptguard.defenses.none import NoDefense

__all__ = ["BackdoorDefense", "BackdoorKey", "Defense", "Protected", "SecretKey", "NoDefense"]
