"""``adaptguard protect experiment=<preset>`` for every preset in conf/experiment/.

A preset's attack and evaluation settings (``attack.steps``, ``eval.adaptation``, ...) are for ``run``:
``protect`` ignores them, and applies the preset's ``per_option`` entry for its defense as ``run`` does.
Each protection runs for real, shrunk to a few steps on the micro model through ``per_option`` (which a
preset's own entries merge with); the paper presets stop at the Stable Diffusion folder they need.
"""

from pathlib import Path

import pytest

from adaptguard.cli.config import config_dir
from adaptguard.cli.protect import protect
from adaptguard.core.errors import ConfigError
from tests.helpers import cli, compose
from tests.test_datasets import write_afhq, write_coco

pytestmark = pytest.mark.slow

PRESETS = sorted(str(p.relative_to(config_dir() / "experiment").with_suffix(""))
                 for p in (config_dir() / "experiment").rglob("*.yaml"))  # fmt: skip
AIAO = "{probe_steps: 1, steps: 2, batch_size: 2, subpaths_per_step: 1, num_subpaths: 4, null_keys: 1}"
SHORT = [  # per_option: each preset's own entry for its defense merges with these, and they win
    f"++per_option.defense.aiao={AIAO}",
    f"++per_option.defense.aiao_busy={AIAO}",
    "++per_option.defense.backdoor={steps: 2, batch_size: 2, lr: 1e-3, trigger_fraction: 0.5, num_samples: 2}",
    "++per_option.defense.freezeasguard={user_steps: 2, user_batch_size: 2, steps: 2, batch_size: 2}",
    "++per_option.defense.imma={steps: 2, batch_size: 2}",
]
MICRO = ["model=micro", "model.sampler.steps=2", "trainer=cpu", "progress=false", *SHORT]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for every preset: presets that share a defense and data protect once."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.mark.parametrize("preset", [p for p in PRESETS if not p.startswith("paper/")])
def test_protect_takes_every_experiment_preset(preset, cache, tmp_path):
    cfg = compose([f"experiment={preset}", *MICRO], config_name="protect")
    if cfg.defense.name == "none":  # the unprotected reference of a comparison: nothing to protect
        with pytest.raises(ConfigError, match="defense=none has no key to protect with"):
            protect(cfg, tmp_path / "out")
        return
    report = protect(cfg, tmp_path / "out")
    assert report["defense"] == cfg.defense.name and report["model"] == "micro"
    assert report["config"]["steps"] == 2  # the per-option entry applied over the preset's own
    assert (tmp_path / "out" / "model").is_dir()
    keyless = cfg.defense.name == "imma"  # immunized weights: the published model is all there is
    assert (tmp_path / "out" / "owner.key").is_file() != keyless and ("key_file" in report) != keyless
    if report["protected"] is None:  # freezing defenses: a mask, nothing to verify
        assert "nothing to verify" in report["decision"]["rule"]


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.startswith("paper/")])
def test_paper_presets_stop_at_the_stable_diffusion_folder_they_need(preset, tmp_path):
    """Their data on disk (a miniature copy) gets them past the data checks to ``model.path``."""
    name = compose([f"experiment={preset}"], config_name="protect").dataset.name
    root = {"coco": write_coco, "afhq": write_afhq}[name](tmp_path / name)
    small = ["dataset.splits.attacker.offset=0"] if name == "coco" else []  # 6 images, not COCO's 118k
    cfg = compose([f"experiment={preset}", f"dataset.root={root}", *small, "trainer=cpu", "progress=false"],
                  config_name="protect")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^model\.path: model=sd15 needs a local Stable Diffusion folder"):
        protect(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "owner.key").exists()


def test_the_protect_command_takes_a_preset_with_attack_settings(cache, tmp_path):
    """The issue's command: quickstart sets attack.steps, which protect's attack=none does not have."""
    out = Path(tmp_path / "release")
    result = cli(["protect", "experiment=quickstart", *MICRO, f"out={out}"])
    assert result.code == 0, result.stderr
    assert "protected with aiao" in result.stdout and (out / "owner.key").is_file()
