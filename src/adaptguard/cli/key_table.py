"""One reference page's key table, built from config classes and the option yamls in ``conf/``.

A class's keys are its init fields (a dataclass) or, for a class that is not a dataclass (a data module,
configured through ``__init__``), the ``__init__`` parameters of each class in its MRO that documents them
in a class-level ``KEY_DOCS`` mapping beside that ``__init__`` (:func:`adaptguard.core.config.key_docs`).
The default column is the class default; where an option's yaml (``conf/attack/dreambooth.yaml``) sets
another value, the option follows in parentheses, as the pages always wrote it: ``300 (dreambooth 400)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf

from adaptguard.core.config import Rule, field_rule, field_types, key_docs, secret_fields
from adaptguard.core.redact import REDACTED

HEADER = "| key | default | meaning |\n|---|---|---|"
_LONG = 60  # a mapping rendered longer than this shows its keys only


@dataclass(frozen=True)
class Key:
    """One config key of one class: what a row needs."""

    name: str
    default: Any
    doc: str
    choices: tuple[Any, ...] = ()
    rule: Rule | None = None
    secret: bool = False


@dataclass(frozen=True)
class Option:
    """One yaml of a config group (``attack=dreambooth``), merged with the yamls it names in ``defaults``."""

    name: str
    config: Mapping[str, Any]

    def at(self, prefix: str) -> Mapping[str, Any] | None:
        """The mapping at ``prefix`` (``defense.codec`` -> the yaml's ``codec:``), or None."""
        node: Any = self.config
        for part in prefix.split(".")[1:]:
            node = node.get(part) if isinstance(node, Mapping) else None
        return node if isinstance(node, Mapping) else None


def load_class(path: str) -> type:
    """``adaptguard.defenses.aiao.AIAODefense`` -> the class."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def names_class(target: Any, cls: type) -> bool:
    """Whether a yaml's ``_target_`` is ``cls``; one that does not import (``examples.*`` outside the package,
    run from elsewhere) is no class of the library's tables."""
    if not target:
        return False
    if target == f"{cls.__module__}.{cls.__qualname__}":
        return True
    try:
        return load_class(str(target)) is cls
    except (ImportError, AttributeError):
        return False


def class_keys(cls: type) -> list[Key]:
    """The config keys of ``cls`` in declaration order (base classes first)."""
    docs, secrets = key_docs(cls), secret_fields(cls)
    if dataclasses.is_dataclass(cls):
        hints = field_types(cls)
        return [
            Key(
                f.name,
                _field_default(f),
                docs.get(f.name, ""),
                _choices(hints.get(f.name)),
                field_rule(f),
                f.name in secrets,
            )
            for f in dataclasses.fields(cls)
            if f.init
        ]
    params: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "KEY_DOCS" in klass.__dict__ and "__init__" in klass.__dict__:
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    params[p.name] = None if p.default is p.empty else p.default
    return [Key(name, default, docs.get(name, "")) for name, default in params.items()]


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _choices(annotation: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` (or optional ``Literal``) field accepts; () for any other type."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    args = typing.get_args(annotation)
    literals = [a for a in args if typing.get_origin(a) is Literal]
    if literals and all(a is type(None) or typing.get_origin(a) is Literal for a in args):
        return (*[v for a in literals for v in typing.get_args(a)], *([None] if type(None) in args else []))
    return ()


def load_options(group_dir: Path) -> list[Option]:
    """Every yaml of a config group, each merged with the same-group yamls its ``defaults`` list names."""
    return [Option(path.stem, _load(group_dir, path.stem)) for path in sorted(group_dir.glob("*.yaml"))]


def _load(group_dir: Path, name: str) -> dict[str, Any]:
    raw = OmegaConf.to_container(OmegaConf.load(group_dir / f"{name}.yaml"), resolve=False)
    assert isinstance(raw, dict)
    own = {k: v for k, v in raw.items() if k != "defaults"}
    merged = OmegaConf.create()
    entries = list(raw.get("defaults", []))
    for entry in entries if "_self_" in entries else [*entries, "_self_"]:  # Hydra: _self_ last unless placed
        merged = OmegaConf.merge(merged, own if entry == "_self_" else _load(group_dir, str(entry)))
    out = OmegaConf.to_container(merged, resolve=False)
    assert isinstance(out, dict)
    return out


def table(
    pairs: Sequence[tuple[str, type]],
    options: Sequence[Option],
    nested: Callable[[str], str | None],
) -> str:
    """The markdown table of the keys of ``(prefix, class)`` pairs.

    ``nested(key)`` is the default cell of a key that has its own table on the page ("(below)"), else None.
    """
    rows: dict[str, list[tuple[type, Key, list[tuple[str, Any]]]]] = {}
    for prefix, cls in pairs:
        classes = [c for p, c in pairs if p == prefix]
        configured = _options_of(options, prefix, cls, classes)
        for key in class_keys(cls):
            values = [(o.name, node.get(key.name, key.default)) for o, node in configured]
            rows.setdefault(f"{prefix}.{key.name}", []).append((cls, key, values))
    lines = [HEADER]
    for full in sorted(rows, key=lambda k: not k.endswith(".name")):  # the label first, as every page had it
        users = rows[full]
        key = users[0][1]
        prefix = full.rpartition(".")[0]
        everyone = len(users) == sum(p == prefix for p, _ in pairs)
        default = nested(full) or _default(key, [v for _, _, values in users for v in values])
        labels = [] if everyone else _labels(users)
        lines.append(f"| `{full}` | {_cell(default)} | {_cell(meaning(key, labels))} |")
    return "\n".join(lines)


def _options_of(
    options: Sequence[Option], prefix: str, cls: type, classes: Sequence[type]
) -> list[tuple[Option, Mapping[str, Any]]]:
    """The options configuring ``cls`` at ``prefix``, with their mapping there: it names ``cls`` in ``_target_``,
    or names no target and ``cls`` is the only class with that prefix (a nested config: ``model.unet``)."""
    found = []
    for option in options:
        node = option.at(prefix)
        if node is None:
            continue
        target = node.get("_target_")
        if names_class(target, cls) or (not target and len(classes) == 1):
            found.append((option, node))
    return found


def _labels(users: list[tuple[type, Key, list[tuple[str, Any]]]]) -> list[str]:
    """The options that have a key not every class of the table has (a class without options: its name)."""
    labels = []
    for cls, _, values in users:
        labels += [name for name, _ in values] or [str(getattr(cls, "name", cls.__name__))]
    return labels


def _default(key: Key, values: list[tuple[str, Any]]) -> str:
    """``300 (dreambooth 400)``: the first class's default, then each option whose yaml gives another value."""
    shown = [(name, render(value, key)) for name, value in values]
    if shown and all(value == name for name, value in shown):  # a label: each option's own name
        return ", ".join(dict.fromkeys(value for _, value in shown))
    base = render(key.default, key)
    groups: dict[str, list[str]] = {}
    for name, value in shown:
        if value != base:
            groups.setdefault(value, []).append(name)
    if len(shown) > 1 and len(groups) == 1 and len(next(iter(groups.values()))) == len(shown):
        return f"{base} (all options {next(iter(groups))})"
    extra = ", ".join(f"{'/'.join(names)} {value}" for value, names in groups.items())
    return f"{base} ({extra})" if extra else base


def meaning(key: Key, labels: Sequence[str] = ()) -> str:
    """The key's description, with what the code says besides: its choices, range and secrecy."""
    text = key.doc
    if key.choices:
        text = f"{' | '.join(render(c) for c in key.choices)}: {text}"
    if labels:
        text = f"*{', '.join(labels)}*: {text}"
    rule = key.rule
    if rule is not None and {rule.ge, rule.gt} != {None} and {rule.le, rule.lt} != {None}:  # two-sided: a share
        text += f"; {rule.describe()}"
    return text + (" (secret, redacted)" if key.secret else "")


def render(value: Any, key: Key | None = None) -> str:
    """A config value as the yaml would write it; a secret's value only where it is the public placeholder."""
    if key is not None and key.secret and value is not None and value != key.default:
        return f"`{REDACTED}`"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        if "${" in value:
            return f"`{value}`"
        return f'"{value}"' if not value or value != value.strip() or " " in value else value
    if isinstance(value, Mapping):
        inline = "{" + ", ".join(f"{k}: {render(v)}" for k, v in value.items()) + "}"
        return inline if len(inline) <= _LONG else "{" + ", ".join(f"{k}: ..." for k in value) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        return f"({type(value).__name__})"
    return str(value)


def _number(value: float) -> str:
    """``1e-4`` rather than ``0.0001``; ``0.5`` and ``250.0`` as they are."""
    if value and (abs(value) < 1e-2 or abs(value) >= 1e5):
        mantissa, _, exponent = f"{value:e}".partition("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
