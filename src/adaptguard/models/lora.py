"""LoRA adapters on the bundle (peft, through diffusers' and transformers' adapter APIs).

Adapters go on the UNet or the SD3 transformer (and optionally a UNet model's text encoder); modules a
FineTuneConstraint freezes get none, since an adapter would change their effective weight. Saved adapters
use diffusers' LoRA file of the model's family, so ``StableDiffusionPipeline.load_lora_weights(dir)`` (or
``StableDiffusion3Pipeline``'s) opens them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peft
import transformers
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline
from diffusers.loaders.lora_base import fuse_text_encoder_lora
from diffusers.utils.peft_utils import recurse_remove_peft_layers
from packaging.version import Version
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from torch import nn

from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.sd3 import SD3Model

log = logging.getLogger(__name__)
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP attention, as diffusers' examples


@dataclass
class LoraSettings:
    """Adapter shape; the attack's config keys (``attack.rank``, ...) are validated where they are read."""

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def config(self, targets: list[str]) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        )


def _targets(
    module: nn.Module, prefix: str, suffixes: list[str], constraint: FineTuneConstraint | None
) -> tuple[list[str], list[str]]:
    matched, skipped = [], []
    for name, sub in module.named_modules():
        if not isinstance(sub, nn.Linear | nn.Conv2d):
            continue
        if not any(name == t or name.endswith("." + t) for t in suffixes):
            continue
        (skipped if constraint and constraint.freezes_module(f"{prefix}.{name}") else matched).append(name)
    return matched, skipped


def add_lora(
    model: DiffusionModel,
    settings: LoraSettings,
    constraint: FineTuneConstraint | None,
    text_encoder: bool = False,
    key: str = "attack",
) -> dict[str, Any]:
    """Freeze the bundle and add trainable adapters; returns adapter counts for the cost report. ``key``:
    the config section errors name (``attack``, or ``defense`` for a watermark LoRA)."""
    model.requires_grad_(False)
    matched, skipped = _targets(model.unet, "unet", settings.target_modules, constraint)
    if not matched:
        raise ConfigError(
            f"{key}.target_modules: {settings.target_modules} matched no trainable UNet module"
            + (f" ({len(skipped)} matched but are frozen by the defense)" if skipped else "")
        )
    model.unet.add_adapter(settings.config(matched))
    info = {"lora_modules": len(matched), "lora_skipped_frozen": len(skipped)}
    if text_encoder and isinstance(model, SD3Model):
        raise ConfigError("attack.train_text_encoder: not on a diffusion transformer yet (issue 31); set it to false")
    if text_encoder:
        te_matched, te_skipped = _targets(model.text_encoder, "text_encoder", TEXT_ENCODER_TARGETS, constraint)
        if not te_matched:
            raise ConfigError("attack.train_text_encoder: no trainable text-encoder attention projection to adapt")
        _add_text_encoder_adapter(model.text_encoder, settings.config(te_matched))
        info.update(lora_text_encoder_modules=len(te_matched))
        skipped += te_skipped
        info["lora_skipped_frozen"] = len(skipped)
    if skipped:
        log.info("LoRA: skipped %d target modules frozen by the defense", len(skipped))
    return info


# transformers 5's ``add_adapter`` asks for peft >= 0.22, which PyPI does not have yet (newest: 0.21); 4.x asks for
# less. Until then the adapter goes in as that method would put it (tests/test_attacks.py fails once the
# method accepts the installed peft, so that this fence and its private attribute can go).
TEXT_ENCODER_ADAPTER_SHIM = Version(transformers.__version__).major >= 5 and Version(peft.__version__) < Version("0.22")


def _add_text_encoder_adapter(text_encoder: nn.Module, config: LoraConfig) -> None:
    if not TEXT_ENCODER_ADAPTER_SHIM:
        text_encoder.add_adapter(config, adapter_name="default")
        return
    inject_adapter_in_model(config, text_encoder, adapter_name="default")
    text_encoder.peft_config = {"default": config}
    text_encoder._hf_peft_config_loaded = True


def has_lora_in(module: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def merge_lora(model: DiffusionModel) -> None:
    """Fold adapters into the base weights and remove them: a plain model again."""
    model.unet.fuse_lora()
    model.unet.unload_lora()
    if has_lora_in(model.text_encoder):
        fuse_text_encoder_lora(model.text_encoder)
        recurse_remove_peft_layers(model.text_encoder)


def save_lora(model: DiffusionModel, path: Path) -> Path:
    """Write the adapters as diffusers' LoRA file (``pytorch_lora_weights.safetensors``) of the model's family."""
    if isinstance(model, SD3Model):  # StableDiffusion3Pipeline.load_lora_weights opens it
        StableDiffusion3Pipeline.save_lora_weights(
            save_directory=path,
            transformer_lora_layers=get_peft_model_state_dict(model.unet),
            transformer_lora_adapter_metadata=model.unet.peft_config["default"].to_dict(),
        )
        return path
    text = get_peft_model_state_dict(model.text_encoder) if has_lora_in(model.text_encoder) else None
    StableDiffusionPipeline.save_lora_weights(
        save_directory=path,
        unet_lora_layers=get_peft_model_state_dict(model.unet),
        text_encoder_lora_layers=text,
        unet_lora_adapter_metadata=model.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=model.text_encoder.peft_config["default"].to_dict() if text else None,
    )
    return path


def load_lora(model: DiffusionModel, path: Path) -> None:
    """Load adapters saved by :func:`save_lora` (or diffusers' training scripts; a folder or the file) into ``model``."""
    path = Path(path)
    where = {"weight_name": path.name} if path.is_file() else {}
    if isinstance(model, SD3Model):
        state, metadata = StableDiffusion3Pipeline.lora_state_dict(
            str(path.parent if path.is_file() else path), return_lora_metadata=True, **where
        )
        StableDiffusion3Pipeline.load_lora_into_transformer(state, transformer=model.unet, metadata=metadata)
        return
    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
        str(path.parent if path.is_file() else path), return_lora_metadata=True, **where
    )
    StableDiffusionPipeline.load_lora_into_unet(state, network_alphas=alphas, unet=model.unet, metadata=metadata)
    if any(k.startswith("text_encoder.") for k in state):
        StableDiffusionPipeline.load_lora_into_text_encoder(
            state, network_alphas=alphas, text_encoder=model.text_encoder, metadata=metadata
        )
