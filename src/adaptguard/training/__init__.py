from adaptguard.training.module import DenoisingModule, OptimConfig

__all__ = ["DenoisingModule", "OptimConfig"]
