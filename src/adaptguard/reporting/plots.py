"""Sample grids and attack-strength curves as PNG files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision

from adaptguard.reporting.results import CurvePoint


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    torchvision.utils.save_image(images.float() * 0.5 + 0.5, path, nrow=nrow, padding=1)
    return path


def plot_curves(curves: Mapping[str, Sequence[CurvePoint]], path: Path) -> Path:
    """Verification rate and FID vs fine-tuning step; one colour per attacked run in both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, fid_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, points) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        rated = [(p.step, p.verification.rate) for p in points if p.verification is not None]
        if rated:
            rate_ax.plot(*zip(*rated, strict=True), marker="o", color=colour, label=name)
        for domain in dict.fromkeys(d for p in points for d in p.quality):
            xy = [(p.step, p.quality[domain].fid) for p in points if domain in p.quality]
            fid_ax.plot(*zip(*xy, strict=True), marker="o", color=colour, label=f"{name} ({domain})")
    fid_ax.set_ylabel("FID")
    rate_ax.set_ylim(-0.03, 1.03)
    rate_ax.set_ylabel("verification rate")
    for ax in (rate_ax, fid_ax):
        ax.set_xlabel("attack step")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
