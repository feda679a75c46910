"""``key=value`` arguments for the commands that compose no experiment config (verify, calibrate).

They read like Hydra overrides (``suspect.lora=...``) so the owner's commands look like the rest,
without composing a config tree for three paths and a seed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.owner_key import OwnerKey


def parse_options(
    argv: Sequence[str], keys: dict[str, Callable[[str], Any]], flags: Sequence[str] = (), usage: str = ""
) -> dict[str, Any]:
    """``{key: converted value}`` for every ``key=value`` in ``argv``, and ``{flag: True}`` for each flag."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage.replace("``", "`"))
        sys.exit(0)
    out: dict[str, Any] = {f: False for f in flags}
    for arg in argv:
        if arg in flags:
            out[arg] = True
            continue
        name, sep, value = arg.partition("=")
        name = name.lstrip("+")
        if not sep or name not in keys:
            known = ", ".join([*keys, *flags])
            raise ConfigError(f"{name}: not an option of this command (options: {known})")
        try:
            out[name] = keys[name](value) if value != "" else None
        except ValueError:
            raise ConfigError(f"{name}: cannot read {value!r} as {keys[name].__name__}") from None
    return out


def paths(value: str) -> list[str]:
    """``[a,b]`` or ``a,b``: a list of paths."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [p.strip().strip("'\"") for p in value.split(",") if p.strip()]


def key_context(key: OwnerKey, opts: dict[str, Any]) -> RunContext:
    """What verify and calibrate run under: the key's seed unless ``seed=`` overrides it, ``device=``; progress bars
    in a terminal, none in a log or CI (stderr not a terminal)."""
    seed = opts.get("seed")
    return RunContext(seed=key.seed if seed is None else seed, progress=sys.stderr.isatty(),
                      device=opts.get("device") or "auto")  # fmt: skip
