"""Keep secrets (keys, triggers, key seeds) out of logs, wandb configs and stdout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Config fields whose values would let someone forge or strip a watermark.
SECRET_FIELDS = frozenset({"key_seed", "trigger", "secret", "secret_key", "message", "mask_seed"})
REDACTED = "<redacted>"


def redact(value: Any) -> Any:
    """A copy of a (nested) config with every secret field's value replaced."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if k in SECRET_FIELDS and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def redact_override(override: str) -> str:
    """``defense.trigger=abc`` -> ``defense.trigger=<redacted>``; other overrides unchanged."""
    key, sep, _ = override.partition("=")
    if sep and key.lstrip("+~").split(".")[-1] in SECRET_FIELDS:
        return f"{key}={REDACTED}"
    return override
