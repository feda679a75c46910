"""Where the base model comes from: the tiny models (pretrained by our code, cached) or a local folder."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from adaptguard.core.config import Validated, from_mapping, setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.tiny import TinySchedulerSpec, TinyTextSpec, TinyUNetSpec, TinyVAESpec, build_tiny_model
from adaptguard.models.tiny_dit import FlowSchedulerSpec, TinyT5Spec, TinyTransformerSpec, build_tiny_dit, sd3_vae
from adaptguard.training.pretraining import PRETRAIN_SPLIT, PretrainConfig, Probe, pretrain

CURVE_SPLIT = {"offset": 20000, "size": 512}  # conf/dataset/shapes.yaml's eval split: held-out real images

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """What determines the weights (a cache key)."""

    def load(self, ctx: RunContext) -> DiffusionModel: ...


class ShapesPretrained:
    """Pretraining on ``shapes`` by our own code, cached by :meth:`describe`; the class builds the random-init
    model (``build``) and holds ``resolution``, ``pretrain``, ``sampler`` and ``gradient_checkpointing``."""

    resolution: int
    pretrain: dict[str, Any]
    sampler: dict[str, Any]
    gradient_checkpointing: bool

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def build(self) -> DiffusionModel:
        raise NotImplementedError

    def _pretrain(self, work: Path, ctx: RunContext) -> None:
        cfg = from_mapping(PretrainConfig, self.pretrain)
        data = ShapesDataModule(resolution=self.resolution, splits={PRETRAIN_SPLIT: {"size": cfg.dataset_size}})
        pretrain(self.build().to(ctx.torch_device()), data, cfg, ctx, work, self._curve_probe(cfg, ctx))

    def _curve_probe(self, cfg: PretrainConfig, ctx: RunContext) -> Probe | None:
        """FID and prompt fidelity of ``curve_samples`` images of the shapes eval split, from the same noise at
        every point (the pretraining curve of docs/models.md)."""
        if not cfg.curve_every:
            return None
        data = ShapesDataModule(resolution=self.resolution, splits={"eval": CURVE_SPLIT})
        n = cfg.curve_samples
        ev = QualityEvaluator(num_samples=n, kid_subset_size=min(50, n), kid_subsets=10, bootstrap=0)

        def probe(model: DiffusionModel) -> dict[str, float]:
            report, _ = ev.evaluate(model, data, "eval", ctx, offset=100)
            return {"fid": report.fid, **{f"fidelity/{k}": v for k, v in report.fidelity.items()}}

        return probe

    def load(self, ctx: RunContext) -> DiffusionModel:
        folder = ctx.cache.get_or_build("base", self.describe(), lambda work: self._pretrain(work, ctx))
        model = DiffusionModel.load(folder / "model", sampler=from_mapping(SamplerConfig, self.sampler))
        model.gradient_checkpointing = self.gradient_checkpointing
        return model.to(ctx.torch_device())


@dataclass
class TinyModelSource(ShapesPretrained, Validated):
    """``model=tiny`` / ``micro``: built from config and pretrained on ``shapes`` by our own code.

    The pretrained weights are cached by the hash of this config (``ADAPTGUARD_CACHE``);
    the package ships the weights for the default configs (``make pretrain`` remakes them),
    so the defaults need no pretraining. Any other config pretrains on first use, with a
    progress bar, resuming from its last checkpoint if interrupted.
    """

    config_key = "model"

    resolution: int = setting(32, ge=8, doc="image size in pixels")
    unet: dict[str, Any] = setting(default_factory=dict, doc="the UNet's shape")
    vae: dict[str, Any] | None = setting(
        None, doc="the `AutoencoderKL`; null (the pixel models): no VAE, the UNet denoises pixels"
    )
    text_encoder: dict[str, Any] = setting(default_factory=dict, doc="the CLIP text encoder's shape")
    scheduler: dict[str, Any] = setting(
        default_factory=dict, doc="the training noise scheduler (diffusers' `DDPMScheduler`)"
    )
    sampler: dict[str, Any] = setting(
        default_factory=dict, doc="default sampling; verification and FID use it unless their own keys say otherwise"
    )
    pretrain: dict[str, Any] = setting(
        default_factory=dict, doc="how the base model learns the shapes world (changing it pretrains anew)"
    )
    init_seed: int = setting(0, doc="seed of the random initialisation before pretraining")
    gradient_checkpointing: bool = setting(
        False, doc="training stages (protection, attacks) recompute activations to save memory"
    )

    name: str = setting("tiny", doc="label in results and logs")

    def __post_init__(self) -> None:
        super().__post_init__()
        for cls, value in ((TinyUNetSpec, self.unet), (TinyTextSpec, self.text_encoder),
                           (TinySchedulerSpec, self.scheduler), (SamplerConfig, self.sampler),
                           (PretrainConfig, self.pretrain), (TinyVAESpec, self.vae or {})):  # fmt: skip
            from_mapping(cls, value)  # a bad nested value fails now, naming its key

    def describe(self) -> dict[str, Any]:
        """What determines the pretrained weights (not the name, the sampler or checkpointing)."""
        d = asdict(self)
        for key in ("name", "sampler", "gradient_checkpointing"):
            d.pop(key)
        if self.vae is None:
            d.pop("vae")  # pixel models hash as they did before VAEs existed
        else:
            d["vae"] = asdict(from_mapping(TinyVAESpec, self.vae))
        # defaults filled in, so a config that spells them out hashes like one that omits them
        d["unet"] = asdict(from_mapping(TinyUNetSpec, self.unet))
        d["text_encoder"] = asdict(from_mapping(TinyTextSpec, self.text_encoder))
        d["scheduler"] = asdict(from_mapping(TinySchedulerSpec, self.scheduler))
        for f in fields(TinySchedulerSpec):
            if f.name in ("rescale_betas_zero_snr", "timestep_spacing") and d["scheduler"][f.name] == f.default:
                d["scheduler"].pop(f.name)  # models from before these keys existed keep their cache key
        d["pretrain"] = asdict(from_mapping(PretrainConfig, self.pretrain))
        for key in ("checkpoint_every", "curve_every", "curve_samples"):  # resumability and the curve, not the weights
            d["pretrain"].pop(key)
        if self.vae is None:
            for key in ("vae_steps", "vae_batch_size", "vae_lr", "kl_weight", "vae_crop"):
                d["pretrain"].pop(key)
        return d

    def build(self) -> DiffusionModel:
        return build_tiny_model(
            self.resolution, self.unet, self.text_encoder, self.scheduler, self.sampler, self.init_seed, self.vae
        )


@dataclass
class TinyDiTSource(ShapesPretrained, Validated):
    """``model=tiny_dit`` / ``micro_dit``: Stable Diffusion 3's structure (:mod:`adaptguard.models.tiny_dit`),
    built from config and pretrained on ``shapes`` by flow matching; cached by the hash of this config."""

    config_key = "model"

    resolution: int = setting(64, ge=8, doc="image size in pixels")
    transformer: dict[str, Any] = setting(default_factory=dict, doc="the SD3 transformer's shape")
    vae: dict[str, Any] = setting(default_factory=dict, doc="the `AutoencoderKL` (SD3's 16 latent channels)")
    text_encoder: dict[str, Any] = setting(default_factory=dict, doc="each of the two CLIP text encoders' shape")
    t5: dict[str, Any] = setting(default_factory=dict, doc="the T5 encoder's shape (its width is the prompt tokens')")
    scheduler: dict[str, Any] = setting(default_factory=dict, doc="the flow-matching schedule (its shift)")
    sampler: dict[str, Any] = setting(
        default_factory=dict, doc="default sampling; verification and FID use it unless their own keys say otherwise"
    )
    pretrain: dict[str, Any] = setting(
        default_factory=dict, doc="how the base model learns the shapes world (changing it pretrains anew)"
    )
    init_seed: int = setting(0, doc="seed of the random initialisation before pretraining")
    gradient_checkpointing: bool = setting(
        False, doc="training stages (protection, attacks) recompute activations to save memory"
    )
    name: str = setting("tiny_dit", doc="label in results and logs")

    def __post_init__(self) -> None:
        super().__post_init__()
        for cls, value in ((TinyTransformerSpec, self.transformer), (TinyTextSpec, self.text_encoder),
                           (TinyT5Spec, self.t5), (FlowSchedulerSpec, self.scheduler), (SamplerConfig, self.sampler),
                           (PretrainConfig, self.pretrain), (TinyVAESpec, self.vae)):  # fmt: skip
            from_mapping(cls, value)  # a bad nested value fails now, naming its key

    def describe(self) -> dict[str, Any]:
        """What determines the pretrained weights (not the name, the sampler or checkpointing), defaults filled in."""
        specs = {"transformer": TinyTransformerSpec, "vae": TinyVAESpec, "text_encoder": TinyTextSpec,
                 "t5": TinyT5Spec, "scheduler": FlowSchedulerSpec, "pretrain": PretrainConfig}  # fmt: skip
        # format 2: what diffusers' SD3 scripts load: T5's tokenizer of T5's kind (a Unigram; 1: a BPE) and CLIP
        # encoders with 77 positions
        d: dict[str, Any] = {"family": "sd3", "format": 2, "resolution": self.resolution, "init_seed": self.init_seed}
        d.update({key: asdict(from_mapping(cls, getattr(self, key))) for key, cls in specs.items()})
        d["vae"] = asdict(from_mapping(TinyVAESpec, sd3_vae(self.vae)))
        for key in ("checkpoint_every", "curve_every", "curve_samples"):
            d["pretrain"].pop(key)
        return d

    def build(self) -> DiffusionModel:
        return build_tiny_dit(self.resolution, self.transformer, self.text_encoder, self.t5, self.scheduler,
                              self.sampler, self.init_seed, self.vae)  # fmt: skip


@dataclass
class PretrainedSource(Validated):
    """``model=sd15`` / ``sd21``: a local Stable Diffusion folder in diffusers' layout."""

    config_key = "model"

    path: str | None = setting(
        None, doc="a local Stable Diffusion folder (unet/ text_encoder/ tokenizer/ vae/ scheduler/); required"
    )
    resolution: int = setting(512, ge=8, doc="image size in pixels")
    sampler: dict[str, Any] = setting(
        default_factory=dict, doc="default sampling; verification and FID use it unless their own keys say otherwise"
    )
    dtype: Literal["float32", "float16", "bfloat16"] = setting(
        "float32", doc="the weights' dtype at load (mixed precision is the trainer's job)"
    )
    gradient_checkpointing: bool = setting(
        False, doc="training stages (protection, attacks) recompute activations to save memory"
    )
    name: str = setting("pretrained", doc="label in results and logs")

    def __post_init__(self) -> None:
        super().__post_init__()
        from_mapping(SamplerConfig, self.sampler)

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("sampler", "gradient_checkpointing"):
            d.pop(key)
        d["path"] = str(Path(self.path).expanduser().resolve()) if self.path else None
        return d

    def load(self, ctx: RunContext) -> DiffusionModel:
        if not self.path:
            raise ConfigError(
                f"model.path: model={self.name} needs a local Stable Diffusion folder; run with "
                f"model.path=/path/to/{self.name} (diffusers layout: unet/ text_encoder/ tokenizer/ vae/ scheduler/). "
                "Nothing is downloaded."
            )
        path = Path(self.path).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model.path: {path} does not exist or is not a folder")
        model = DiffusionModel.load(
            path,
            resolution=self.resolution,
            sampler=from_mapping(SamplerConfig, self.sampler),
            torch_dtype=getattr(torch, self.dtype),
        )
        model.gradient_checkpointing = self.gradient_checkpointing
        return model.to(ctx.torch_device())
