from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.sources import PretrainConfig, PretrainedSource, TinyModelSource
from adaptguard.models.tiny import build_tiny_model

__all__ = [
    "DiffusionModel",
    "SamplerConfig",
    "PretrainConfig",
    "PretrainedSource",
    "TinyModelSource",
    "build_tiny_model",
]
