"""Where each protection method puts its mark in the denoiser, as its paper and public code say.

This is public knowledge of the methods: the defenses train these weights, and an adaptive attacker who
has read the papers fine-tunes the same ones (``attack=targeted``). Each entry is a regex over the
denoiser's parameter names, for a UNet and for a diffusion transformer (SD3's joint blocks).
"""

from __future__ import annotations

from torch import nn

from adaptguard.core.errors import ConfigError

# SleeperMark's stage 2 (norms stay frozen in every choice but "unet")
SLEEPERMARK = {
    "up_attention": r"^up_blocks\.\d+\.attentions\.(?!.*norm)",  # the reference: attn / proj / ff of up-blocks
    "up_blocks": r"^up_blocks\.(?!.*norm)",
    "decoder": r"^(up_blocks\.|conv_out\.)(?!.*norm)",  # up-blocks and the output conv
    "unet": r"",
}
CROSS_ATTENTION = r"\.attn2\.(to_q|to_k|to_v|to_out\.0)\."  # the projections that read the prompt
DIT_ATTENTION = (  # a transformer has no cross-attention: every joint block's attention, both streams
    r"^transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)\."
)
DIT_CONTEXT_ATTENTION = r"^transformer_blocks\.\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)\."


def is_transformer(denoiser: nn.Module) -> bool:
    return hasattr(denoiser, "transformer_blocks")


def sleepermark_pattern(choice: str, denoiser: nn.Module) -> str:
    """SleeperMark's trainable weights. On a diffusion transformer the "up" path is the second half of the joint
    blocks (docs/defenses/sleepermark.md): attention and feed-forward for up_attention, everything in those
    blocks for up_blocks, plus the output projection for decoder; norms (the AdaLN modulation too) stay frozen."""
    if choice not in SLEEPERMARK:
        raise ConfigError(f"defense.trainable: {choice!r} is not one of {sorted(SLEEPERMARK)}")
    if not is_transformer(denoiser) or choice == "unet":
        return SLEEPERMARK[choice]
    blocks = denoiser.transformer_blocks
    second = "|".join(str(i) for i in range(len(blocks) // 2, len(blocks)))
    half = rf"^transformer_blocks\.({second})\."
    return {
        "up_attention": half + r"(attn|ff|ff_context)\.(?!.*norm)",
        "up_blocks": half + r"(?!.*norm)",
        "decoder": rf"({half}(?!.*norm)|^proj_out\.)",
    }[choice]


def cross_attention_pattern(denoiser: nn.Module) -> str:
    """The weights that read the prompt: a UNet's cross-attention, a transformer's joint attention."""
    return DIT_ATTENTION if is_transformer(denoiser) else CROSS_ATTENTION
