from adaptguard.defenses.aiao import AIAODefense, AIAOKey
from adaptguard.defenses.backdoor import BackdoorDefense, BackdoorKey
from adaptguard.defenses.base import Defense, Protected, SecretKey
from adaptguard.defenses.none import NoDefense

__all__ = ["AIAODefense", "AIAOKey", "BackdoorDefense", "BackdoorKey", "Defense", "Protected", "SecretKey", "NoDefense"]
