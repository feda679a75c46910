"""adaptguard: does a diffusion-model protection survive fine-tuning?

The library is usable without Hydra: build a model source, a data module, a defense
and an attack, then call :func:`adaptguard.pipeline.run_experiment`.
"""

__version__ = "0.1.0"
