"""Model analysis tools usable on their own (layer activity between two checkpoints)."""

from adaptguard.analysis.activity import ActivityReport, compare_unets, layer_activity
from adaptguard.analysis.blocks import Block, unet_blocks

__all__ = ["ActivityReport", "Block", "compare_unets", "layer_activity", "unet_blocks"]
