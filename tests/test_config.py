"""Every config file composes and instantiates, so a broken config cannot land."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "dataset", "defense", "attack", "eval", "trainer", "logger"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


CASES = [(g, o) for g in GROUPS for o in _options(g)]


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_group_option_composes_and_instantiates(group, option, tmp_path):
    cfg = _compose([f"{group}={option}", f"paths.output_dir={tmp_path}"])
    node = cfg[group]
    if group == "logger" and "_target_" not in node:
        return  # logger=none
    obj = instantiate(node, _convert_="all")
    if group == "trainer":
        # a partial Trainer: build one (GPU options are checked for valid keys on a CPU-only machine)
        import torch

        cpu = {} if torch.cuda.is_available() else {"accelerator": "cpu", "devices": 1, "precision": "32-true"}
        obj = obj(max_steps=1, logger=False, **cpu)
    assert obj is not None


@pytest.mark.parametrize("preset", _options("experiment"))
def test_every_experiment_preset_composes_and_instantiates(preset, tmp_path):
    cfg = _compose([f"experiment={preset}", f"paths.output_dir={tmp_path}"])
    for group in ("model", "dataset", "defense", "attack", "eval"):
        instantiate(cfg[group], _convert_="all")


@pytest.mark.parametrize("launcher", _options("hydra/launcher"))
def test_launcher_configs_compose(launcher):
    cfg = _compose([f"hydra/launcher={launcher}"])
    assert "_target_" in cfg.hydra.launcher


def test_default_config_is_the_tiny_no_defense_no_attack_experiment():
    cfg = _compose([])
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.dataset, choices.defense, choices.attack, choices.logger) == (
        "tiny", "shapes", "none", "none", "wandb",
    )  # fmt: skip
    assert cfg.logger.offline is True
    assert OmegaConf.select(cfg, "logger.tags") == ["defense:none", "attack:none", "dataset:shapes", "model:tiny"]


def test_layers_tool_config_composes_with_a_full_probe():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="layers", overrides=["attack=lora"], return_hydra_config=True)
    assert cfg.hydra.runtime.choices.attack == "lora" and cfg.busy_fraction == 0.2 and cfg.tuned is None
    instantiate(cfg.attack, _convert_="all")
