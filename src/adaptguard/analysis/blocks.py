"""The UNet's blocks in forward order: the unit of layer activity and of AIAO subpaths.

A block is a ResNet or transformer sub-block inside a down / mid / up block. Their
order in ``named_modules`` is registration order, not execution order, so one dry
forward records the order in which they run and the shape of each output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

BLOCK_TYPES: tuple[type[nn.Module], ...] = (ResnetBlock2D, Transformer2DModel)


@dataclass(frozen=True)
class Block:
    index: int  # position in forward order
    name: str  # qualified module name inside the UNet, e.g. "up_blocks.1.resnets.0"
    kind: str  # "resnet" | "transformer"
    shape: tuple[int, int, int]  # output (channels, height, width) for the probe input size

    @property
    def numel(self) -> int:
        c, h, w = self.shape
        return c * h * w


def block_output(output: object) -> torch.Tensor:
    """The feature map a block returns (transformers return a tuple or an output object)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample  # Transformer2DModelOutput


def unet_blocks(unet: nn.Module, sample_shape: tuple[int, int, int], text_len: int = 4) -> list[Block]:
    """Run one dry forward at ``sample_shape`` (C, H, W) and list the blocks in execution order."""
    seen: list[tuple[str, str, tuple[int, int, int]]] = []
    handles = []
    for name, module in unet.named_modules():
        if isinstance(module, BLOCK_TYPES):
            kind = "resnet" if isinstance(module, ResnetBlock2D) else "transformer"

            def record(_m, _inp, out, name=name, kind=kind):
                seen.append((name, kind, tuple(block_output(out).shape[1:])))

            handles.append(module.register_forward_hook(record))
    param = next(unet.parameters())
    try:
        with torch.no_grad():
            x = torch.zeros(1, *sample_shape, device=param.device, dtype=param.dtype)
            ctx = torch.zeros(1, text_len, unet.config.cross_attention_dim, device=param.device, dtype=param.dtype)
            unet(x, torch.zeros(1, dtype=torch.long, device=param.device), encoder_hidden_states=ctx)
    finally:
        for h in handles:
            h.remove()
    names = [n for n, _, _ in seen]
    if len(set(names)) != len(names):
        raise RuntimeError("a UNet block ran twice in one forward; block-level hooks cannot address it")
    return [Block(i, n, k, s) for i, (n, k, s) in enumerate(seen)]


def block_parameters(unet: nn.Module, block: Block) -> dict[str, torch.Tensor]:
    """The block's own parameters, keyed by their name in the UNet."""
    module = unet.get_submodule(block.name)
    return {f"{block.name}.{n}": p for n, p in module.named_parameters()}
