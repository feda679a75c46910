"""Image distortions: the image-level attacks on generated images, and a watermark decoder's distortion layer.

A watermark that survives fine-tuning is still useless if a cheap edit of the *output* erases it, so verification is
repeated on distorted copies of each generated image (``eval.image_attacks``). The same transforms double as a
distortion layer while training a watermark decoder: all but JPEG are built from differentiable torch ops, and JPEG
passes gradients straight through.

Images are float tensors ``(N, 3, H, W)`` in ``[-1, 1]``; every transform returns the same shape, range and dtype.
Randomness comes only from the ``generator`` argument, so a seeded CPU ``torch.Generator`` reproduces a run.

Defaults follow the SleeperMark evaluation: Gaussian blur 3x3 with sigma 4, Gaussian noise std 0.1, JPEG quality 50,
resize x0.5, sharpness 10, colour jitter factors in [0.8, 1.2]. The crop (keep 0.8 of each side) is our addition.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from adaptguard.core.config import Validated, setting
from adaptguard.core.errors import ConfigError

__all__ = [
    "IMAGE_TRANSFORMS",
    "ColorJitter",
    "Crop",
    "GaussianBlur",
    "GaussianNoise",
    "ImageTransform",
    "Jpeg",
    "Reencode",
    "Resize",
    "Sharpness",
    "make_image_transform",
    "make_image_transforms",
]


class ImageTransform(Validated, ABC):
    """One distortion an attacker can apply to a generated image without access to the model."""

    name: ClassVar[str]
    config_key: ClassVar[str] = "eval.image_attacks"

    @abstractmethod
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Distort ``images`` (N, 3, H, W) in [-1, 1]; random draws use ``generator`` only."""

    def key(self, name: str) -> str:
        return f"{self.config_key}.{self.name}.{name}"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}

    @property
    def label(self) -> str:
        """Name plus non-default settings, e.g. ``jpeg`` or ``jpeg(quality=30)``: a stable results key."""
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) != f.default]
        return f"{self.name}({', '.join(changed)})" if changed else self.name


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"expected a float tensor (N, 3, H, W) in [-1, 1], got {images.dtype} {tuple(images.shape)}")


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], in float32 at least: torchvision's colour ops assume that range, and CPU half is patchy."""
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    return (work + 1) / 2


def _from_unit(unit: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (unit * 2 - 1).clamp(-1, 1).to(like.dtype)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear: convex weights, so it can work directly in [-1, 1] and never leaves the range."""
    if tuple(images.shape[-2:]) == size:
        return images
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()  # CPU has no half antialias
    return F.interpolate(work, size=size, mode="bilinear", align_corners=False, antialias=True).to(images.dtype)


@dataclass(frozen=True)
class Jpeg(ImageTransform):
    """A real libjpeg round trip: the most common accidental and deliberate watermark remover."""

    name: ClassVar[str] = "jpeg"
    quality: int = setting(50, ge=1, le=100, doc="a real JPEG round trip (torchvision) at this quality")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        unit = _to_unit(images)
        pixels = (unit.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
        encoded = encode_jpeg(list(pixels), quality=self.quality)
        decoded = torch.stack(decode_jpeg(encoded, mode=ImageReadMode.RGB))
        compressed = decoded.to(device=unit.device, dtype=unit.dtype) / 255
        # Straight-through: JPEG has no useful gradient, so a decoder under training sees identity gradients.
        return _from_unit(unit + (compressed - unit).detach(), images)


@dataclass(frozen=True)
class GaussianBlur(ImageTransform):
    """Low-pass filtering: removes watermarks hidden in high spatial frequencies."""

    name: ClassVar[str] = "blur"
    kernel_size: int = setting(3, ge=1, doc="Gaussian blur: kernel size (odd)")
    sigma: float = setting(4.0, gt=0, doc="Gaussian blur: standard deviation, in pixels")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"{self.key('kernel_size')}: must be odd, got {self.kernel_size}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        unit = _to_unit(images)
        blurred = TF.gaussian_blur(unit, kernel_size=[self.kernel_size] * 2, sigma=[self.sigma] * 2)
        return _from_unit(blurred, images)


@dataclass(frozen=True)
class GaussianNoise(ImageTransform):
    """Additive pixel noise; ``std`` is in units of the [0, 1] image range, as papers report it."""

    name: ClassVar[str] = "noise"
    std: float = setting(0.1, ge=0, doc="additive Gaussian noise, in units of the [0, 1] range")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        unit = _to_unit(images)
        # Drawn on the CPU so that a CPU generator gives the same noise whatever device the images live on.
        noise = torch.randn(unit.shape, generator=generator, dtype=unit.dtype).to(unit.device)
        return _from_unit(unit + self.std * noise, images)


@dataclass(frozen=True)
class Resize(ImageTransform):
    """Down-scale and back up: decoders need their input size, and the detail lost on the way is what counts."""

    name: ClassVar[str] = "resize"
    scale: float = setting(0.5, gt=0, le=1, doc="down-scale by this factor and back up")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        h, w = images.shape[-2:]
        small = _resize(images, (max(1, round(h * self.scale)), max(1, round(w * self.scale))))
        return _resize(small, (h, w)).clamp(-1, 1)


@dataclass(frozen=True)
class Crop(ImageTransform):
    """Center crop resized back to full size: discards the border and rescales what is left."""

    name: ClassVar[str] = "crop"
    keep: float = setting(0.8, gt=0, le=1, doc="centre crop of this share of each side, resized back (ours)")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        h, w = images.shape[-2:]
        ch, cw = max(1, round(h * self.keep)), max(1, round(w * self.keep))
        top, left = (h - ch) // 2, (w - cw) // 2
        cropped = images[..., top : top + ch, left : left + cw]
        return _resize(cropped, (h, w)).clamp(-1, 1)


@dataclass(frozen=True)
class ColorJitter(ImageTransform):
    """Random brightness, contrast and saturation changes, one draw per image, applied in that fixed order."""

    name: ClassVar[str] = "color"
    brightness: tuple[float, float] = setting((0.8, 1.2), doc="random brightness factor per image, [low, high]")
    contrast: tuple[float, float] = setting((0.8, 1.2), doc="random contrast factor per image, [low, high]")
    saturation: tuple[float, float] = setting((0.8, 1.2), doc="random saturation factor per image, [low, high]")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("brightness", "contrast", "saturation"):
            low, high = getattr(self, key)
            if not 0 <= low <= high < math.inf:
                raise ConfigError(f"{self.key(key)}: must be [low, high] with 0 <= low <= high, got {[low, high]}")

    def _factors(self, bounds: tuple[float, float], n: int, generator: torch.Generator | None) -> list[float]:
        low, high = bounds
        return (low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)).tolist()

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        unit = _to_unit(images)
        n = unit.shape[0]
        draws = zip(
            self._factors(self.brightness, n, generator),
            self._factors(self.contrast, n, generator),
            self._factors(self.saturation, n, generator),
            strict=True,
        )
        out = []
        for image, (b, c, s) in zip(unit, draws, strict=True):
            image = TF.adjust_brightness(image, b)
            image = TF.adjust_contrast(image, c)
            out.append(TF.adjust_saturation(image, s))
        return _from_unit(torch.stack(out), images)


@dataclass(frozen=True)
class Sharpness(ImageTransform):
    """Strong sharpening amplifies high frequencies, the opposite failure mode to blur."""

    name: ClassVar[str] = "sharpness"
    factor: float = setting(10.0, ge=0, doc="sharpening factor (1: unchanged)")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        return _from_unit(_adjust_sharpness(_to_unit(images), self.factor), images)


def _adjust_sharpness(unit: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's ``adjust_sharpness`` (PIL's formula), rewritten out of place: the original blends in place,
    which breaks autograd, and decoder training needs gradients through this transform."""
    if min(unit.shape[-2:]) <= 2:
        return unit
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=unit.dtype, device=unit.device)
    kernel = (kernel / kernel.sum()).expand(unit.shape[1], 1, 3, 3)
    smoothed = F.conv2d(unit, kernel, groups=unit.shape[1])  # valid conv: the 1-pixel border keeps its value
    interior = unit[..., 1:-1, 1:-1]
    sharpened = interior + (1.0 - factor) * (smoothed - interior)
    out = unit.clone()
    out[..., 1:-1, 1:-1] = sharpened
    return out


@dataclass(frozen=True)
class Reencode(ImageTransform):
    """Through another autoencoder and back (a regeneration attack): what the decoder of a watermarking VAE or the
    latent a denoiser marked leaves in the pixels must survive a VAE that never saw the watermark."""

    name: ClassVar[str] = "reencode"
    vae: str | None = setting(
        None,
        doc="an AutoencoderKL folder (Stable Diffusion's `vae/`, a pipeline folder with one, or a base model "
        "adaptguard wrote); required",
    )
    sample: bool = setting(False, doc="draw the latent from the encoder's distribution (else its mode)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.vae:
            raise ConfigError(f"{self.key('vae')}: required; an AutoencoderKL folder, e.g. a Stable Diffusion "
                              "checkpoint's vae/ or a base model folder adaptguard wrote")  # fmt: skip
        _autoencoder(self.vae, self.key("vae"))  # a missing or unreadable folder fails before any work

    @property
    def label(self) -> str:
        """The folder by its last two path parts, without a slash (a results key and wandb name, not a path):
        ``reencode(vae=sd15:vae)``."""
        short = ":".join(Path(self.vae or "").expanduser().parts[-2:])
        return f"reencode(vae={short}{', sample' if self.sample else ''})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        vae = _autoencoder(self.vae, self.key("vae")).to(images.device)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if images.shape[-1] % factor or images.shape[-2] % factor:
            raise ConfigError(f"{self.key('vae')}: its encoder downsamples by {factor}; the images are "
                              f"{tuple(images.shape[-2:])}")  # fmt: skip
        dist = vae.encode(images.to(vae.dtype)).latent_dist
        if self.sample:
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype).to(images.device)
            latents = dist.mean + dist.std * noise
        else:
            latents = dist.mode()
        return vae.decode(latents).sample.clamp(-1, 1).to(images.dtype)


@functools.lru_cache(maxsize=4)
def _autoencoder(path: str, key: str) -> Any:
    """One loaded copy per folder for every transform that re-encodes through it (read-only: eval, no grad)."""
    return read_autoencoder(path, key).requires_grad_(False).eval()


def read_autoencoder(path: str | Path, key: str) -> Any:
    """An ``AutoencoderKL`` from a ``vae/`` folder or a pipeline folder holding one; errors name ``key``."""
    from diffusers import AutoencoderKL  # only the autoencoder's users need diffusers

    folder = Path(path).expanduser()
    folder = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}: {folder} is not an AutoencoderKL folder (no config.json); give a vae/ folder or "
                          "a pipeline folder that has one")  # fmt: skip
    try:
        return AutoencoderKL.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{key}: {folder} is not an AutoencoderKL folder ({str(err).splitlines()[0][:160]})"
        ) from None


IMAGE_TRANSFORMS: dict[str, type[ImageTransform]] = {
    cls.name: cls for cls in (Jpeg, GaussianBlur, GaussianNoise, Resize, Crop, ColorJitter, Sharpness, Reencode)
}

ImageTransformSpec = str | Mapping[str, Any] | ImageTransform


def _lookup(name: Any, key: str = "eval.image_attacks") -> type[ImageTransform]:
    if not isinstance(name, str) or name not in IMAGE_TRANSFORMS:
        raise ConfigError(f"{key}: {name!r} is unknown; valid names: {', '.join(sorted(IMAGE_TRANSFORMS))}")
    return IMAGE_TRANSFORMS[name]


def make_image_transform(spec: ImageTransformSpec, key: str = "eval.image_attacks") -> ImageTransform:
    """Build a transform from a config entry: ``"jpeg"``, ``{"name": "jpeg", "quality": 30}`` or an instance;
    ``key``: the config key errors name."""
    if isinstance(spec, ImageTransform):
        return spec
    if isinstance(spec, str):
        return _lookup(spec, key)()
    if isinstance(spec, Mapping):
        settings = dict(spec)
        if "name" not in settings:
            raise ConfigError(f"{key}: {settings!r} has no 'name'; valid names: {', '.join(sorted(IMAGE_TRANSFORMS))}")
        cls = _lookup(settings.pop("name"), key)
        valid = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in settings if k not in valid)
        if unknown:
            raise ConfigError(f"{key}.{cls.name}.{unknown[0]}: unknown key; valid keys: {', '.join(valid)}")
        return cls(**settings)
    raise ConfigError(f"{key}: an entry must be a name or a mapping with 'name', got {type(spec).__name__}")


def make_image_transforms(
    specs: ImageTransformSpec | Iterable[ImageTransformSpec], key: str = "eval.image_attacks"
) -> list[ImageTransform]:
    """Build every configured transform; two entries with the same label would overwrite each other's results."""
    if isinstance(specs, (str, Mapping, ImageTransform)):
        specs = [specs]
    transforms = [make_image_transform(spec, key) for spec in specs]
    seen: set[str] = set()
    for transform in transforms:
        if transform.label in seen:
            raise ConfigError(f"{key}: {transform.label!r} is listed twice (same name and settings)")
        seen.add(transform.label)
    return transforms
