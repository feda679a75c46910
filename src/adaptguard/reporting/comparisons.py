"""Which seed groups a results page compares with which, and how it names their rows.

A comparison is one table (and one figure panel): groups whose settings outside ``defense.*`` and
``attack.*`` are equal, so the defenses, attacks and their options are all that differ in it. Merged sweeps
that differ in a shared setting (``eval.image_attacks``, a dataset split, ...) become separate comparisons,
each stating what sets it apart once. A row is then ``defense × attack`` plus only the options that vary
inside its comparison (``rho=0.2``), at most :data:`MAX_LABEL` characters: a label that carried every
differing key grew past a thousand characters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptguard.reporting.seeds import SeedGroup

MAX_LABEL = 60
UNSET = "<unset>"
SECTIONS = ("defense.", "attack.")


def clip(text: str, limit: int = MAX_LABEL) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut (the last resort of every label)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shared(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The settings every row of a comparison shares: all but the defense's and attack's."""
    return {k: v for k, v in identity.items() if not k.startswith(SECTIONS)}


@dataclass
class Comparison:
    """Groups compared in one table; ``settings``: the shared settings that set it apart from the others."""

    number: int
    groups: list[SeedGroup]
    labels: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    folders: list[str] = field(default_factory=list)  # the sweep folders its jobs came from

    @property
    def title(self) -> str:
        return clip(f"{self.number}. " + (" + ".join(self.folders) or "jobs"))


def split(groups: Sequence[SeedGroup], folders: Sequence[Path] = ()) -> list[Comparison]:
    """``groups`` as comparisons, in first-seen order, each with its row labels and distinguishing settings."""
    buckets: dict[str, list[SeedGroup]] = {}
    for g in groups:
        buckets.setdefault(json.dumps(shared(g.identity), sort_keys=True, default=str), []).append(g)
    comparisons = [Comparison(i + 1, members) for i, members in enumerate(buckets.values())]
    apart = differing([shared(c.groups[0].identity) for c in comparisons])
    for c in comparisons:
        c.labels = row_labels(c.groups)
        c.settings = {k: c.groups[0].identity.get(k, UNSET) for k in apart}
        c.folders = list(dict.fromkeys(_folder(r.run.out_dir, folders) for g in c.groups for r in g.runs))
    return comparisons


def labelled(groups: Sequence[SeedGroup]) -> list[str]:
    """Each group's row label (unique within its comparison), in ``groups``' order."""
    by_id = {id(g): lab for c in split(groups) for g, lab in zip(c.groups, c.labels, strict=True)}
    return [by_id[id(g)] for g in groups]


def differing(identities: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys whose value is not the same in all ``identities`` (one that some lack counts)."""
    keys = sorted(set().union(*identities)) if identities else []
    return [k for k in keys if len({json.dumps(i.get(k, UNSET), default=str) for i in identities}) > 1]


def _folder(out_dir: str, folders: Sequence[Path]) -> str:
    job = Path(out_dir).resolve()
    for f in folders:
        if job.is_relative_to(Path(f).resolve()):
            return Path(f).resolve().name
    return job.parent.name


def row_labels(groups: Sequence[SeedGroup]) -> list[str]:
    """``defense × attack`` plus the options that tell groups of one defense (or attack) apart."""
    return unique_labels([f"{g.defense} × {g.attack}" for g in groups], option_extras(groups))


def option_extras(groups: Sequence[SeedGroup]) -> list[dict[str, str]]:
    """Per group, the ``defense.*`` / ``attack.*`` settings whose value differs among the groups of its
    defense (or attack): what its label must add. A key one group lacks counts as a difference."""
    by_option: dict[tuple[str, str], list[SeedGroup]] = {}
    for g in groups:
        for section, name in (("defense.", g.defense), ("attack.", g.attack)):
            by_option.setdefault((section, name), []).append(g)
    extras: dict[int, dict[str, str]] = {id(g): {} for g in groups}
    for (section, _), members in by_option.items():
        for key in differing([{k: v for k, v in m.identity.items() if k.startswith(section)} for m in members]):
            for m in members:
                extras[id(m)][key] = short_value(m.identity.get(key, UNSET))
    return [extras[id(g)] for g in groups]


def short_value(v: Any) -> str:
    return clip(v if isinstance(v, str) else json.dumps(v, default=str), 24)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key as its shortest ending that no other key in ``keys`` shares: ``defense.rho`` -> ``rho``,
    but ``defense.steps`` and ``attack.steps`` both stay whole."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            end = ".".join(parts[-n:])
            if not any(o != key and (o == end or o.endswith("." + end)) for o in keys):
                break
        out[key] = end
    return out


def unique_labels(names: Sequence[str], extras: Sequence[Mapping[str, str]]) -> list[str]:
    """``name (k=v, ...)`` with short keys, clipped to :data:`MAX_LABEL`; repeats (only clipping makes them)
    get ``#2``, ``#3``."""
    short = short_keys(list(dict.fromkeys(k for e in extras for k in e)))
    raw = [clip(n + (f" ({', '.join(f'{short[k]}={v}' for k, v in e.items())})" if e else ""))
           for n, e in zip(names, extras, strict=True)]  # fmt: skip
    seen: dict[str, int] = {}
    out = []
    for lab in raw:
        seen[lab] = seen.get(lab, 0) + 1
        if raw.count(lab) > 1 and seen[lab] > 1:
            tag = f" #{seen[lab]}"
            lab = clip(lab, MAX_LABEL - len(tag)) + tag
        out.append(lab)
    return out
