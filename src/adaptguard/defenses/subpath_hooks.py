"""Forward hooks that trigger block i and read block j inside an ordinary denoiser forward.

The denoiser's own forward (a UNet's skip connections, a transformer's residual stream) carries the
triggered feature from block i to block j, so the watermark lives in the real computation path. Triggers are
per sample: one batched forward serves trials on different subpaths. With no trigger
set the hooks return ``None``, i.e. the forward is bit-identical to an unhooked one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from adaptguard.analysis.blocks import Block, block_output


@dataclass
class BlockSecret:
    """What the key fixes for one block: trigger mask and pattern, response entries and signs."""

    mask: torch.Tensor  # the block's output shape (Block.shape), float 0/1, ``mask_ratio`` of the entries
    pattern: torch.Tensor  # same shape: trigger values written where mask == 1
    response_index: torch.Tensor  # (n_bits,) long, flat indices into the block's output
    response_sign: torch.Tensor  # (n_bits,) float in {-1, +1}

    def to(self, device: torch.device, dtype: torch.dtype) -> BlockSecret:
        return BlockSecret(
            self.mask.to(device, dtype),
            self.pattern.to(device, dtype),
            self.response_index.to(device),
            self.response_sign.to(device, dtype),
        )


def _replace_output(output: object, feature: torch.Tensor) -> object:
    if isinstance(output, torch.Tensor):
        return feature
    if isinstance(output, tuple):
        return (feature, *output[1:])
    output.sample = feature
    return output


class SubpathHooks:
    """Context manager: ``trigger_at`` (B,) block index per sample (-1: none); ``features`` after a forward."""

    def __init__(self, unet: nn.Module, blocks: list[Block], secrets: dict[int, BlockSecret], read: Iterable[int]):
        self.unet = unet
        self.blocks = blocks
        self.secrets = secrets
        self.read = set(read)
        self.trigger_at: torch.Tensor | None = None
        self.features: dict[int, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._cast: dict[int, BlockSecret] = {}

    def __enter__(self) -> SubpathHooks:
        for b in sorted(set(self.secrets) | self.read):
            module = self.unet.get_submodule(self.blocks[b].name)
            self._handles.append(module.register_forward_hook(self._hook(b)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.features = {}

    def _secret(self, b: int, like: torch.Tensor) -> BlockSecret:
        cached = self._cast.get(b)
        if cached is None or cached.mask.device != like.device or cached.mask.dtype != like.dtype:
            cached = self._cast[b] = self.secrets[b].to(like.device, like.dtype)
        return cached

    def _hook(self, b: int):
        def hook(_module: nn.Module, _inputs: object, output: object) -> object:
            feature = block_output(output)
            changed = False
            if self.trigger_at is not None and b in self.secrets:
                select = self.trigger_at.to(feature.device) == b
                if bool(select.any()):
                    sec = self._secret(b, feature)
                    m = select.view(-1, *[1] * sec.mask.ndim).to(feature.dtype) * sec.mask
                    feature = feature * (1 - m) + m * sec.pattern
                    changed = True
            if b in self.read:
                self.features[b] = feature
            return _replace_output(output, feature) if changed else None

        return hook

    def responses(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, n_bits) response-entry values of block ``targets[s]`` for each sample s."""
        rows = []
        for s, j in enumerate(targets.tolist()):
            sec = self.secrets[j]
            rows.append(self.features[j][s].flatten()[sec.response_index.to(self.features[j].device)])
        return torch.stack(rows)

    def signs(self, targets: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(B, n_bits) the key's response signs for each sample's target block."""
        return torch.stack([self.secrets[j].response_sign.to(like.device, like.dtype) for j in targets.tolist()])
