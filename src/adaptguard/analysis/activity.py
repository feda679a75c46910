"""Layer activity: how much each UNet block changes under fine-tuning (busy vs lazy).

activity_b = ||W1_b - W0_b||_F / ||W0_b||_F over the block's own parameters. The paper's
observation is that fine-tuning moves a few "busy" blocks a lot and leaves most blocks
"lazy"; AIAO hides its watermark in the lazy ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from adaptguard.analysis.blocks import Block, block_parameters, unet_blocks
from adaptguard.core.errors import ConfigError


@dataclass
class ActivityReport:
    blocks: list[Block]
    activity: list[float]  # per block, forward order
    busy_fraction: float

    def __post_init__(self) -> None:
        if not 0 <= self.busy_fraction < 1:
            raise ConfigError(f"busy_fraction: must be in [0, 1), got {self.busy_fraction}")

    @property
    def busy(self) -> list[int]:
        """Indices of the top ``busy_fraction`` blocks by activity (at least one when the fraction is > 0)."""
        n = math.ceil(self.busy_fraction * len(self.blocks)) if self.busy_fraction > 0 else 0
        order = sorted(range(len(self.blocks)), key=lambda i: -self.activity[i])
        return sorted(order[:n])

    @property
    def lazy(self) -> list[int]:
        busy = set(self.busy)
        return [i for i in range(len(self.blocks)) if i not in busy]

    def table(self) -> str:
        busy = set(self.busy)
        width = max(len(b.name) for b in self.blocks)
        lines = [f"{'#':>3}  {'block':<{width}}  {'kind':<11}  {'activity':>10}  state"]
        for b, a in zip(self.blocks, self.activity, strict=True):
            lines.append(
                f"{b.index:>3}  {b.name:<{width}}  {b.kind:<11}  {a:>10.3e}  {'BUSY' if b.index in busy else 'lazy'}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "busy_fraction": self.busy_fraction,
            "blocks": [asdict(b) | {"activity": a} for b, a in zip(self.blocks, self.activity, strict=True)],
            "busy": self.busy,
            "lazy": self.lazy,
        }

    def save_json(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)

    def plot(self, path: Path, title: str = "layer activity") -> Path:
        """Bar plot of activity per block in forward order, busy blocks highlighted."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        busy = set(self.busy)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(self.blocks)), 3.6))
        colours = ["tab:red" if b.index in busy else "tab:blue" for b in self.blocks]
        ax.bar(range(len(self.blocks)), self.activity, color=colours)
        ax.set_xticks(range(len(self.blocks)))
        ax.set_xticklabels([_short(b.name) for b in self.blocks], rotation=70, ha="right", fontsize=7)
        ax.set_ylabel("||W1 - W0|| / ||W0||")
        ax.set_title(f"{title} (red: busy, top {self.busy_fraction:.0%})")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def _short(name: str) -> str:
    return name.replace("_blocks", "").replace("resnets", "res").replace("attentions", "attn").replace("_block", "")


@torch.no_grad()
def layer_activity(
    reference: nn.Module, tuned: nn.Module, blocks: list[Block], busy_fraction: float = 0.2
) -> ActivityReport:
    """Relative weight change per block between two UNets of the same architecture."""
    values = []
    for block in blocks:
        p0 = block_parameters(reference, block)
        p1 = block_parameters(tuned, block)
        if p0.keys() != p1.keys():
            raise ConfigError(f"the two checkpoints differ in block {block.name}: not the same architecture")
        num = sum(float((p1[n].float().cpu() - p0[n].float().cpu()).pow(2).sum()) for n in p0)
        den = sum(float(p0[n].float().cpu().pow(2).sum()) for n in p0)
        values.append(math.sqrt(num) / max(math.sqrt(den), 1e-12))
    return ActivityReport(blocks=blocks, activity=values, busy_fraction=busy_fraction)


def compare_unets(
    reference: nn.Module, tuned: nn.Module, sample_shape: tuple[int, int, int], busy_fraction: float = 0.2
) -> ActivityReport:
    return layer_activity(reference, tuned, unet_blocks(reference, sample_shape), busy_fraction)
