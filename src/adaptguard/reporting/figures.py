"""The results page's PNGs, from its comparisons: error bars are 95 % intervals across seeds; colour is the
defense, marker the attack, legends sit outside the axes and no text is over 60 characters."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptguard.metrics.stats import SeedInterval
from adaptguard.reporting.comparisons import Comparison, clip
from adaptguard.reporting.headline import curve_points
from adaptguard.reporting.seeds import SeedGroup

MARKERS = "osD^vP*Xph"
LINES = ("-", "--", ":", "-.")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _half_width(s: SeedInterval) -> float:
    return 0.0 if s.low is None or s.high is None else (s.high - s.low) / 2


def style_legends(fig: Any, defenses: Sequence[str], attacks: Sequence[str] = ()) -> None:
    """Two small legends outside the axes, one entry per defense (colour) and per attack (marker), instead
    of one per point: a legend of every row's label once covered the plot."""
    from matplotlib.lines import Line2D

    colours = [Line2D([], [], color=colour(defenses, d), marker="o", ls="", label=clip(d)) for d in defenses]
    fig.legend(handles=colours, title="defense", fontsize=7, title_fontsize=7, loc="upper left",
               bbox_to_anchor=(1.0, 0.98), frameon=False)  # fmt: skip
    if attacks:
        markers = [Line2D([], [], color="0.3", marker=marker(attacks, a), ls="", label=clip(a)) for a in attacks]
        fig.legend(handles=markers, title="attack", fontsize=7, title_fontsize=7, loc="lower left",
                   bbox_to_anchor=(1.0, 0.02), frameon=False)  # fmt: skip


def colour(defenses: Sequence[str], defense: str) -> str:
    return f"C{defenses.index(defense) % 10}"


def marker(attacks: Sequence[str], attack: str) -> str:
    return MARKERS[attacks.index(attack) % len(MARKERS)]


def _variant(label: str, group: SeedGroup) -> str:
    """What a label adds to ``defense × attack`` (``(rho=0.2)``): written beside points the legends share."""
    return label[len(f"{group.defense} × {group.attack}") :].strip() or label


def robustness_vs_cost(comparisons: Sequence[Comparison], path: Path) -> Path | None:
    """Rate after the attack vs the protection's FID cost, a panel per comparison, a point per group."""
    panels = [(c, [(g, lab) for g, lab in zip(c.groups, c.labels, strict=True)
                   if "verify/rate_after" in g.stats and "quality/fid_delta" in g.stats]) for c in comparisons]  # fmt: skip
    panels = [(c, points) for c, points in panels if points]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    defenses = list(dict.fromkeys(g.defense for _, points in panels for g, _ in points))
    attacks = list(dict.fromkeys(g.attack for _, points in panels for g, _ in points))
    for ax, (c, points) in zip(axes[0], panels, strict=True):
        repeated = Counter((g.defense, g.attack) for g, _ in points)
        for g, label in points:
            x, y = g.stats["quality/fid_delta"], g.stats["verify/rate_after"]
            ax.errorbar(x.mean, y.mean, xerr=_half_width(x), yerr=_half_width(y), fmt=marker(attacks, g.attack),
                        color=colour(defenses, g.defense), capsize=3)  # fmt: skip
            if repeated[g.defense, g.attack] > 1:
                ax.annotate(clip(_variant(label, g)), (x.mean, y.mean), fontsize=6, xytext=(4, 4),
                            textcoords="offset points")  # fmt: skip
        ax.set_xlabel("FID protected - FID base (clean split)", fontsize=8)
        ax.set_ylabel("verification rate after the attack", fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(clip(f"{c.title}: mean, 95 % CI across seeds"), fontsize=8)
    style_legends(fig, defenses, attacks)
    return _save(fig, plt, path)


def curves(comparisons: Sequence[Comparison], path: Path) -> Path | None:
    """Verification rate vs attack step: a row of panels per comparison, a panel per attack, a line per group
    (colour: defense); mean and interval across seeds per step."""
    rows = [(c, [(g, lab) for g, lab in zip(c.groups, c.labels, strict=True)
                 if any(curve_points(r) for r in g.runs)]) for c in comparisons]  # fmt: skip
    rows = [(c, series) for c, series in rows if series]
    if not rows:
        return None
    plt = _pyplot()
    width = max(len({g.attack for g, _ in series}) for _, series in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(4.5 * width, 3.4 * len(rows)), squeeze=False)
    defenses = list(dict.fromkeys(g.defense for _, series in rows for g, _ in series))
    for r, (c, series) in enumerate(rows):
        attacks = list(dict.fromkeys(g.attack for g, _ in series))
        repeated, nth = Counter((g.attack, g.defense) for g, _ in series), Counter[tuple[str, str]]()
        for g, label in series:
            ax = axes[r][attacks.index(g.attack)]
            steps, stats = _curve(g)
            nth[g.attack, g.defense] += 1  # variants of one defense: one colour, a line style each
            ax.errorbar(steps, [s.mean for s in stats], yerr=[_half_width(s) for s in stats], marker="o", capsize=3,
                        color=colour(defenses, g.defense), markersize=3,
                        linestyle=LINES[(nth[g.attack, g.defense] - 1) % len(LINES)])  # fmt: skip
            if repeated[g.attack, g.defense] > 1 and steps:
                ax.annotate(clip(_variant(label, g)), (steps[-1], stats[-1].mean), fontsize=6)
        for j, ax in enumerate(axes[r]):
            if j >= len(attacks):
                ax.set_visible(False)
                continue
            ax.set_title(clip(f"{c.title}, attack={attacks[j]}"), fontsize=8)
            ax.set_xlabel("attack step", fontsize=8)
            ax.set_ylabel("verification rate", fontsize=8)
            ax.set_ylim(-0.05, 1.05)
    style_legends(fig, defenses)
    return _save(fig, plt, path)


def _curve(group: SeedGroup) -> tuple[list[int], list[SeedInterval]]:
    per_step: dict[int, list[float]] = {}
    for run in group.runs:
        for step, values in curve_points(run):
            if (v := values.get("curve/rate_after")) is not None:
                per_step.setdefault(step, []).append(v)
    steps = sorted(per_step)
    return steps, [SeedInterval.of(per_step[s]) for s in steps]


IMAGE_ATTACK = "verify/image_attack/"


def has_image_attacks(stats: Mapping[str, SeedInterval]) -> bool:
    return any(k.startswith(IMAGE_ATTACK) for k in stats)


def image_attack_heatmap(rows: Sequence[tuple[str, Mapping[str, SeedInterval]]], path: Path) -> Path | None:
    """Mean verification rate of each protected model's images after each image attack; ``rows``: a label
    and the before-attack numbers of each protected-models row."""
    prefix = IMAGE_ATTACK
    rows = [(clip(lab), stats) for lab, stats in rows if has_image_attacks(stats)]
    if not rows:
        return None
    transforms = list(dict.fromkeys(k[len(prefix) :] for _, stats in rows for k in stats if k.startswith(prefix)))
    columns = ["none", *transforms]
    grid = np.full((len(rows), len(columns)), math.nan)
    for i, (_, stats) in enumerate(rows):
        for j, name in enumerate(columns):
            s = stats.get("verify/rate_before" if name == "none" else prefix + name)
            grid[i, j] = s.mean if s else math.nan
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 3, 0.5 * len(rows) + 1.5))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(columns)), [clip(c) for c in columns], fontsize=8)
    ax.set_yticks(range(len(rows)), [lab for lab, _ in rows], fontsize=8)
    fig.colorbar(im, ax=ax, label="verification rate (protected model)")
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # tight: the legends outside the axes stay in the image
    plt.close(fig)
    return path
