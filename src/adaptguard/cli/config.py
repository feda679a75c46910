"""Finding and composing the Hydra config tree (``conf/``) from any working directory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from adaptguard.core.errors import ConfigError

CONFIG_DIR_ENV = "ADAPTGUARD_CONFIG_DIR"


def config_dir() -> Path:
    """``$ADAPTGUARD_CONFIG_DIR``, else the ``conf/`` of the checkout this package is installed from."""
    env = os.environ.get(CONFIG_DIR_ENV)
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "conf"
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"{CONFIG_DIR_ENV}: no config.yaml in {path}; point it at adaptguard's conf/ folder "
            "(or install adaptguard in editable mode from its checkout: pip install -e .)"
        )
    return path


def compose(overrides: Sequence[str] = (), output_dir: Path | None = None, config_name: str = "config") -> DictConfig:
    """The config a command line with ``overrides`` would run, composed in-process (tests, notebooks).

    ``output_dir`` stands in for the run directory Hydra would create.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=[*overrides, *extra])
