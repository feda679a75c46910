"""Run one experiment (or a sweep with -m): python -m experiments.run defense=backdoor attack=lora"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from experiments.cli import check_overrides, run_main


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_main(cfg)


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
