"""Several defenses on one model: protect with each in the user's order, verify every watermark among them.

A published model can carry a watermark and a freezing mask at once, or two watermarks read in different
ways. ``StackDefense`` runs its members' ``protect`` one after the other, each on the previous member's
output, and keeps every member's key in one key. What order means is what it does: a later member
trains the model the earlier ones left (its own training is the owner's, not bound by an earlier
member's freezing mask) and may weaken an earlier watermark; an earlier member's mask binds every
fine-tuning after publication. docs/defenses/stack.md.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from adaptguard.core.config import setting
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.redact import redact
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.data.distortions import ImageTransform
from adaptguard.defenses.base import Defense
from adaptguard.metrics.stats import decision_rule
from adaptguard.models.bundle import DiffusionModel

SEED_STRIDE = 1_009  # member i protects with seed + i * SEED_STRIDE: independent keys, member 0 as if alone


@dataclass(repr=False)
class StackKey(SecretKey):
    keys: list[dict[str, Any] | None]  # each member's key fields, in member order (None: a member without a key)


def key_fields(key: SecretKey | None) -> dict[str, Any] | None:
    return None if key is None else {f.name: getattr(key, f.name) for f in fields(key)}  # type: ignore[arg-type]


def build_member(spec: Defense | Mapping[str, Any], index: int) -> Defense:
    """A member from an instance or a mapping with ``_target_`` (what ``describe`` writes and owner keys keep)."""
    if isinstance(spec, Defense):
        return spec
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ConfigError(f"defense.members[{index}]: expected a defense config with _target_ (or a defense), got "
                          f"{spec!r:.80}; on the command line name it: defense.members=[sleepermark,freezeasguard]")  # fmt: skip
    module, _, name = str(spec["_target_"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"defense.members[{index}]._target_: no class {spec['_target_']}") from None
    return cls(**{k: v for k, v in spec.items() if k != "_target_"})


@dataclass
class StackDefense(Defense):
    members: list[Any] = setting(
        default_factory=list,
        doc="the defenses, protected in this order: config names on the command line "
        "(`defense.members=[sleepermark,freezeasguard]`; a mapping `{defense: sleepermark, steps: 100}` overrides "
        "keys), defense objects in Python",
    )
    name: str = setting("stack", doc="label in results and logs")
    key_type: ClassVar[type[SecretKey]] = StackKey
    report_options: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.members:
            raise ConfigError("defense.members: a stack needs at least one defense, e.g. [sleepermark,freezeasguard]")
        self.member_list: list[Defense] = [build_member(m, i) for i, m in enumerate(self.members)]
        names = [m.name for m in self.member_list]
        if len(set(names)) < len(names):
            raise ConfigError(f"defense.members: two members are both named {sorted(n for n in names if names.count(n) > 1)[0]!r}; "
                              "give one another defense.name so results can tell them apart")  # fmt: skip
        kinds = {m.verification for m in self.member_list}
        self.verification = "images" if "images" in kinds else "weights" if "weights" in kinds else "none"
        self.modifies_weights = any(m.modifies_weights for m in self.member_list)

    @property
    def watermarks(self) -> list[tuple[int, Defense]]:
        return [(i, m) for i, m in enumerate(self.member_list) if m.verification != "none"]

    def code_parts(self) -> tuple[Any, ...]:
        return (self, *self.member_list)  # members are imported by name: their modules are not in the stack's

    def key_drawn_from_seed(self) -> bool:
        return any(m.key_drawn_from_seed() for m in self.member_list)

    def member_keys(self, key: SecretKey | None) -> list[SecretKey | None]:
        assert isinstance(key, StackKey)
        return [m.key_type(**k) if k is not None and m.key_type else None for m, k in zip(self.member_list, key.keys,
                                                                                           strict=True)]  # fmt: skip

    def member_context(self, ctx: RunContext, i: int) -> RunContext:
        checkpoints = ctx.checkpoint_dir / f"member{i}" if ctx.checkpoint_dir is not None else None
        return dataclasses.replace(ctx, seed=ctx.seed + i * SEED_STRIDE, checkpoint_dir=checkpoints)

    # ------------------------------------------------------------------ protect
    def check_data(self, data: CaptionedImageDataModule) -> None:
        for m in self.member_list:
            m.check_data(data)

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        keys, info, current = [], {}, model
        for i, member in enumerate(self.member_list):
            done = member.protect(current, data, self.member_context(ctx, i))
            keys.append(key_fields(done.key))
            info[member.name] = done.info or {}
            current = done.model
        return Protected(current, StackKey(keys), {"members": info, "order": [m.name for m in self.member_list]})

    def constraint(self, key: SecretKey | None) -> FineTuneConstraint | None:
        frozen: set[str] = set()
        for member, k in zip(self.member_list, self.member_keys(key), strict=True):
            if (c := member.constraint(k)) is not None:
                frozen |= c.frozen
        return FineTuneConstraint(frozenset(frozen)) if frozen else None

    def summary(self, protected: Protected) -> dict[str, Any]:
        """Every member's headline facts (a name two members report is prefixed with the member's name)."""
        out: dict[str, Any] = {}
        infos = (protected.info or {}).get("members", {})
        for member, k in zip(self.member_list, self.member_keys(protected.key), strict=True):
            facts = member.summary(Protected(protected.model, k, infos.get(member.name)))
            out |= {(f"{member.name}.{n}" if n in out else n): v for n, v in facts.items()}
        return out

    def describe(self) -> dict[str, Any]:
        members = [
            {"_target_": f"{type(m).__module__}.{type(m).__qualname__}", **m.describe()} for m in self.member_list
        ]
        return {"name": self.name, "members": members}

    def public_config(self) -> dict[str, Any]:
        return redact(self.describe())  # every defense's secret field names, at any depth

    # ------------------------------------------------------------------ verify
    def random_key(self, like: SecretKey, seed: int) -> StackKey:
        """Every watermark member's random key (members without verification keep theirs)."""
        keys = self.member_keys(like)
        fresh = [m.random_key(k, seed + i * SEED_STRIDE) if m.verification != "none" and k is not None else k
                 for i, (m, k) in enumerate(zip(self.member_list, keys, strict=True))]  # fmt: skip
        return StackKey([key_fields(k) for k in fresh])

    def verify(self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext) -> Verification | None:
        return self.verify_with(model, key, ctx, ())[0]

    def verify_with(
        self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext, transforms: Sequence[ImageTransform]
    ) -> tuple[Verification | None, dict[str, Verification]]:
        if not self.watermarks:
            return None, {}
        keys = self.member_keys(key)
        plain: dict[str, Verification] = {}
        attacked: dict[str, dict[str, Verification]] = {}
        for i, member in self.watermarks:
            v, after = member.verify_with(model, keys[i], self.member_context(ctx, i), transforms)
            assert v is not None
            plain[member.name] = v
            for label, w in after.items():
                attacked.setdefault(label, {})[member.name] = w
        return combine(plain), {label: combine(vs) for label, vs in attacked.items()}

    def decision_rule(self, verified: Verification) -> dict[str, Any]:
        return {
            "statistic": verified.statistic,
            "test": verified.details.get("test"),
            "model_fpr": verified.details.get("model_fpr"),
            "members": {i["name"]: i["rule"] for i in verified.details.get("members", [])},
            "rule": "detected when any watermark member is detected by its own rule; the stack's false-positive "
            "rate is at most the sum of the members' (union bound); rate and interval are the member's with the "
            "smallest p-value, whose p-value is multiplied by the number of members (Bonferroni)",
        }


def combine(verifications: Mapping[str, Verification]) -> Verification:
    """One verdict for the stack from each watermark member's: any member detected; headline numbers from the
    member with the smallest p-value; every member's rate, decision and p-value as ``<member>.<figure>``."""
    n = len(verifications)
    name, best = min(verifications.items(), key=lambda kv: kv[1].p_value)
    figures: dict[str, float] = {}
    for member, v in verifications.items():
        figures |= {f"{member}.rate": v.rate, f"{member}.detected": float(v.detected), f"{member}.p_value": v.p_value}
        figures |= {f"{member}.{k}": x for k, x in v.figures.items()}
    model_fprs = [v.details.get("model_fpr") for v in verifications.values()]
    details = {
        "test": "any member (union bound)",
        "headline": name,
        "model_fpr": sum(model_fprs) if all(f is not None for f in model_fprs) else None,
        "members": [{"name": m, "rule": decision_rule(v), **v.summary()} for m, v in verifications.items()],
    }
    return dataclasses.replace(
        best,
        detected=any(v.detected for v in verifications.values()),
        p_value=min(1.0, best.p_value * n),
        statistic=f"{name}: {best.statistic}" if n > 1 else best.statistic,
        figures=figures,
        details=details,
    )
