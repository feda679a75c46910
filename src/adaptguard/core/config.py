"""One validation path for every config dataclass.

A config class declares its fields with type hints (``Literal`` for choices) and, where a
value has a range, ``setting(default, ge=..., gt=...)``. :class:`Validated` checks them all
in ``__post_init__`` and names the field by its full key (``defense.probe_lr``), so a bad
value fails when the config is built, with one line that says what was expected::

    attack.steps: expected an integer, got 'abc'
    defense.probe_lr: must be > 0, got 0.0

Fields marked ``secret=True`` (keys, triggers, seeds) are what :mod:`adaptguard.core.redact`
keeps out of logs and config dumps: a new defense marks its own secrets, no list to edit.
``doc="..."`` is the key's one-line description: the reference pages' key tables are generated
from it (``make docs``), so a new field is documented where it is declared.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from adaptguard.core.errors import ConfigError

T = TypeVar("T")
_RULE = "adaptguard.rule"
_SECRET = "adaptguard.secret"
_DOC = "adaptguard.doc"


@dataclass(frozen=True)
class Rule:
    """Bounds and shape a value must have, beyond its type."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nonempty: bool = False

    def problem(self, value: Any) -> str | None:
        if isinstance(value, int | float) and not isinstance(value, bool) and not self.admits(value):
            return f"must be {self.describe()}, got {value!r}"
        if self.nonempty and isinstance(value, str | Sequence | Mapping) and not _strip(value):
            return "must not be empty"
        return None

    def admits(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def describe(self) -> str:
        """``in [0, 1)`` for two-sided bounds, ``> 0`` for one."""
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else ""
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {bound:g}" for op, bound in bounds if bound is not None)


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def setting(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    nonempty: bool = False,
    secret: bool = False,
    doc: str = "",
) -> Any:
    """A dataclass field with a range rule, a secret mark (secrets also stay out of ``repr``) and a description."""
    metadata = {_RULE: Rule(ge, gt, le, lt, nonempty), _SECRET: secret, _DOC: doc}
    return field(default=default, default_factory=default_factory, metadata=metadata, repr=not secret)


def field_doc(f: dataclasses.Field) -> str:
    """The description a field was declared with (``setting(doc=...)``); empty if none."""
    return f.metadata.get(_DOC, "")


def field_rule(f: dataclasses.Field) -> Rule | None:
    """The range rule a field was declared with, if any."""
    return f.metadata.get(_RULE)


def key_docs(cls: type) -> dict[str, str]:
    """Each config key of ``cls`` -> its description (empty where there is none).

    A dataclass's keys are its init fields; a field a subclass redeclares only to change its default
    keeps the description of the base class's field. A class that is not a dataclass (a data module,
    whose keys are ``__init__`` parameters) documents them in a ``KEY_DOCS`` mapping beside each
    ``__init__``; the mappings of its bases are merged in.
    """
    if not dataclasses.is_dataclass(cls):
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            docs.update(klass.__dict__.get("KEY_DOCS", {}))
        return docs
    inherited = [getattr(k, "__dataclass_fields__", {}) for k in cls.__mro__]
    return {
        f.name: next((field_doc(fs[f.name]) for fs in inherited if f.name in fs and field_doc(fs[f.name])), "")
        for f in dataclasses.fields(cls)
        if f.init
    }


def secret_fields(cls: type) -> frozenset[str]:
    """Names of the fields of a config dataclass declared with ``secret=True``."""
    if not dataclasses.is_dataclass(cls):
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get(_SECRET))


class Validated:
    """Mixin for config dataclasses: types and rules are checked in ``__post_init__``.

    ``config_key`` is the key the dataclass lives under (``attack``, ``defense.codec``), used
    in every error message. Subclasses that convert values first call ``super().__post_init__()``
    after converting.
    """

    config_key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        validate(self)

    def key(self, name: str) -> str:
        """The full config key of field ``name``."""
        return f"{self.config_key}.{name}" if self.config_key else name


def from_mapping(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """Build a nested config dataclass from a mapping (``None``: defaults); unknown keys are named."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    prefix = getattr(cls, "config_key", "") or cls.__name__
    if not isinstance(value, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of settings, got {value!r}")
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(str(k) for k in value if k not in valid)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid keys: {', '.join(valid)}")
    return cls(**value)


def validate(obj: Any) -> None:
    """Check (and normalise: int -> float, list -> tuple) every field of a dataclass instance."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        if f.name not in hints or not f.init:
            continue
        key = obj.key(f.name) if isinstance(obj, Validated) else f.name
        value = check_value(key, getattr(obj, f.name), hints[f.name], f.metadata.get(_RULE))
        object.__setattr__(obj, f.name, value)


def check_value(key: str, value: Any, annotation: Any, rule: Rule | None = None) -> Any:
    """``value`` converted to ``annotation``, or a ConfigError naming ``key``; then ``rule`` is applied."""
    converted = _convert(key, value, annotation)
    problem = rule.problem(converted) if rule is not None and converted is not None else None
    if problem:
        raise ConfigError(f"{key}: {problem}")
    return converted


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields; ones that cannot be resolved are left unchecked."""
    cached = cls.__dict__.get("_adaptguard_field_types")
    if cached is not None:
        return cached
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        module = sys.modules.get(klass.__module__)
        namespace = {**vars(typing), **(vars(module) if module else {}), klass.__name__: klass}
        for name, annotation in klass.__dict__.get("__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
            except Exception:  # noqa: BLE001 - a name only imported for type checking: leave it unchecked
                hints.pop(name, None)
    hints = {k: v for k, v in hints.items() if typing.get_origin(v) is not ClassVar and v is not ClassVar}
    cls._adaptguard_field_types = hints
    return hints


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _convert(key: str, value: Any, annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(key, value, args)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if annotation in _NAMES:
        return _convert_scalar(key, value, annotation)
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return _convert_sequence(key, value, origin or annotation, args)
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping (key: value), got {value!r}")
        return value
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def _convert_union(key: str, value: Any, args: tuple[Any, ...]) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    # a value that already has one of the types wins (so 1 stays an int in ``int | float``)
    for option in options:
        if isinstance(option, type) and type(value) is option:
            return value
    errors = []
    for option in options:
        try:
            return _convert(key, value, option)
        except ConfigError as err:
            errors.append(str(err).split(": ", 1)[1])
    optional = " or null" if type(None) in args else ""
    raise ConfigError(f"{key}: {' / '.join(errors)}{optional}")


def _convert_scalar(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key}: expected {_NAMES[kind]}, got {value!r}")
    return value


def _convert_sequence(key: str, value: Any, container: Any, args: tuple[Any, ...]) -> Any:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if container is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(_convert(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    item = args[0] if args else Any
    items = [_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    return tuple(items) if container is tuple else items
