"""Jobs that differ only by seed, and their headline numbers as means with intervals across seeds.

A seed changes the key, the attack's data order and every noise draw; anything else that differs makes
two jobs different experiments. :func:`aggregate` refuses to average those (naming the keys), and
:func:`group_by_config` splits a sweep into groups that may be averaged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptguard.core.errors import ConfigError
from adaptguard.metrics.stats import SeedInterval
from adaptguard.reporting.headline import headline
from adaptguard.reporting.results import RunResult

# settings that cannot change a job's numbers: never a reason to keep two seeds apart
IGNORED = frozenset({"progress", "tags", "checkpoint_every", "callbacks", "eval.cache", "device"})


class MixedConfigsError(ConfigError):
    """Jobs asked to be averaged over seeds differ in something else."""


def identity(run: RunResult) -> dict[str, Any]:
    """Every setting of ``run`` but its seed, as dotted keys (``attack.lr``). Runs recorded without their
    whole config (built in code, older results) fall back to their names and defense / attack configs."""
    info = run.run
    config = run.config.get("experiment") or {
        "model": {"name": info.model}, "dataset": {"name": info.dataset},
        "defense": run.config.get("defense") or {"name": info.defense},
        "attack": run.config.get("attack") or {"name": info.attack},
    }  # fmt: skip
    flat = _flatten(config)
    flat.update({f"{g}.name": getattr(info, g) for g in ("model", "dataset", "defense", "attack")})
    return {k: v for k, v in flat.items() if not any(k == i or k.startswith(i + ".") for i in IGNORED)}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str) if isinstance(v, list | Mapping) else v
    return out


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two identities (or that only one has)."""
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


@dataclass
class SeedGroup:
    """Jobs with one config and distinct seeds; ``stats`` holds each headline number across them."""

    runs: list[RunResult]
    identity: dict[str, Any]
    stats: dict[str, SeedInterval] = field(default_factory=dict)
    dropped: list[RunResult] = field(default_factory=list)  # repeats of a seed this group already holds

    @property
    def seeds(self) -> list[int]:
        return [r.run.seed for r in self.runs]

    @property
    def defense(self) -> str:
        return self.runs[0].run.defense

    @property
    def attack(self) -> str:
        return self.runs[0].run.attack

    headlines: list[dict[str, float]] = field(default_factory=list)  # each run's headline numbers, seed order

    def values(self, name: str) -> list[float | None]:
        """The headline number ``name`` of each seed, in seed order (None where not measured)."""
        return [h.get(name) for h in self.headlines]


def aggregate(runs: Sequence[RunResult]) -> SeedGroup:
    """Average ``runs`` across seeds; a MixedConfigsError names what else differs (or a repeated seed)."""
    if not runs:
        raise ValueError("aggregate: no runs")
    first = identity(runs[0])
    for other in runs[1:]:
        if keys := differences(first, identity(other)):
            shown = ", ".join(f"{k} ({_value(first, k)} vs {_value(identity(other), k)})" for k in keys[:4])
            more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
            raise MixedConfigsError(f"report: jobs {runs[0].run.out_dir} and {other.run.out_dir} differ in {shown}"
                                    f"{more}, not only in the seed; they are different experiments")  # fmt: skip
    seeds = [r.run.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        raise MixedConfigsError(f"report: seed {repeated[0]} appears twice among the jobs to average; "
                                "a repeat is not a new seed (drop one, or run another seed)")  # fmt: skip
    ordered = sorted(runs, key=lambda r: r.run.seed)
    group = SeedGroup(ordered, first, headlines=[headline(r) for r in ordered])
    names = dict.fromkeys(n for h in group.headlines for n in h)
    group.stats = {n: SeedInterval.of([v for v in group.values(n) if v is not None]) for n in names}
    return group


def _value(ident: Mapping[str, Any], key: str) -> str:
    return str(ident.get(key, "<unset>"))


def group_by_config(runs: Iterable[RunResult]) -> list[SeedGroup]:
    """Finished jobs in groups that differ only by seed, in first-seen order. A seed seen twice in one group
    (the same sweep reported twice, a rerun) keeps the newest job; the others are listed in ``dropped``."""
    buckets: dict[str, list[RunResult]] = {}
    for run in runs:
        buckets.setdefault(json.dumps(identity(run), sort_keys=True, default=str), []).append(run)
    groups = []
    for members in buckets.values():
        newest: dict[int, RunResult] = {}
        for r in sorted(members, key=lambda r: r.run.finished):
            newest[r.run.seed] = r
        group = aggregate(list(newest.values()))
        group.dropped = [r for r in members if newest[r.run.seed] is not r]
        groups.append(group)
    return groups


def varying_keys(groups: Sequence[SeedGroup]) -> list[str]:
    """Settings besides the defense and attack names whose value differs between groups: what a table must
    show to tell its rows apart (``defense.rho`` counts when two groups of one defense differ in it)."""
    keys = set().union(*(g.identity for g in groups)) - {"defense.name", "attack.name"} if groups else set()
    out = []
    for key in sorted(keys):
        if key.startswith(("defense.", "attack.")):
            if _varies_within_option(groups, key):
                out.append(key)
        elif len({str(g.identity.get(key, "<unset>")) for g in groups}) > 1:
            out.append(key)
    return out


def _varies_within_option(groups: Sequence[SeedGroup], key: str) -> bool:
    """``defense.rho`` varies if two groups of one defense differ in it (not because another defense lacks it)."""
    section = "defense" if key.startswith("defense.") else "attack" if key.startswith("attack.") else None
    if section is None:
        return False
    by_option: dict[str, set[str]] = {}
    for g in groups:
        if key in g.identity:
            by_option.setdefault(str(g.identity[f"{section}.name"]), set()).add(str(g.identity[key]))
    return any(len(v) > 1 for v in by_option.values())
