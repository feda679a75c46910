"""The protected models behind a report's jobs: each one's before-attack numbers once, and where jobs disagree.

Every attack of one defense and seed starts from one protected model, and other sweeps sharing the cache
start from it too; ``RunInfo.protection`` identifies it. Its numbers before the attack (rate, FID protected,
...) are one measurement, so the page shows them once per model, and names the jobs when two of them
recorded different ones instead of showing both. Files written before ``protection`` identify a model by
its settings outside ``attack.*`` and ``eval.*`` and its seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptguard.metrics.stats import SeedInterval
from adaptguard.reporting.comparisons import Comparison, differing, short_value, unique_labels
from adaptguard.reporting.headline import before_attack
from adaptguard.reporting.results import RunResult, VerificationReport
from adaptguard.reporting.seeds import differences, identity


def model_key(run: RunResult) -> str:
    """The protected model ``run`` evaluated: its protection id, or (older files) what determines it."""
    if run.run.protection:
        return run.run.protection
    settings = {k: v for k, v in identity(run).items() if not k.startswith(("attack.", "eval."))}
    return "settings:" + json.dumps({**settings, "seed": run.run.seed}, sort_keys=True, default=str)


@dataclass
class ProtectedModel:
    """One protected model, every job that evaluated it, and its before-attack numbers (the first job's)."""

    key: str
    seed: int
    jobs: list[RunResult] = field(default_factory=list)
    measured: dict[str, list[tuple[RunResult, float]]] = field(default_factory=dict)  # name -> each job's value

    def add(self, run: RunResult, numbers: dict[str, float]) -> None:
        self.jobs.append(run)
        for name, value in numbers.items():
            if before_attack(name):
                self.measured.setdefault(name, []).append((run, value))

    @property
    def values(self) -> dict[str, float]:
        """The first job's value of every before-attack number."""
        return {name: pairs[0][1] for name, pairs in self.measured.items()}

    def disagreements(self) -> dict[str, list[tuple[RunResult, float]]]:
        """Names two jobs recorded different values for (beyond float noise), with every job's value."""
        return {n: pairs for n, pairs in self.measured.items() if not all(_same(pairs[0][1], v) for _, v in pairs)}

    @property
    def verification(self) -> VerificationReport | None:
        return next((j.protected.verification for j in self.jobs if j.protected.verification), None)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@dataclass
class ProtectedRow:
    """Protected models of one protection setting, one per seed: a row of the page's protected-models table."""

    defense: str
    models: list[ProtectedModel]
    identity: dict[str, Any]
    comparisons: list[int]
    label: str = ""
    stats: dict[str, SeedInterval] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [m.seed for m in self.models]

    def conflicting(self, name: str) -> bool:
        return any(name in m.disagreements() for m in self.models)


def protected_rows(comparisons: Sequence[Comparison]) -> list[ProtectedRow]:
    """A row per protection setting: groups that share a protected model share a row (across comparisons),
    unless that would put two models of one seed in it (then a row per group's set of models)."""
    models: dict[str, ProtectedModel] = {}
    members: list[tuple[int, Any, list[str]]] = []  # (comparison, group, its model keys)
    for c in comparisons:
        for g in c.groups:
            keys = []
            for run, numbers in zip(g.runs, g.headlines, strict=True):
                key = model_key(run)
                models.setdefault(key, ProtectedModel(key, run.run.seed)).add(run, numbers)
                keys.append(key)
            members.append((c.number, g, keys))
    rows = []
    for component in _components(members):
        keys = list(dict.fromkeys(k for _, _, ks in component for k in ks))
        seeds = [models[k].seed for k in keys]
        parts = [component] if len(set(seeds)) == len(seeds) else _by_models(component)
        for part in parts:
            part_keys = sorted(dict.fromkeys(k for _, _, ks in part for k in ks), key=lambda k: models[k].seed)
            _, first, _ = part[0]
            ident = {k: v for k, v in first.identity.items() if not k.startswith("attack.")}
            rows.append(ProtectedRow(first.defense, [models[k] for k in part_keys], ident,
                                     sorted({n for n, _, _ in part})))  # fmt: skip
    for row in rows:
        names = dict.fromkeys(n for m in row.models for n in m.values)
        row.stats = {n: SeedInterval.of([m.values[n] for m in row.models if n in m.values]) for n in names}
    _label(rows)
    return rows


def _components(members: list[tuple[int, Any, list[str]]]) -> list[list[tuple[int, Any, list[str]]]]:
    """Groups joined when they share a protected model (union-find), in first-seen order."""
    parent = list(range(len(members)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, (_, _, keys) in enumerate(members):
        for k in keys:
            if k in owner:
                parent[root(i)] = root(owner[k])
            else:
                owner[k] = i
    out: dict[int, list[tuple[int, Any, list[str]]]] = {}
    for i, m in enumerate(members):
        out.setdefault(root(i), []).append(m)
    return list(out.values())


def _by_models(component: list[tuple[int, Any, list[str]]]) -> list[list[tuple[int, Any, list[str]]]]:
    out: dict[tuple[str, ...], list[tuple[int, Any, list[str]]]] = {}
    for m in component:
        out.setdefault(tuple(m[2]), []).append(m)
    return list(out.values())


def _label(rows: list[ProtectedRow]) -> None:
    """``defense`` plus the settings that differ among rows of that defense (``rho=0.2``)."""
    by_defense: dict[str, list[ProtectedRow]] = {}
    for r in rows:
        by_defense.setdefault(r.defense, []).append(r)
    extras: dict[int, dict[str, str]] = {id(r): {} for r in rows}
    for same in by_defense.values():
        idents = [{k: v for k, v in r.identity.items() if not k.startswith("eval.")} for r in same]
        keys = differing(idents)
        for r, ident in zip(same, idents, strict=True):
            extras[id(r)] = {k: short_value(ident.get(k, "<unset>")) for k in keys}
    for r, lab in zip(rows, unique_labels([r.defense for r in rows], [extras[id(r)] for r in rows]), strict=True):
        r.label = lab


def warnings(rows: Sequence[ProtectedRow]) -> list[str]:
    """A line per protected model whose jobs recorded different before-attack numbers, naming the jobs."""
    out = []
    for row in rows:
        for m in row.models:
            bad = m.disagreements()
            if not bad:
                continue
            shown = "; ".join(f"`{n}` {_by_value(pairs)}" for n, pairs in list(bad.items())[:4])
            more = f"; and {len(bad) - 4} more numbers" if len(bad) > 4 else ""
            jobs = [j for j, _ in next(iter(bad.values()))]
            apart = sorted({k for j in jobs[1:] for k in differences(identity(jobs[0]), identity(j))
                            if not k.startswith("attack.")})  # fmt: skip
            why = f" (the jobs also differ in {', '.join(apart[:4])})" if apart else ""
            out.append(f"**Warning:** protected model {row.label}, seed {m.seed} ({_short_key(m.key)}): jobs "
                       f"recorded different numbers for the same model: {shown}{more}{why}. The table shows the "
                       "first job's.")  # fmt: skip
    return out


def _by_value(pairs: list[tuple[RunResult, float]]) -> str:
    """``0.094 (job a, job b) vs 0.109 (job c)``."""
    values: list[tuple[float, list[str]]] = []
    for job, v in pairs:
        same = next((jobs for w, jobs in values if _same(w, v)), None)
        if same is None:
            values.append((v, [job.run.out_dir]))
        else:
            same.append(job.run.out_dir)
    return " vs ".join(f"{v:.4g} ({', '.join(jobs)})" for v, jobs in values)


def _short_key(key: str) -> str:
    return "identified by its settings" if key.startswith("settings:") else key.rsplit(":", 1)[-1][:12]
