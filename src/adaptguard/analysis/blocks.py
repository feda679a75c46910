"""The denoiser's blocks in forward order: the unit of layer activity and of AIAO subpaths.

On a UNet a block is a ResNet or transformer sub-block inside a down / mid / up block. On an SD3
transformer it is a sub-block of one joint block: its joint attention (with the AdaLN modulation that
runs before it) or its feed-forward (image and prompt streams), each one residual branch, as on the UNet
(docs/defenses/aiao.md). Their order in ``named_modules`` is registration order, not execution order,
so one dry forward records the order in which they run and the shape of each output (channels x height x
width on a UNet, image tokens x width on a transformer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

BLOCK_TYPES: tuple[type[nn.Module], ...] = (ResnetBlock2D, Transformer2DModel)


@dataclass(frozen=True)
class Block:
    index: int  # position in forward order
    name: str  # qualified module name inside the denoiser, e.g. "up_blocks.1.resnets.0"
    kind: str  # "resnet" | "transformer" | "attention" | "feedforward"
    shape: tuple[int, ...]  # output shape for the probe input size, batch dimension dropped
    extra: tuple[str, ...] = ()  # other modules whose weights count as this block's (AdaLN, prompt-stream FF)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def block_output(output: object) -> torch.Tensor:
    """The feature a block returns (transformers return a tuple or an output object; joint attention
    returns (image tokens, prompt tokens))."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample  # Transformer2DModelOutput


def _block_modules(denoiser: nn.Module) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, kind, extra) of every block, in registration order."""
    joint = getattr(denoiser, "transformer_blocks", None)
    if joint is None:
        return [(name, "resnet" if isinstance(m, ResnetBlock2D) else "transformer", ())
                for name, m in denoiser.named_modules() if isinstance(m, BLOCK_TYPES)]  # fmt: skip
    found = []
    for i, block in enumerate(joint):
        prefix = f"transformer_blocks.{i}"
        found.append((f"{prefix}.attn", "attention", (f"{prefix}.norm1", f"{prefix}.norm1_context")))
        context_ff = (f"{prefix}.ff_context",) if getattr(block, "ff_context", None) is not None else ()
        found.append((f"{prefix}.ff", "feedforward", context_ff))
    return found


def _dry_forward(denoiser: nn.Module, sample_shape: tuple[int, ...], text_len: int) -> None:
    param = next(denoiser.parameters())
    zeros = {"device": param.device, "dtype": param.dtype}
    x = torch.zeros(1, *sample_shape, **zeros)
    t = torch.zeros(1, dtype=torch.long, device=param.device)
    cfg = denoiser.config
    if getattr(denoiser, "transformer_blocks", None) is None:
        denoiser(x, t, encoder_hidden_states=torch.zeros(1, text_len, cfg.cross_attention_dim, **zeros))
    else:
        denoiser(hidden_states=x, timestep=t, encoder_hidden_states=torch.zeros(1, text_len, cfg.joint_attention_dim,
                 **zeros), pooled_projections=torch.zeros(1, cfg.pooled_projection_dim, **zeros))  # fmt: skip


def unet_blocks(unet: nn.Module, sample_shape: tuple[int, int, int], text_len: int = 4) -> list[Block]:
    """Run one dry forward at ``sample_shape`` (C, H, W) and list the denoiser's blocks in execution order."""
    seen: list[tuple[str, str, tuple[int, ...], tuple[str, ...]]] = []
    handles = []
    for name, kind, extra in _block_modules(unet):

        def record(_m, _inp, out, name=name, kind=kind, extra=extra):
            seen.append((name, kind, tuple(block_output(out).shape[1:]), extra))

        handles.append(unet.get_submodule(name).register_forward_hook(record))
    try:
        with torch.no_grad():
            _dry_forward(unet, sample_shape, text_len)
    finally:
        for h in handles:
            h.remove()
    names = [n for n, _, _, _ in seen]
    if len(set(names)) != len(names):
        raise RuntimeError("a denoiser block ran twice in one forward; block-level hooks cannot address it")
    return [Block(i, n, k, s, e) for i, (n, k, s, e) in enumerate(seen)]


def block_parameters(unet: nn.Module, block: Block) -> dict[str, torch.Tensor]:
    """The block's own parameters (its extra modules' too), keyed by their name in the denoiser."""
    params = {}
    for name in (block.name, *block.extra):
        params.update({f"{name}.{n}": p for n, p in unet.get_submodule(name).named_parameters()})
    return params
