"""Bad input gives one clear message naming the key and the fix: exit status 2, no traceback."""

import json

import pytest
import torch
import yaml

from adaptguard.cli.callbacks import redact_hydra_files
from adaptguard.core.redact import secret_names
from tests.helpers import cli

CASES = {
    "unknown group option": (["defense=nonexistent"], ["defense", "nonexistent", "Available options"]),
    "missing model.path": (["model=sd15"], ["model.path", "model.path=/path/to/sd15"]),
    "malformed override": (["attack.steps=[1,"], ["attack.steps=[1,"]),
    "unknown key": (["attack.rnk=3"], ["attack.rnk"]),
    "bad value": (["attack=lora", "attack.rank=0"], ["attack.rank: must be >= 1, got 0"]),
    "wrong type": (["attack=lora", "attack.steps=abc"], ["attack.steps: expected an integer, got 'abc'"]),
    "wrong type in a defense": (["defense=aiao", "defense.probe_lr=fast"], ["defense.probe_lr: expected a number"]),
    "a defense's own range": (["defense=aiao", "defense.probe_lr=0"], ["defense.probe_lr: must be > 0, got 0.0"]),
    "a choice": (["defense=aiao", "defense.layers=middle"], ["defense.layers: 'middle' is not one of"]),
    "nested key": (["defense=sleepermark", "defense.codec.bits=0"], ["defense.codec.bits: must be >= 1"]),
    "unexpected key": (["defense=backdoor", "+defense.colour=red"], ["BackdoorDefense", "'colour'"]),
    "freezing without domains": (["defense=freezeasguard"], ["dataset.splits", "experiment=freeze"]),
    "bad freeze ratio": (["experiment=freeze", "defense.rho=1.5"], ["defense.rho: must be in [0, 1], got 1.5"]),
    "bad adaptation domain": (
        ["experiment=freeze", "~eval.adaptation.legal.eval"],
        ["eval.adaptation.legal", "train and eval"],
    ),
    "bad prune ratio": (["attack=prune", "attack.ratio=1.5"], ["attack.ratio: must be in [0, 1), got 1.5"]),
    "curve past training": (
        ["attack=lora", "attack.steps=10", "eval.at_steps=[0,20]"],
        ["eval.at_steps", "attack.steps=10"],
    ),
    "bad split filter": (["dataset.splits.owner.where.kind=[hexagon]"], ["dataset.splits.owner.where.kind"]),
    "bad image attack setting": (["eval.image_attacks=[{name:jpeg,quality:0}]"], ["eval.image_attacks.jpeg.quality"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_message(name, cli_env, tmp_path):
    args, needles = CASES[name]
    proc = cli(["run", *args, "logger=none", f"hydra.run.dir={tmp_path}/run"])
    err = proc.stderr
    assert proc.code != 0
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    for needle in needles:
        assert needle in err, err
    own_lines = [line for line in err.strip().splitlines() if not line.startswith("\t")]  # not Hydra's option list
    assert len(own_lines) <= 10, err
    assert not (tmp_path / "cache" / "protected").exists()  # failed before any work


def test_config_errors_exit_with_status_2(cli_env, tmp_path):
    assert cli(["run", "attack=lora", "attack.steps=abc", "logger=none", f"hydra.run.dir={tmp_path}"]).code == 2


def test_empty_dreambooth_instance_folder_is_one_clear_message(cli_env, tmp_path):
    (tmp_path / "subject").mkdir()
    proc = cli(["run", "attack=dreambooth", f"attack.instance_dir={tmp_path / 'subject'}", "logger=none",
                f"hydra.run.dir={tmp_path}/run"])  # fmt: skip
    assert proc.code == 2 and "Traceback" not in proc.stderr
    assert "attack.instance_dir" in proc.stderr and "holds no images" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "protected").exists() and "sampling" not in proc.stderr  # failed before work


def test_unknown_command_lists_the_commands():
    proc = cli(["fly"])
    assert proc.code == 2 and "unknown command 'fly'" in proc.stderr and "run" in proc.stderr
    assert "report" in cli(["--help"]).stdout


def test_sweep_files_are_redacted(tmp_path):
    """multirun.yaml (sweep dir) and each job's .hydra files lose secret values and overrides."""
    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    hydra_node = {"overrides": {"task": ["defense=backdoor", "defense.key_seed=55501234"]},
                  "job": {"override_dirname": "defense.key_seed=55501234,defense=backdoor"}}  # fmt: skip
    config = {"defense": {"_target_": "adaptguard.defenses.backdoor.BackdoorDefense", "name": "backdoor",
                          "key_seed": 55501234, "trigger": "zz#9"}}  # fmt: skip
    (tmp_path / "sweep" / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra_node, **config}))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra_node}))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(hydra_node["overrides"]["task"]))
    redact_hydra_files(job, secret_names(config))
    for path in [tmp_path / "sweep" / "multirun.yaml", *(job / ".hydra").iterdir()]:
        text = path.read_text()
        assert "55501234" not in text and "zz#9" not in text, path
    assert yaml.safe_load((tmp_path / "sweep" / "multirun.yaml").read_text())["defense"]["name"] == "backdoor"


def test_secret_fields_are_declared_on_the_classes():
    names = secret_names({"defense": {"_target_": "adaptguard.defenses.aiao.AIAODefense"}})
    assert {"key_seed", "trigger", "mask_seed"} <= names and "steps" not in names


def test_the_sweep_launcher_log_shows_no_secret_override(cli_env, tmp_path):
    """Hydra's launcher logs every job's overrides before it runs: secret values are redacted there too."""
    result = cli(["run", "-m", "model=micro", "defense=backdoor", "defense.key_seed=987654", "attack.lr=-1",
                  "logger=none", f"hydra.sweep.dir={tmp_path}"])  # fmt: skip
    output = result.stdout + result.stderr
    assert "#0 : " in output and "defense.key_seed=<redacted>" in output and "987654" not in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_gpu_trainer_without_a_gpu_is_one_line_before_any_work(cli_env, tmp_path):
    result = cli(["run", "model=micro", "trainer=gpu", "logger=none", f"hydra.run.dir={tmp_path}"])
    assert result.code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: trainer.accelerator: gpu needs a CUDA GPU")
    record = json.loads((tmp_path / "results.json").read_text())  # the run says why it did not run
    assert record["status"] == "failed" and record["error"]["stage"] == "config" and record["error"]["exit_code"] == 2


def test_an_unwritable_cache_is_one_line_naming_the_variable(cli_env, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("ADAPTGUARD_CACHE", str(tmp_path / "file" / "cache"))
    result = cli(["run", "model=micro", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: ADAPTGUARD_CACHE: {tmp_path / 'file' / 'cache'} is not writable")


@pytest.mark.parametrize(
    ("override", "hint"),
    [("attack.stepz=3", "did you mean attack.steps?"), ("defense.fpr=1e-3", "did you mean defense.model_fpr?")],
)
def test_a_misspelt_key_names_the_nearest_real_one(cli_env, tmp_path, override, hint):
    """Not Hydra's advice to append it with '+', which would add a key nothing reads."""
    result = cli(["run", "defense=aiao", override, "logger=none", f"hydra.run.dir={tmp_path}"])
    assert result.code == 2 and result.stderr.count("\n") == 1 and hint in result.stderr and "+" not in result.stderr
    protect = cli(["protect", "defense=aiao", override, f"out={tmp_path / 'p'}"])  # protect's attack is none
    assert protect.code == 2 and (hint if override.startswith("defense") else "its keys: name") in protect.stderr
