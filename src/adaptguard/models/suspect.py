"""Opening a model someone published, in whatever form it was published, as a DiffusionModel.

A suspect is a diffusers pipeline folder (Stable Diffusion or Stable Diffusion 3), a bare ``unet/`` or
``transformer/`` folder, a single-file checkpoint (the original Stable Diffusion layout, read by
diffusers' ``from_single_file``, or a denoiser state dict in diffusers' own key names), or a LoRA file
applied to a base (diffusers' ``lora_state_dict``: diffusers, kohya and peft layouts where diffusers
reads them; SD3's transformer LoRA format).
Everything but a full pipeline folder needs the base it completes: ``base`` (a folder) or
``base_model`` (already loaded, e.g. the protected model inside an experiment).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel, StableDiffusionPipeline, UNet2DConditionModel

from adaptguard.core.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.lora import has_lora_in, load_lora, merge_lora

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
ARCHITECTURE_KEYS = (
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
    "up_block_types", "cross_attention_dim", "attention_head_dim",
)  # fmt: skip
DIT_ARCHITECTURE_KEYS = (
    "in_channels", "out_channels", "patch_size", "num_layers", "attention_head_dim", "num_attention_heads",
    "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "dual_attention_layers",
)  # fmt: skip
DENOISERS = {cls.__name__: cls for cls in (UNet2DConditionModel, SD3Transformer2DModel)}  # a bare folder's class


@dataclass
class Suspect:
    """``path``: a folder or single file; ``lora``: an adapter file for ``base`` (or for ``path``'s pipeline)."""

    path: str | None = None
    lora: str | None = None
    base: str | None = None
    key: str = "suspect"  # the config key errors name: <key> (or <key>.<path_name>), <key>.<lora_name>, <key>.base
    path_name: str | None = None
    lora_name: str = "lora"

    @property
    def path_key(self) -> str:
        return f"{self.key}.{self.path_name}" if self.path_name else self.key

    @property
    def lora_key(self) -> str:
        return f"{self.key}.{self.lora_name}"

    def describe(self) -> str:
        if self.lora:
            return f"{self.lora} on {self.base or self.path or 'the protected model'}"
        return str(self.path)


def architecture(model: DiffusionModel) -> dict[str, Any]:
    """What must match for a key to read a model: the denoiser's shape, the latent space, the resolution."""
    config = dict(model.unet.config)
    dit = isinstance(model.unet, SD3Transformer2DModel)
    arch = {k: _plain(config.get(k)) for k in (DIT_ARCHITECTURE_KEYS if dit else ARCHITECTURE_KEYS)}
    if dit:  # a UNet's keys name no denoiser: those written before transformers keep reading
        arch["denoiser"] = type(model.unet).__name__
    arch["latent"] = model.is_latent
    return arch


def architecture_mismatch(expected: dict[str, Any], model: DiffusionModel) -> list[str]:
    found = architecture(model)
    return [f"{k} {found.get(k)!r} (key: {v!r})" for k, v in expected.items() if found.get(k) != v]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def load_suspect(
    suspect: Suspect,
    base: str | Path | None = None,
    base_model: DiffusionModel | None = None,
    sampler: SamplerConfig | None = None,
) -> DiffusionModel:
    """The suspect as a plain model (LoRA merged). ``base``/``base_model``: what completes a partial suspect."""
    key, base_key = suspect.key, f"{suspect.key}.base"
    if suspect.lora:
        lora = _existing(suspect.lora, suspect.lora_key)
        folder = suspect.base or (suspect.path if suspect.path and _is_pipeline(Path(suspect.path)) else None)
        model = _base(key, folder or base, base_model, sampler, what="a LoRA", base_key=base_key)
        try:
            load_lora(model, lora)
        except (ValueError, KeyError, RuntimeError) as err:
            raise ConfigError(
                f"{suspect.lora_key}: {lora} does not apply to the base model ({_first_line(err)})"
            ) from None
        if not has_lora_in(model.unet) and not has_lora_in(model.text_encoder):
            raise ConfigError(f"{suspect.lora_key}: no layer of {lora} matches a module of the base model; "
                              "is it a LoRA for another architecture?")  # fmt: skip
        merge_lora(model)
        return model
    if not suspect.path:
        raise ConfigError(f"{suspect.path_key}: set {suspect.path_key}=<folder or checkpoint file> "
                          f"(or {suspect.lora_key}=<file> {base_key}=<folder>)")  # fmt: skip
    key = suspect.path_key
    path = _existing(suspect.path, key)
    base = suspect.base or base
    if path.is_dir():
        if _is_pipeline(path):
            return DiffusionModel.load(path, sampler=sampler, key=key)
        if denoiser := _denoiser_class(path):
            what = f"a bare {'unet' if denoiser is UNet2DConditionModel else 'transformer'}/ folder"
            model = _base(key, base, base_model, sampler, what=what, base_key=base_key)
            return _with_unet(model, denoiser.from_pretrained(path).to(model.device), key, path)
        raise ConfigError(
            f"{key}: {path} is neither a diffusers pipeline folder (unet/ or transformer/, text_encoder/, tokenizer/, "
            "scheduler/, vae/) nor a denoiser folder (config.json + diffusion_pytorch_model.safetensors)"
        )
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ConfigError(f"{key}: {path} is not a folder or a checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})")
    state = _read_state(path, key)
    if any("lora" in k for k in state):
        as_lora = Suspect(lora=str(path), base=str(base) if base else None, key=suspect.key, lora_name=suspect.path_name
                          or "lora")  # fmt: skip
        return load_suspect(as_lora, base_model=base_model, sampler=sampler)
    model = _base(key, base, base_model, sampler, what="a single-file checkpoint", base_key=base_key)
    if set(state) == set(model.unet.state_dict()):  # a denoiser in diffusers' own key names
        unet = model.unet
        unet.load_state_dict({k: v.to(unet.dtype) for k, v in state.items()})
        return model
    if isinstance(model.unet, SD3Transformer2DModel):
        raise ConfigError(f"{key}: {path} is not a state dict of this base's transformer in diffusers' key names "
                          "(the original SD3 single-file layout is not read: convert it with diffusers first)")  # fmt: skip
    if not base:
        raise ConfigError(f"{base_key}: a Stable Diffusion single-file checkpoint needs {base_key}=<pipeline folder> "
                          "for its component configs (nothing is downloaded)")  # fmt: skip
    return _from_single_file(path, Path(base), model, key)


def _existing(path: str, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{key}: {p} does not exist")
    return p


def _is_pipeline(path: Path) -> bool:
    return (path / "unet").is_dir() or (path / "transformer").is_dir()


def _denoiser_class(path: Path) -> type | None:
    config = path / "config.json"
    if not config.is_file():
        return None
    return DENOISERS.get(json.loads(config.read_text()).get("_class_name"))


def _base(
    key: str,
    base: str | Path | None,
    base_model: DiffusionModel | None,
    sampler: SamplerConfig | None,
    what: str,
    base_key: str,
) -> DiffusionModel:
    if base is not None:
        folder = _existing(str(base), base_key)
        if not _is_pipeline(folder):
            raise ConfigError(f"{base_key}: {folder} is not a diffusers pipeline folder (no unet/ or transformer/)")
        return DiffusionModel.load(folder, sampler=sampler, key=base_key)
    if base_model is not None:
        return base_model.clone()
    raise ConfigError(f"{base_key}: {key} is {what}; set {base_key}=<the pipeline folder it applies to>")


def _with_unet(model: DiffusionModel, unet: torch.nn.Module, key: str, path: Path) -> DiffusionModel:
    if type(unet) is not type(model.unet):
        raise ConfigError(f"{key}: {path} holds a {type(unet).__name__}, its base a {type(model.unet).__name__}: "
                          "it does not belong to this base")  # fmt: skip
    if dict(unet.config).get("in_channels") != model.unet.config.in_channels:
        raise ConfigError(f"{key}: the denoiser in {path} takes {unet.config.in_channels} input channels, its base "
                          f"{model.unet.config.in_channels}: it does not belong to this base")  # fmt: skip
    model.unet = unet
    return model


def _read_state(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file is one user error
        raise ConfigError(f"{key}: cannot read {path} as a checkpoint ({_first_line(err)})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{key}: {path} holds no state dict of tensors")
    return state


def _from_single_file(path: Path, base: Path, like: DiffusionModel, key: str) -> DiffusionModel:
    """The original Stable Diffusion single-file layout, converted by diffusers with ``base``'s configs."""
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(base), local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    except Exception as err:  # noqa: BLE001 - diffusers raises many kinds for a foreign checkpoint
        raise ConfigError(f"{key}: diffusers' from_single_file cannot read {path} ({_first_line(err)})") from None
    model = DiffusionModel(
        pipe.unet, pipe.text_encoder, like.tokenizer, like.noise_scheduler, vae=pipe.vae,
        resolution=like.resolution, sampler=like.sampler,
    )  # fmt: skip
    return model.to(like.device)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
