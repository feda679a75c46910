"""One checkpoint file in the original Stable Diffusion (LDM) layout, as model hubs distribute them.

diffusers reads this layout (``from_single_file``) but does not write it; this writes it for any
UNet / VAE depth, so an owner can publish a single file and tests can check that a suspect
published that way is verified like its folder. The key names are the inverse of diffusers'
``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` / ``convert_ldm_clip_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from adaptguard.models.bundle import DiffusionModel

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
Renames = list[tuple[str, str, dict[str, str]]]  # (diffusers prefix, LDM prefix, renames inside it)


def unet_renames(config: dict) -> Renames:
    layers, levels = config["layers_per_block"], len(config["block_out_channels"])
    out: Renames = [("time_embedding.linear_1.", "time_embed.0.", {}), ("time_embedding.linear_2.", "time_embed.2.", {}),
                    ("conv_in.", "input_blocks.0.0.", {}), ("conv_norm_out.", "out.0.", {}), ("conv_out.", "out.2.", {}),
                    ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET), ("mid_block.attentions.0.", "middle_block.1.", {}),
                    ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET)]  # fmt: skip
    for i in range(levels):
        for j in range(layers):
            n = 1 + i * (layers + 1) + j
            out += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", UNET_RESNET),
                    (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.", {})]  # fmt: skip
        if i < levels - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (layers + 1)}.0.op.", {}))
        attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(layers + 1):
            n = i * (layers + 1) + j
            out += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", UNET_RESNET),
                    (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.", {})]  # fmt: skip
        if i < levels - 1:
            last = i * (layers + 1) + layers
            out.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{last}.{2 if attention else 1}.conv.", {}))
    return out


def vae_renames(config: dict) -> Renames:
    layers, levels = config["layers_per_block"], len(config["block_out_channels"])
    out: Renames = [
        ("encoder.conv_norm_out.", "encoder.norm_out.", {}),
        ("decoder.conv_norm_out.", "decoder.norm_out.", {}),
    ]
    for part in ("encoder", "decoder"):
        out += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", VAE_RESNET),
                (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", VAE_RESNET),
                (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION)]  # fmt: skip
    for i in range(levels):
        out += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", VAE_RESNET)
                for j in range(layers)]  # fmt: skip
        out.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", {}))
        up = levels - 1 - i  # the LDM decoder numbers its levels from the lowest resolution up
        out += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}.", VAE_RESNET)
                for j in range(layers + 1)]  # fmt: skip
        out.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{up}.upsample.conv.", {}))
    return out


def rename(key: str, renames: Renames) -> str:
    for old, new, inner in renames:
        if key.startswith(old):
            rest = key[len(old) :]
            for a, b in inner.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
                    break
            return new + rest
    return key  # same name in both layouts (quant_conv, encoder.conv_in, ...)


def original_state_dict(model: DiffusionModel) -> dict[str, torch.Tensor]:
    """The bundle's weights under the original Stable Diffusion key names (a latent model)."""
    if model.vae is None:
        raise ValueError("the original Stable Diffusion layout needs a latent model (with a VAE)")
    state: dict[str, torch.Tensor] = {}
    unet = unet_renames(dict(model.unet.config))
    for k, v in model.unet.state_dict().items():
        state[UNET_PREFIX + rename(k, unet)] = v
    vae = vae_renames(dict(model.vae.config))
    for k, v in model.vae.state_dict().items():
        key = VAE_PREFIX + rename(k, vae)
        state[key] = v[:, :, None, None] if ".mid.attn_1." in key and v.ndim == 2 else v  # 1x1 convs in LDM
    for k, v in model.text_encoder.state_dict().items():  # recent transformers drop the text_model. prefix
        state[TEXT_PREFIX + (k if k.startswith("text_model.") else f"text_model.{k}")] = v
    return state


def save_single_file(model: DiffusionModel, path: str | Path) -> Path:
    """Write ``model`` as one ``.safetensors`` file that ``StableDiffusionPipeline.from_single_file`` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in original_state_dict(model).items()}, path)
    return path
