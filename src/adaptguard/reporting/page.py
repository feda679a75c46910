"""The results page ``adaptguard report <sweeps> --out docs/results`` writes: markdown, CSV and PNGs.

Every number is a mean across seeds with its 95 % t interval and the number of seeds; each seed's own
decision and Clopper-Pearson interval stay beside it, so the reader sees both the key-to-key spread and each
key's sampling error. The protected models come first, each counted once (numbers before any attack); then a
section per comparison (reporting.comparisons) with what the attacks left. Sections appear when the sweeps
measured what they show; which options a settings row lists and which defense is the unconstrained reference
come from the classes' declarations recorded in results.json (reporting.declared), never from names here.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from adaptguard.metrics.stats import SeedInterval
from adaptguard.reporting import figures
from adaptguard.reporting.comparisons import UNSET, Comparison, shared, split
from adaptguard.reporting.declared import declared
from adaptguard.reporting.headline import headline, steps_to_removal
from adaptguard.reporting.protected import ProtectedRow, protected_rows, warnings
from adaptguard.reporting.results import RunResult, VerificationReport
from adaptguard.reporting.seeds import SeedGroup, group_by_config, identity
from adaptguard.reporting.sweep import collect, failed_table
from adaptguard.reporting.table import label


@dataclass
class Page:
    markdown: Path
    files: list[Path]


def estimate(s: SeedInterval | None, digits: int = 3) -> str:
    """``0.844 ± 0.071`` (the 95 % half-width across seeds); one seed: just the value."""
    if s is None or s.n == 0 or math.isnan(s.mean):
        return "-"
    if s.low is None or s.high is None:
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {(s.high - s.low) / 2:.{digits}f}"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], keep: int = 2) -> str:
    """A markdown table without the columns that are ``-`` in every row (past the first ``keep``)."""
    cols = [i for i in range(len(head)) if i < keep or any(r[i] != "-" for r in rows)]
    cell = [[str(x).replace("|", "\\|") for x in r] for r in [head, *rows]]
    lines = ["| " + " | ".join(r[i] for i in cols) + " |" for r in cell]
    return "\n".join([lines[0], "|" + "---|" * len(cols), *lines[1:]])


def decision(seed: int, v: VerificationReport | None) -> str | None:
    """``0: yes 0.78 [0.66, 0.87]``: a seed's decision (declared detected or not), rate and Clopper-Pearson."""
    if v is None:
        return None
    ci = f" [{v.ci[0]:.2f}, {v.ci[1]:.2f}]" if v.ci else ""
    return f"{seed}: {'yes' if v.detected else 'no'} {v.rate:.2f}{ci}"


def decisions(cells: Sequence[str | None]) -> str:
    return "; ".join(c for c in cells if c) or "-"


def detected(values: Sequence[float | None]) -> str:
    """How many seeds were declared detected, of those verified (``2/3``)."""
    known = [v for v in values if v is not None]
    return f"{sum(v > 0.5 for v in known)}/{len(known)}" if known else "-"


def fprs(names: Sequence[str], when: str) -> list[str]:
    """The FPRs TPR was measured at (``verify/tpr_<when>@fpr<f>``), largest first."""
    found = {m.group(1) for n in names if (m := re.fullmatch(rf"verify/tpr_{when}@fpr([^/]+)", n))}
    return sorted(found, key=lambda f: -float(f))


SEED_COLUMN = "per seed: detected, rate [CP 95 %]"


def protected_table(rows: Sequence[ProtectedRow]) -> str:
    """A row per protected model setting: its numbers before any attack, each model counted once."""
    names = list(dict.fromkeys(n for r in rows for n in r.stats))
    tprs = fprs(names, "before")
    facts = [n for n in names if n.startswith("defense/")]
    head = ["protected model", "seeds", "in comparisons", "rate before", "detected before", SEED_COLUMN,
            *(f"TPR@FPR {f}" for f in tprs), "never-watermarked", "FID base", "FID protected", "FID Δ (protection)",
            "KID Δ (protection)", "fidelity base", "fidelity protected", "fidelity Δ", "fidelity ceiling",
            *(label(n[len("defense/") :]) for n in facts)]  # fmt: skip
    out = []
    for r in rows:

        def est(name: str, digits: int = 3, row: ProtectedRow = r) -> str:
            return estimate(row.stats.get(name), digits) + (" ⚠" if row.conflicting(name) else "")

        out.append([r.label, " ".join(map(str, r.seeds)), ", ".join(map(str, r.comparisons)), est("verify/rate_before"),
                    detected([m.values.get("verify/detected_before") for m in r.models]),
                    decisions([decision(m.seed, m.verification) for m in r.models]),
                    *(est(f"verify/tpr_before@fpr{f}") for f in tprs), est("verify/rate_never_watermarked"),
                    est("quality/fid_base", 1), est("quality/fid_protected", 1), est("quality/fid_delta", 1),
                    est("quality/kid_delta"), est("quality/fidelity_base"), est("quality/fidelity_protected"),
                    est("quality/fidelity_delta"), est("quality/fidelity_real"), *(est(n, 2) for n in facts)])  # fmt: skip
    return table(head, out, keep=3)


def _domain_fid(group: SeedGroup, metric: str = "fid") -> SeedInterval | None:
    """``quality/<metric>_attacked/<domain>``: the attacked model's number on the attack's domain."""
    name = next((k for k in group.stats if k.startswith(f"quality/{metric}_attacked/")), None)
    return group.stats.get(name) if name else None


CONTROLS = {"triggered_rate": "triggered rate after", "untriggered_rate": "untriggered rate after"}


def attack_table(c: Comparison) -> str:
    """A row per defense × attack of one comparison: what the attack left, mean ± 95 % interval across seeds."""
    tprs = fprs([n for g in c.groups for n in g.stats], "after")
    # a paired decision's controls beside its rate: the same trials' unpaired rate and their untriggered rate
    controls = [k for k in CONTROLS if any(f"verify/{k}_after" in g.stats for g in c.groups)]
    head = ["defense × attack", "seeds", "rate after", *(CONTROLS[k] for k in controls), "detected after",
            SEED_COLUMN, *(f"TPR@FPR {f}" for f in tprs), "steps to removal (per seed)", "FID attacked",
            "attack-domain FID",
            "attack's FID Δ (domain)",
            "fidelity attacked", "attack-domain fidelity", "attack's fidelity Δ (domain)"]  # fmt: skip
    rows = []
    for g, name in zip(c.groups, c.labels, strict=True):
        s = g.stats
        after = [decision(r.run.seed, a.model.verification) if (a := next(iter(r.attacks.values()), None)) else None
                 for r in g.runs]  # fmt: skip
        rows.append([name, " ".join(map(str, g.seeds)), estimate(s.get("verify/rate_after")),
                     *(estimate(s.get(f"verify/{k}_after")) for k in controls),
                     detected(g.values("verify/detected_after")), decisions(after),
                     *(estimate(s.get(f"verify/tpr_after@fpr{f}")) for f in tprs), removal(g.runs),
                     estimate(s.get("quality/fid_attacked"), 1), estimate(_domain_fid(g), 1),
                     estimate(_domain_fid(g, "fid_delta"), 1), estimate(s.get("quality/fidelity_attacked")),
                     estimate(_domain_fid(g, "fidelity")), estimate(_domain_fid(g, "fidelity_delta"))])  # fmt: skip
    return table(head, rows)


def removal(runs: Sequence[RunResult]) -> str:
    """``0: 100; 1: > 1000``: each seed's steps to removal along its attack curve (``-`` without curves)."""
    cells = [f"{r.run.seed}: {step}" for r in runs for step in steps_to_removal(r).values()]
    return "; ".join(cells) or "-"


def is_reference(group: SeedGroup) -> bool:
    """Its defense declares itself the unconstrained reference (``Defense.report_reference``)."""
    return declared(group.runs[0], "defense").reference


def _reference(group: SeedGroup, groups: Sequence[SeedGroup]) -> SeedGroup | None:
    """The reference defense's group with every other setting equal: what constrained fine-tuning is measured against."""

    def rest(g: SeedGroup) -> dict[str, object]:
        return {k: v for k, v in g.identity.items() if not k.startswith("defense.")}

    return next((o for o in groups if is_reference(o) and o is not group and rest(o) == rest(group)), None)


def fid_change(group: SeedGroup, reference: SeedGroup, domain: str) -> SeedInterval:
    """Per seed, FID after the attack on ``domain`` relative to the unconstrained attack with the same seed (%)."""
    key = f"quality/fid_attacked/{domain}"
    ref = dict(zip(reference.seeds, reference.values(key), strict=True))
    changes = []
    for seed, mine in zip(group.seeds, group.values(key), strict=True):
        theirs = ref.get(seed)
        if mine is not None and theirs:
            changes.append(100 * (mine / theirs - 1))
    return SeedInterval.of(changes)


def reference_table(c: Comparison) -> tuple[list[str], str] | None:
    """FID change on each attack domain the runs have, against the reference defense with the same attack
    (eval.adaptation runs: did the constraint hold back one domain's adaptation more than another's?).
    Returns the references' names and the table."""
    prefix = "quality/fid_attacked/"
    rows, refs = [], []
    domains = list(dict.fromkeys(k[len(prefix) :] for g in c.groups for k in g.stats if k.startswith(prefix)))
    for g, name in zip(c.groups, c.labels, strict=True):
        ref = None if is_reference(g) else _reference(g, c.groups)
        if ref is None or not any(f"{prefix}{d}" in g.stats for d in domains):
            continue
        refs.append(ref.defense)
        rows.append([name, " ".join(map(str, g.seeds)), *(estimate(fid_change(g, ref, d), 1) for d in domains),
                     *(estimate(g.stats.get(f"{prefix}{d}"), 1) for d in domains)])  # fmt: skip
    if not rows:
        return None
    head = ["defense × attack", "seeds", *(f"{d} FID change %" for d in domains), *(f"{d} FID" for d in domains)]
    return list(dict.fromkeys(refs)), table(head, rows)


SHARED_SETTINGS = ("model.name", "model.resolution", "dataset.name", "model.sampler.name", "model.sampler.steps",
                   "eval.fid.num_samples", "eval.fid.kid_subset_size", "eval.image_attacks", "eval.at_steps")  # fmt: skip


def option_rows(c: Comparison) -> dict[str, str]:
    """``defense=<name>`` / ``attack=<name>`` -> the option keys its class declares for pages
    (``report_options``), with every value the comparison ran."""
    out = {}
    for section in ("defense", "attack"):
        for name in dict.fromkeys(str(g.identity.get(f"{section}.name")) for g in c.groups):
            members = [g for g in c.groups if str(g.identity.get(f"{section}.name")) == name]
            shown = []
            for option in declared(members[0].runs[0], section).options:
                values = list(dict.fromkeys(str(g.identity[f"{section}.{option}"]) for g in members
                                            if f"{section}.{option}" in g.identity))  # fmt: skip
                if values:
                    shown.append(f"{option}={' / '.join(values)}")
            out[f"{section}={name}"] = ", ".join(shown) or "-"
    return out


def _common_options(comparisons: Sequence[Comparison]) -> dict[str, str]:
    """Option rows that read the same in every comparison that has them: stated once, on top."""
    seen: dict[str, set[str]] = {}
    for c in comparisons:
        for k, v in option_rows(c).items():
            seen.setdefault(k, set()).add(v)
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}


def settings_table(comparisons: Sequence[Comparison]) -> str:
    """What every comparison shared, then each defense's and attack's declared options where they agree."""
    apart = {k for c in comparisons for k in c.settings}
    ident = comparisons[0].groups[0].identity
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | {ident[k]} |" for k in SHARED_SETTINGS if k not in apart and k in ident]
    lines += [f"| `{k}` | {v} |" for k, v in _common_options(comparisons).items()]
    return "\n".join(lines)


def comparison_settings(c: Comparison, comparisons: Sequence[Comparison]) -> str | None:
    """What sets ``c`` apart: its shared settings that other comparisons differ in, and option rows that differ."""
    common = _common_options(comparisons)
    rows = [(k, str(v)) for k, v in c.settings.items() if v != UNSET]  # settings it lacks: said by the others
    rows += [(k, v) for k, v in option_rows(c).items() if k not in common]
    if not rows:
        return None
    return "\n".join(["| setting | value |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in rows)])


def sweep_commands(folders: Sequence[Path]) -> list[str]:
    """Each sweep's command line, from the multirun.yaml Hydra leaves in its folder."""
    out = []
    for folder in folders:
        meta = Path(folder) / "multirun.yaml"
        if not meta.is_file():
            out.append(f"# {folder}: no multirun.yaml (not a Hydra sweep folder)")
            continue
        task = ((yaml.safe_load(meta.read_text()) or {}).get("hydra") or {}).get("overrides", {}).get("task") or []
        out.append("python -m experiments.run -m " + " ".join(_quote(t) for t in task))
    return out


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " []{}$*") else arg


def compute_seconds(runs: Sequence[RunResult]) -> float:
    return sum(float(v.get("wall_s", 0.0)) for r in runs for v in r.stages.values() if isinstance(v, dict))


def group_rows(comparisons: Sequence[Comparison]) -> tuple[list[str], list[list[object]]]:
    """A row per group: its label, defense, attack, seeds, comparison, then mean / low / high of every
    headline number (labels are unique within a comparison)."""
    groups = [g for c in comparisons for g in c.groups]
    metrics = list(dict.fromkeys(n for g in groups for n in g.stats))
    columns = ["group", "defense", "attack", "seeds", "comparison",
               *(f"{m} {p}" for m in metrics for p in ("mean", "low", "high"))]  # fmt: skip
    rows = []
    for c in comparisons:
        for g, name in zip(c.groups, c.labels, strict=True):
            cells = [(s.mean, s.low, s.high) if (s := g.stats.get(m)) else (None, None, None) for m in metrics]
            rows.append([name, g.defense, g.attack, " ".join(map(str, g.seeds)), c.number,
                         *(v for cell in cells for v in cell)])  # fmt: skip
    return columns, rows


def write_csv(comparisons: Sequence[Comparison], runs: Sequence[RunResult], folder: Path) -> list[Path]:
    """``summary.csv``: a row per group, mean / low / high / n per headline number; ``jobs.csv``: a row per job,
    with its comparison and the protected model it evaluated."""
    folder.mkdir(parents=True, exist_ok=True)
    summary, jobs = folder / "summary.csv", folder / "jobs.csv"
    columns, rows = group_rows(comparisons)
    with summary.open("w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])
    number = {json.dumps(shared(c.groups[0].identity), sort_keys=True, default=str): c.number for c in comparisons}
    job_metrics = list(dict.fromkeys(n for r in runs for n in headline(r)))
    with jobs.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "defense", "attack", "seed", "comparison", "protected model", *job_metrics])
        for r in runs:
            h = headline(r)
            c = number.get(json.dumps(shared(identity(r)), sort_keys=True, default=str))
            w.writerow([r.run.out_dir, r.run.defense, r.run.attack, r.run.seed, c, r.run.protection,
                        *(h.get(m) for m in job_metrics)])  # fmt: skip
    return [summary, jobs]


def write_page(folders: Sequence[Path], out: Path, intro: str | None = None, command: str | None = None) -> Page:
    """Write ``<out>.md`` and, in ``<out>/``, the CSVs and PNGs it links (``out`` may end in .md); ``command``:
    the report's own command line for the page's top (default: the folders and ``--out``)."""
    out = Path(out)
    markdown, assets = out.with_suffix(".md"), out.with_suffix("")
    runs = [r for f in folders for r in collect(f)]
    failed = [r for f in folders for r in collect(f, failed=True)]
    if not runs and not failed:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, folders))}")
    comparisons = split(group_by_config(runs), folders)
    files = write_csv(comparisons, runs, assets)
    rel = assets.name
    lines = ["# Results\n", *(([intro.strip(), ""]) if intro else []), _provenance(folders, runs, failed, out, command),
             ""]  # fmt: skip
    models = protected_rows(comparisons)
    figs = dict(_figures(comparisons, models, assets))
    files += list(figs.values())

    def figure(title: str) -> list[str]:
        return [f"## {title}\n\n![{title}]({rel}/{figs[title].name})\n"] if title in figs else []

    if comparisons:
        lines += ["## Settings", "", "Shared by every comparison below (each states what sets it apart):", "",
                  settings_table(comparisons), "", "## Protected models, before any attack", "",
                  "One row per protection setting; each protected model (defense, key, seed) counts once, whichever "
                  "attacks and sweeps evaluated it. Mean ± 95 % interval across seeds; per seed: declared "
                  "detected (yes / no), rate and its Clopper-Pearson interval.", "", protected_table(models), ""]  # fmt: skip
        lines += [*(f"{w}\n" for w in warnings(models)), *figure(IMAGE_ATTACKS)]
    for c in comparisons:
        lines += [f"## Comparison {c.title}", ""]
        if apart := comparison_settings(c, comparisons):
            lines += [apart, ""]
        lines += ["After the attack, mean ± 95 % interval across seeds:", "", attack_table(c), ""]
        if found := reference_table(c):
            refs, tab = found
            lines += [f"FID change on each attack domain against the unconstrained reference ({', '.join(refs)}), "
                      "per seed then averaged:", "", tab, ""]  # fmt: skip
    lines += [*figure(ROBUSTNESS), *figure(CURVES)]
    dropped = [r for c in comparisons for g in c.groups for r in g.dropped]
    if dropped:
        lines += [f"Repeated seeds, older job left out: {', '.join(r.run.out_dir for r in dropped)}", ""]
    if failed:
        lines += [f"## Jobs that did not finish ({len(failed)})", "", failed_table(failed), ""]
    lines += [f"CSV: [{rel}/summary.csv]({rel}/summary.csv) (a row per group), [{rel}/jobs.csv]({rel}/jobs.csv) "
              "(a row per job; names in [wandb.md](wandb.md))."]  # fmt: skip
    markdown.write_text("\n".join(lines) + "\n")
    return Page(markdown, files)


def _provenance(folders: Sequence[Path], runs: Sequence[RunResult], failed: Sequence[RunResult], out: Path,
                command: str | None) -> str:  # fmt: skip
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    hours = compute_seconds([*runs, *failed]) / 3600
    commands = "\n".join(sweep_commands(folders))
    report = command or f"python -m experiments.report {' '.join(map(str, folders))} --out {out.with_suffix('')}"
    return (f"Generated {when} by `adaptguard report` from {len(runs)} finished jobs"
            f"{f' and {len(failed)} that did not finish' if failed else ''}, {hours:.2f} h of stage time "
            f"(protections and evaluations read from the cache cost ~0). The sweeps and this page:\n\n"
            f"```\n{commands}\n{report}\n```")  # fmt: skip


IMAGE_ATTACKS = "Image attacks on the protected models' images"
ROBUSTNESS = "Robustness vs quality cost"
CURVES = "Verification vs attack steps"


def _figures(comparisons: Sequence[Comparison], models: Sequence[ProtectedRow], assets: Path) -> list[tuple[str, Path]]:
    made = [
        (ROBUSTNESS, figures.robustness_vs_cost(comparisons, assets / "robustness_vs_cost.png")),
        (CURVES, figures.curves(comparisons, assets / "curves.png")),
        # a row per protected model setting: the images do not depend on the attack that followed
        (IMAGE_ATTACKS, figures.image_attack_heatmap([(m.label, m.stats) for m in models], assets / "image_attacks.png")),
    ]  # fmt: skip
    return [(title, path) for title, path in made if path is not None]
