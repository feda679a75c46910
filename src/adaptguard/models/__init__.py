"""The model bundle (a UNet or an SD3 transformer, text encoders and optional VAE) and the tiny models built
from config. Importing the package registers every family's folder layout with ``DiffusionModel.load``."""

from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.sd3 import SD3Model
from adaptguard.models.tiny import build_tiny_model

__all__ = ["DiffusionModel", "SD3Model", "SamplerConfig", "build_tiny_model"]
