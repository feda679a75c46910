"""Training: the denoising LightningModule, the fit loop, the fine-tuning recipe, pretraining."""

from adaptguard.training.finetune import Finetuned, TrainSettings, finetune
from adaptguard.training.loop import StepTimer, final_terms, fit, parameter_counts
from adaptguard.training.module import DenoisingModule, Objective, OptimConfig, drop_captions

__all__ = [
    "drop_captions",
    "DenoisingModule",
    "Finetuned",
    "Objective",
    "OptimConfig",
    "StepTimer",
    "TrainSettings",
    "final_terms",
    "finetune",
    "fit",
    "parameter_counts",
]
