"""Every config file composes and builds the object it names, so a broken config cannot land."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from adaptguard.attacks.base import Attack
from adaptguard.cli.build import defense_node, instantiate
from adaptguard.cli.config import compose, config_dir
from adaptguard.cli.per_option import apply_per_option, experiment_config
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.errors import ConfigError
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense
from adaptguard.metrics.features import FEATURE_KIND, feature_spec
from adaptguard.pipeline import EvalConfig

CONF = config_dir()


def _options(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))


def test_config_dir_is_the_checkout_conf():
    assert CONF == Path(__file__).resolve().parents[1] / "conf" and (CONF / "config.yaml").is_file()


@pytest.mark.parametrize("option", _options("defense"))
def test_every_defense_config_builds_its_defense(option, tmp_path):
    defense = instantiate(defense_node(compose([f"defense={option}"], output_dir=tmp_path).defense))
    assert isinstance(defense, Defense) and defense.name == option
    assert defense.describe()["name"] == option


@pytest.mark.parametrize("option", _options("attack"))
def test_every_attack_config_builds_its_attack(option, tmp_path):
    attack = instantiate(compose([f"attack={option}"], output_dir=tmp_path).attack)
    assert isinstance(attack, Attack) and attack.name == option
    assert attack.adapts == (option != "none")


@pytest.mark.parametrize("option", _options("dataset"))
def test_every_dataset_config_builds_a_data_module_with_the_three_parties(option, tmp_path):
    data = instantiate(compose([f"dataset={option}"], output_dir=tmp_path).dataset)
    assert isinstance(data, CaptionedImageDataModule) and data.name == option
    assert {"owner", "attacker", "eval"} <= set(data.splits)


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_config_describes_its_weights(option, tmp_path):
    cfg = compose([f"model={option}"], output_dir=tmp_path)
    source = instantiate(cfg.model)
    assert source.name == option and source.describe()["resolution"] == cfg.model.resolution


@pytest.mark.parametrize("option", ["tiny", "micro", "pixel", "pixel_micro", "micro_dit", "tiny_dit"])
def test_every_built_in_model_ships_its_weights(option, tmp_path):
    """A fresh clone pretrains nothing for the built-in configs: their weights are in the package."""
    source = instantiate(compose([f"model={option}"], output_dir=tmp_path).model)
    shipped = ArtifactCache(tmp_path).shipped("base", source.describe())
    denoiser = "transformer" if option.endswith("_dit") else "unet"
    assert shipped is not None and (shipped / "model" / denoiser / "config.json").is_file()
    assert (shipped / "model" / "vae").is_dir() == (source.vae is not None)


@pytest.mark.parametrize("option", ["tiny", "micro", "pixel", "pixel_micro", "micro_dit", "tiny_dit"])
def test_the_default_shapes_data_of_every_built_in_model_ships_its_fid_extractor(option, tmp_path):
    """The data's description keys the extractor (and every protection): a stray attribute on the shapes
    world once changed it, and every run trained its own extractor, at 28x the time of a test that uses it."""
    cfg = compose([f"model={option}"], output_dir=tmp_path)
    data = instantiate(cfg.dataset)
    spec = feature_spec(data.feature_extractor_spec())
    shipped = ArtifactCache(tmp_path).shipped(FEATURE_KIND, spec)
    assert shipped is not None and (shipped / "net.pt").is_file()


@pytest.mark.parametrize("option", _options("trainer"))
def test_every_trainer_config_builds_a_trainer(option, tmp_path):
    factory = instantiate(compose([f"trainer={option}"], output_dir=tmp_path).trainer)
    # GPU options are built on the CPU here: their keys are still checked by Lightning
    cpu = (
        {}
        if torch.cuda.is_available()
        else {"accelerator": "cpu", "devices": 1, "precision": "32-true", "strategy": "auto"}
    )
    trainer = factory(max_steps=1, logger=False, **cpu)
    assert isinstance(trainer, L.Trainer) and trainer.max_steps == 1


@pytest.mark.parametrize("option", [o for o in _options("logger") if o != "none"])
def test_every_logger_config_builds_a_lightning_logger(option, tmp_path):
    assert isinstance(instantiate(compose([f"logger={option}"], output_dir=tmp_path).logger), Logger)


@pytest.mark.parametrize("option", _options("callbacks"))
def test_every_callbacks_config_builds_lightning_callbacks(option, tmp_path):
    nodes = compose([f"callbacks={option}"], output_dir=tmp_path).callbacks or {}
    assert all(isinstance(instantiate(node), L.Callback) for node in nodes.values())


def test_eval_config_builds(tmp_path):
    ev = instantiate(compose([], output_dir=tmp_path).eval)
    assert isinstance(ev, EvalConfig) and ev.fid is not None and ev.fprs == [0.01, 0.001]


@pytest.mark.parametrize("preset", _options("experiment"))
def test_every_experiment_preset_composes_and_builds(preset, tmp_path):
    for overrides in _sweep_jobs(preset):  # each value of each swept axis, the others at their first value
        cfg = apply_per_option(compose([f"experiment={preset}", *overrides], output_dir=tmp_path))
        built = {group: instantiate(cfg[group]) for group in ("model", "dataset", "defense", "attack", "eval")}
        assert built["defense"].name == cfg.defense.name and built["attack"].name == cfg.attack.name


def _sweep_jobs(preset: str) -> list[list[str]]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    axes = {str(k): str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}
    first = [f"{k}={v[0]}" for k, v in axes.items()]
    return [first] + [[*first[:i], f"{k}={value}", *first[i + 1 :]]
                      for i, (k, values) in enumerate(axes.items()) for value in values[1:]]  # fmt: skip


def test_comparison_presets_sweep_their_axes_with_three_seeds():
    for preset in ("compare_watermarks", "compare_freezing", "forgetting_curves"):
        seeds = [o for job in _sweep_jobs(preset) for o in job if o.startswith("seed=")]
        assert sorted(set(seeds)) == ["seed=0", "seed=1", "seed=2"], preset
    defenses = {o for job in _sweep_jobs("compare_watermarks") for o in job if o.startswith(("defense=", "attack="))}
    assert defenses == {"defense=backdoor", "defense=aiao", "defense=aiao_busy", "defense=sleepermark",
                        "defense=stable_signature", "defense=aqualora", "attack=full", "attack=lora", "attack=dreambooth", "attack=prune", "attack=quantize"}  # fmt: skip
    axes = {o for job in _sweep_jobs("compare_backbones") for o in job}
    assert axes == {"model=tiny", "model=tiny_dit", "defense=backdoor", "defense=aiao", "defense=sleepermark",
                    "attack=full", "attack=lora", "seed=0", "seed=1", "seed=2"}  # fmt: skip


def test_the_adaptation_comparison_sweeps_merges_by_alpha_and_vae_swaps_on_the_pages_protections(tmp_path):
    merges = {o for job in _sweep_jobs("compare_adaptations") for o in job}
    assert merges == {"defense=backdoor", "defense=aiao", "defense=sleepermark", "defense=stable_signature", "defense=aqualora",
                      "attack=merge", "attack.alpha=0.25",
                      "attack.alpha=0.5", "attack.alpha=0.75", "seed=0", "seed=1", "seed=2"}  # fmt: skip
    swaps = {o for job in _sweep_jobs("compare_adaptations_vae_swap") for o in job}
    assert swaps == {"defense=backdoor", "defense=aiao", "defense=sleepermark", "defense=stable_signature", "defense=aqualora",
                     "attack=vae_swap", "seed=0", "seed=1",
                     "seed=2"}  # fmt: skip
    for preset, attack in (("compare_adaptations", "merge"), ("compare_adaptations_vae_swap", "vae_swap")):
        job = _job([f"experiment={preset}", "defense=sleepermark"], tmp_path)
        page = _job(["experiment=page/compare_watermarks", "defense=sleepermark"], tmp_path)
        assert job["defense"] == page["defense"] and job["attack"]["name"] == attack  # the page's protections


def test_the_adaptive_comparison_targets_the_pages_protections(tmp_path):
    axes = {o for job in _sweep_jobs("compare_adaptive") for o in job}
    assert axes == {"defense=backdoor", "defense=aiao", "defense=sleepermark", "defense=aqualora", "attack=targeted",
                    "attack=distill", "seed=0", "seed=1", "seed=2"}  # fmt: skip
    for defense in ("aiao", "sleepermark"):
        job = _job(["experiment=compare_adaptive", f"defense={defense}"], tmp_path)
        page = _job(["experiment=page/compare_watermarks", f"defense={defense}"], tmp_path)
        assert job["defense"] == page["defense"]  # the page's cached protections
        assert (job["attack"]["name"], job["attack"]["method"], job["attack"]["steps"]) == ("targeted", defense, 100)


def test_the_backbone_comparison_runs_the_watermark_pages_jobs_on_both_models(tmp_path):
    """Its UNet jobs are page/compare_watermarks' (the same config: the same cached protections); its
    transformer jobs differ from them in the model alone."""
    for defense in ("backdoor", "aiao", "sleepermark"):
        job = ["experiment=compare_backbones", f"defense={defense}", "attack=lora"]
        page = _job(["experiment=page/compare_watermarks", f"defense={defense}", "attack=lora"], tmp_path)
        assert _job([*job, "model=tiny"], tmp_path) == page
        dit = _job([*job, "model=tiny_dit"], tmp_path)
        assert {k for k in page if page[k] != dit[k]} == {"model"} and dit["model"]["name"] == "tiny_dit"


def test_aiao_ablations_differ_from_aiao_in_their_own_settings_only(tmp_path):
    """The 2x2 of lazy / busy blocks x Monte-Carlo / one fixed pair: each cell changes its axis and nothing else."""

    def settings(name: str) -> dict:
        cfg = compose([f"defense={name}"], output_dir=tmp_path).defense
        return {k: v for k, v in cfg.items() if k != "name"}

    aiao = settings("aiao")
    cells = {"aiao_busy": {"layers": "busy"}, "aiao_one_pair": {"monte_carlo": False},
             "aiao_busy_one_pair": {"layers": "busy", "monte_carlo": False}}  # fmt: skip
    for name, changed in cells.items():
        differs = {k: v for k, v in settings(name).items() if aiao.get(k) != v}
        assert differs == changed, name
    jobs = {o for job in _sweep_jobs("aiao_ablation") for o in job if o.startswith("defense=")}
    assert jobs == {f"defense={d}" for d in ("aiao", *cells)}


def test_per_option_settings_apply_to_their_option_only(tmp_path):
    preset = ["experiment=compare_watermarks", "++per_option.attack.full.steps=7"]
    full = apply_per_option(compose([*preset, "attack=full"], output_dir=tmp_path))
    prune = apply_per_option(compose([*preset, "attack=prune"], output_dir=tmp_path))
    assert full.attack.steps == 7 and "steps" not in prune.attack
    with pytest.raises(ConfigError, match=r"per_option\.attack\.full\.stepz: attack=full has no key 'stepz'"):
        apply_per_option(compose(["attack=full", "++per_option.attack.full.stepz=7"], output_dir=tmp_path))


@pytest.mark.parametrize("launcher", _options("hydra/launcher"))
def test_launcher_configs_compose(launcher):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")


def test_default_config_is_the_tiny_model_on_shapes_with_an_offline_wandb_logger(tmp_path):
    cfg = compose([], output_dir=tmp_path)
    assert (cfg.model.name, cfg.dataset.name, cfg.logger.offline) == ("tiny", "shapes", True)
    assert OmegaConf.select(cfg, "logger.tags") == [
        f"defense:{cfg.defense.name}",
        f"attack:{cfg.attack.name}",
        "dataset:shapes",
        "model:tiny",
    ]


def test_layers_tool_config_composes_with_a_full_probe():
    cfg = compose(["attack=lora"], config_name="layers")
    assert cfg.busy_fraction == 0.2 and cfg.tuned is None
    assert instantiate(cfg.attack).name == "lora"


def _job(overrides: list[str], tmp_path) -> dict:
    return experiment_config(apply_per_option(compose(overrides, output_dir=tmp_path)))


AIAO_CELLS = ("aiao", "aiao_busy", "aiao_one_pair", "aiao_busy_one_pair")


def test_page_presets_share_what_their_comparisons_need(tmp_path):
    """The freezing reference differs only in the defense; the curves and the 2x2 embed as compare_watermarks."""
    for attack in ("full", "lora"):
        masked = _job(["experiment=page/compare_freezing", "defense=freezeasguard", f"attack={attack}"], tmp_path)
        reference = _job(["experiment=page/compare_freezing_none", f"attack={attack}"], tmp_path)
        assert {k: v for k, v in masked.items() if k != "defense"} == {
            k: v for k, v in reference.items() if k != "defense"
        }
    immunized = _job(["experiment=page/compare_freezing_imma", "attack=full"], tmp_path)
    masked = _job(["experiment=page/compare_freezing", "defense=freezeasguard", "attack=full"], tmp_path)
    assert {k: v for k, v in masked.items() if k != "defense"} == {k: v for k, v in immunized.items() if k != "defense"}
    assert immunized["defense"]["name"] == "imma" and immunized["defense"]["steps"] == 300
    for defense in ("backdoor", "aiao", "aiao_busy", "sleepermark"):
        curves = _job(["experiment=page/forgetting_curves", f"defense={defense}"], tmp_path)
        table = _job(["experiment=page/compare_watermarks", f"defense={defense}"], tmp_path)
        assert curves["defense"] == table["defense"] and curves["model"] == table["model"]
    cells = {d: _job(["experiment=page/aiao_ablation", f"defense={d}"], tmp_path) for d in AIAO_CELLS}
    assert cells["aiao"]["defense"] == _job(["experiment=page/compare_watermarks", "defense=aiao"], tmp_path)["defense"]
    for name, cell in cells.items():
        differing = {k for k in cell["defense"] if cell["defense"][k] != cells["aiao"]["defense"][k]}
        assert differing <= {"name", "layers", "monte_carlo"}, (name, differing)
