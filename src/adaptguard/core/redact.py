"""Keep secrets (keys, triggers, key seeds, masks) out of logs, wandb configs, config dumps and stdout.

Which fields are secret is declared where they are defined (``setting(..., secret=True)`` on a
config dataclass); redaction looks the names up, so a new defense needs no list edited here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from adaptguard.core.config import Validated, secret_fields

REDACTED = "<redacted>"


def _subclasses(cls: type) -> Iterable[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def known_secret_names() -> frozenset[str]:
    """Secret field names of every config class loaded in this process."""
    return frozenset(name for cls in _subclasses(Validated) for name in secret_fields(cls))


def _target_class(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def secret_names(config: Any = None) -> frozenset[str]:
    """Secret field names of the classes a composed config instantiates (its ``_target_`` s), plus
    those of every config class already loaded (a sweep's primary config may name another class)."""
    names = set(known_secret_names())
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            target = node.get("_target_")
            if isinstance(target, str) and (cls := _target_class(target)) is not None:
                names |= secret_fields(cls)
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return frozenset(names)


def redact(value: Any, names: frozenset[str] | None = None, fingerprint: Callable[[Any], str] | None = None) -> Any:
    """A copy of a (nested) config with the value of every secret field replaced by ``<redacted>``, or by
    ``fingerprint(value)`` (a salted hash: tells two secrets apart without showing either)."""
    names = known_secret_names() if names is None else names
    hide = fingerprint or (lambda v: REDACTED)
    if isinstance(value, Mapping):
        return {
            k: (hide(v) if k in names and v is not None else redact(v, names, fingerprint)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v, names, fingerprint) for v in value)
    return value


def redact_override(override: str, names: frozenset[str] | None = None) -> str:
    """``defense.trigger=abc`` -> ``defense.trigger=<redacted>``; other overrides unchanged."""
    names = known_secret_names() if names is None else names
    key, sep, _ = override.partition("=")
    if sep and key.lstrip("+~").split(".")[-1] in names:
        return f"{key}={REDACTED}"
    return override
