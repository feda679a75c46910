from adaptguard.training.module import DenoisingModule, OptimConfig, final_terms

__all__ = ["DenoisingModule", "OptimConfig", "final_terms"]
