"""The results page's PNGs, each from seed groups: error bars are 95 % intervals across seeds."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptguard.metrics.stats import SeedInterval
from adaptguard.reporting.headline import curve_points
from adaptguard.reporting.seeds import SeedGroup

MARKERS = "osD^vP*Xph"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _half_width(s: SeedInterval) -> float:
    return 0.0 if s.low is None or s.high is None else (s.high - s.low) / 2


def robustness_vs_cost(groups: Sequence[SeedGroup], labels: Sequence[str], path: Path) -> Path | None:
    """Rate after the attack vs the protection's FID cost, one point per group (defense x attack)."""
    points = [(g, lab) for g, lab in zip(groups, labels, strict=True)
              if "verify/rate_after" in g.stats and "quality/fid_delta" in g.stats]  # fmt: skip
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    defenses = list(dict.fromkeys(g.defense for g, _ in points))
    attacks = list(dict.fromkeys(g.attack for g, _ in points))
    for g, label in points:
        x, y = g.stats["quality/fid_delta"], g.stats["verify/rate_after"]
        ax.errorbar(x.mean, y.mean, xerr=_half_width(x), yerr=_half_width(y), fmt=MARKERS[attacks.index(g.attack) % 10],
                    color=f"C{defenses.index(g.defense) % 10}", capsize=3, label=label)  # fmt: skip
    ax.set_xlabel("quality cost: FID protected - FID base (clean split)")
    ax.set_ylabel("verification rate after the attack")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=6, ncol=2, loc="best")
    ax.set_title("robustness vs quality cost (mean, 95 % interval across seeds)", fontsize=9)
    return _save(fig, plt, path)


def curves(groups: Sequence[SeedGroup], labels: Sequence[str], path: Path) -> Path | None:
    """Verification rate vs attack step, one panel per attack, one line per group; mean and interval per step."""
    series = [(g, lab) for g, lab in zip(groups, labels, strict=True) if any(curve_points(r) for r in g.runs)]
    if not series:
        return None
    plt = _pyplot()
    attacks = list(dict.fromkeys(g.attack for g, _ in series))
    fig, axes = plt.subplots(1, len(attacks), figsize=(5 * len(attacks), 3.8), squeeze=False)
    panels = Counter((g.attack, g.defense) for g, _ in series)
    for g, label in series:
        ax = axes[0][attacks.index(g.attack)]
        label = g.defense if panels[g.attack, g.defense] == 1 else label  # the panel names the attack
        per_step: dict[int, list[float]] = {}
        for run in g.runs:
            for step, values in curve_points(run):
                if (v := values.get("curve/rate_after")) is not None:
                    per_step.setdefault(step, []).append(v)
        steps = sorted(per_step)
        stats = [SeedInterval.of(per_step[s]) for s in steps]
        ax.errorbar(steps, [s.mean for s in stats], yerr=[_half_width(s) for s in stats], marker="o", capsize=3,
                    label=label)  # fmt: skip
    for ax, attack in zip(axes[0], attacks, strict=True):
        ax.set_title(f"attack={attack}", fontsize=9)
        ax.set_xlabel("attack step")
        ax.set_ylabel("verification rate")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=6)
    return _save(fig, plt, path)


IMAGE_ATTACK = "verify/image_attack/"


def has_image_attacks(group: SeedGroup) -> bool:
    return any(k.startswith(IMAGE_ATTACK) for k in group.stats)


def image_attack_heatmap(groups: Sequence[SeedGroup], labels: Sequence[str], path: Path) -> Path | None:
    """Mean verification rate of each output watermark's images after each image attack."""
    prefix = IMAGE_ATTACK
    rows = [(g, lab) for g, lab in zip(groups, labels, strict=True) if has_image_attacks(g)]
    if not rows:
        return None
    transforms = list(dict.fromkeys(k[len(prefix) :] for g, _ in rows for k in g.stats if k.startswith(prefix)))
    columns = ["none", *transforms]
    grid = np.full((len(rows), len(columns)), math.nan)
    for i, (g, _) in enumerate(rows):
        for j, name in enumerate(columns):
            s = g.stats.get("verify/rate_before" if name == "none" else prefix + name)
            grid[i, j] = s.mean if s else math.nan
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 3, 0.5 * len(rows) + 1.5))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(rows)), [lab for _, lab in rows], fontsize=8)
    fig.colorbar(im, ax=ax, label="verification rate (protected model)")
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
