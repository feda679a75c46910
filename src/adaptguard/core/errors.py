"""Errors a user can fix by changing a config value or the data on disk.

The CLI prints these as one message and exits non-zero, without a traceback, so each
message must name the offending key and say what would fix it.
"""


class AdaptguardError(Exception):
    """Base class for user-fixable errors."""


class ConfigError(AdaptguardError):
    """A config value is missing, out of range or inconsistent."""


class DataError(AdaptguardError):
    """A dataset is missing or does not have the expected on-disk layout."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``condition`` holds (checks across fields)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")
