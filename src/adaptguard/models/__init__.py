"""The model bundle (a UNet, text encoder and optional VAE) and the tiny models built from config."""

from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.tiny import build_tiny_model

__all__ = ["DiffusionModel", "SamplerConfig", "build_tiny_model"]
