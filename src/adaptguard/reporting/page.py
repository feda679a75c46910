"""The results page ``adaptguard report <sweeps> --out docs/results`` writes: markdown, CSV and PNGs.

Every number is a mean across seeds with its 95 % t interval and the number of seeds; each seed's own
Clopper-Pearson interval stays beside it, so the reader sees both the key-to-key spread and each key's
sampling error. Sections appear when the sweeps measured what they show.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from adaptguard.metrics.stats import SeedInterval
from adaptguard.reporting import figures
from adaptguard.reporting.headline import headline
from adaptguard.reporting.results import RunResult
from adaptguard.reporting.seeds import SeedGroup, group_by_config, varying_keys
from adaptguard.reporting.sweep import collect, failed_table


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


def seed_rates(group: SeedGroup) -> str:
    """Each seed's rate after the attack with its own Clopper-Pearson interval."""
    cells = []
    for run in group.runs:
        attack = next(iter(run.attacks.values()), None)
        v = attack.model.verification if attack else run.protected.verification
        if v is not None:
            ci = f" [{v.ci[0]:.2f}, {v.ci[1]:.2f}]" if v.ci else ""
            cells.append(f"{run.run.seed}: {v.rate:.2f}{ci}")
    return "; ".join(cells) or "-"


def labels(groups: Sequence[SeedGroup]) -> list[str]:
    """``aiao × full`` plus the settings that tell groups apart (``defense.rho=0.2``)."""
    keys = varying_keys(groups)
    out = []
    for g in groups:
        extra = ", ".join(f"{k}={g.identity[k]}" for k in keys if k in g.identity)
        out.append(f"{g.defense} × {g.attack}" + (f" ({extra})" if extra else ""))
    return out


def _domain_fid(group: SeedGroup) -> SeedInterval | None:
    name = next((k for k in group.stats if k.startswith("quality/fid_attacked/")), None)
    return group.stats.get(name) if name else None


def watermark_table(groups: Sequence[SeedGroup], names: Sequence[str]) -> str:
    head = ["defense × attack", "seeds", "rate before", "rate after", "never-watermarked", "FID base",
            "FID protected", "FID Δ (protection)", "FID attacked", "attack-domain FID", "rate after, per seed [CP 95 %]"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, name in zip(groups, names, strict=True):
        s = g.stats
        cells = [name, str(len(g.runs)), estimate(s.get("verify/rate_before")), estimate(s.get("verify/rate_after")),
                 estimate(s.get("verify/rate_never_watermarked")), estimate(s.get("quality/fid_base"), 1),
                 estimate(s.get("quality/fid_protected"), 1), estimate(s.get("quality/fid_delta"), 1),
                 estimate(s.get("quality/fid_attacked"), 1), estimate(_domain_fid(g), 1), seed_rates(g)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _reference(group: SeedGroup, groups: Sequence[SeedGroup]) -> SeedGroup | None:
    """The unconstrained run (defense none) with every other setting equal: what freezing is measured against."""

    def rest(g: SeedGroup) -> dict[str, object]:
        return {k: v for k, v in g.identity.items() if not k.startswith("defense.")}

    return next((o for o in groups if o.defense == "none" and o is not group and rest(o) == rest(group)), None)


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


def freezing_table(groups: Sequence[SeedGroup], names: Sequence[str]) -> str | None:
    """Illegal vs legal FID change against unconstrained fine-tuning (eval.adaptation runs with those domains)."""
    rows = []
    for g, name in zip(groups, names, strict=True):
        domains = [d for d in ("illegal", "legal") if f"quality/fid_attacked/{d}" in g.stats]
        ref = _reference(g, groups)
        if len(domains) < 2 or ref is None or g.defense == "none":
            continue
        ratio = g.stats.get("defense/frozen_params_ratio")
        rows.append([name, str(len(g.runs)), estimate(ratio, 2), *(estimate(fid_change(g, ref, d), 1) for d in domains),
                     *(estimate(g.stats.get(f"quality/fid_attacked/{d}"), 1) for d in domains)])  # fmt: skip
    if not rows:
        return None
    head = ["defense × attack", "seeds", "frozen params", "illegal FID change %", "legal FID change %",
            "illegal FID", "legal FID"]  # fmt: skip
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]
    )


SHARED_SETTINGS = ("model.name", "model.resolution", "dataset.name", "model.sampler.name", "model.sampler.steps",
                   "eval.fid.num_samples", "eval.fid.kid_subset_size", "eval.image_attacks", "eval.at_steps")  # fmt: skip
OPTION_SETTINGS = ("steps", "batch_size", "lr", "probe_steps", "codec.steps", "rank", "rho", "user_steps",
                   "num_samples", "num_subpaths", "num_class_images", "ratio")  # fmt: skip


def settings_table(groups: Sequence[SeedGroup]) -> str:
    """What every job shared, then each defense's and attack's own step counts and sizes."""
    lines = ["| setting | value |", "|---|---|"]
    for key in SHARED_SETTINGS:
        values = list(dict.fromkeys(str(g.identity.get(key, "-")) for g in groups))
        lines.append(f"| `{key}` | {' / '.join(values)} |")
    for section in ("defense", "attack"):
        for option in dict.fromkeys(str(g.identity.get(f"{section}.name")) for g in groups):
            ident = next(g.identity for g in groups if str(g.identity.get(f"{section}.name")) == option)
            shown = [f"{k}={ident[f'{section}.{k}']}" for k in OPTION_SETTINGS if f"{section}.{k}" in ident]
            lines.append(f"| `{section}={option}` | {', '.join(shown) or 'no training'} |")
    return "\n".join(lines)


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


def group_rows(groups: Sequence[SeedGroup], names: Sequence[str]) -> tuple[list[str], list[list[object]]]:
    """A row per group: its label, defense, attack, seeds, then mean / low / high of every headline number."""
    metrics = list(dict.fromkeys(n for g in groups for n in g.stats))
    columns = ["group", "defense", "attack", "seeds", *(f"{m} {p}" for m in metrics for p in ("mean", "low", "high"))]
    rows = []
    for g, name in zip(groups, names, strict=True):
        cells = [(s.mean, s.low, s.high) if (s := g.stats.get(m)) else (None, None, None) for m in metrics]
        rows.append([name, g.defense, g.attack, " ".join(map(str, g.seeds)), *(v for c in cells for v in c)])
    return columns, rows


def write_csv(groups: Sequence[SeedGroup], names: Sequence[str], runs: Sequence[RunResult], folder: Path) -> list[Path]:
    """``summary.csv``: a row per group, mean / low / high / n per headline number; ``jobs.csv``: a row per job."""
    folder.mkdir(parents=True, exist_ok=True)
    summary, jobs = folder / "summary.csv", folder / "jobs.csv"
    columns, rows = group_rows(groups, names)
    with summary.open("w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])
    job_metrics = list(dict.fromkeys(n for r in runs for n in headline(r)))
    with jobs.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "defense", "attack", "seed", *job_metrics])
        for r in runs:
            h = headline(r)
            w.writerow([r.run.out_dir, r.run.defense, r.run.attack, r.run.seed, *(h.get(m) for m in job_metrics)])
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
    groups = group_by_config(runs)
    names = labels(groups)
    files = write_csv(groups, names, runs, assets)
    rel = assets.name
    lines = [
        "# Results\n",
        *(([intro.strip(), ""]) if intro else []),
        _provenance(folders, runs, failed, out, command),
        "",
    ]
    if groups:
        lines += ["## Settings", "", settings_table(groups), "", "## Verification and quality, mean ± 95 % interval "
                  "across seeds", "", watermark_table(groups, names), ""]  # fmt: skip
    figs = _figures(groups, names, assets)
    files += [p for _, p in figs]
    lines += [f"## {title}\n\n![{title}]({rel}/{p.name})\n" for title, p in figs]
    if groups and (table := freezing_table(groups, names)):
        lines += ["## Freezing: FID change against unconstrained fine-tuning, per seed then averaged", "", table, ""]
    dropped = [r for g in groups for r in g.dropped]
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


def _figures(groups: Sequence[SeedGroup], names: Sequence[str], assets: Path) -> list[tuple[str, Path]]:
    # one group per defense (the protected model does not depend on the attack), from a sweep that ran image
    # attacks: a sweep without them (the curves) must not hide the one with them
    one_per_defense: dict[str, SeedGroup] = {}
    for g in groups:
        if figures.has_image_attacks(g):
            one_per_defense.setdefault(g.defense, g)
    made = [
        ("Robustness vs quality cost", figures.robustness_vs_cost(groups, names, assets / "robustness_vs_cost.png")),
        ("Verification vs attack steps", figures.curves(groups, names, assets / "curves.png")),
        ("Image attacks on the protected model's images", figures.image_attack_heatmap(
            list(one_per_defense.values()), list(one_per_defense),
            assets / "image_attacks.png")),
    ]  # fmt: skip
    return [(title, path) for title, path in made if path is not None]
