"""Bad input gives one clear message naming the key and the fix: non-zero exit, no traceback."""

import pytest

from .conftest import run_cli

CASES = {
    "unknown group option": (["defense=nonexistent"], ["defense", "nonexistent", "Available options"]),
    "missing model.path": (["model=sd15", "logger=none"], ["model.path", "model.path=/path/to/sd15"]),
    "malformed override": (["attack.steps=[1,"], ["attack.steps=[1,"]),
    "unknown key": (["attack.rnk=3"], ["attack.rnk"]),
    "bad value": (["attack=lora", "attack.rank=0", "logger=none"], ["attack.rank", ">= 1"]),
    "unexpected key": (["defense=backdoor", "+defense.colour=red", "logger=none"], ["BackdoorDefense", "'colour'"]),
    "freezing without domains": (["defense=freezeasguard", "logger=none"], ["dataset.splits", "experiment=freeze"]),
    "bad freeze ratio": (["experiment=freeze", "defense.rho=1.5", "logger=none"], ["defense.rho", "[0, 1]"]),
    "bad adaptation domain": (
        ["experiment=freeze", "~eval.adaptation.legal.eval", "logger=none"],
        ["eval.adaptation.legal", "train and eval"],
    ),
    "bad prune ratio": (["attack=prune", "attack.ratio=1.5", "logger=none"], ["attack.ratio", "[0, 1)"]),
    "curve past training": (
        ["attack=lora", "attack.steps=10", "eval.at_steps=[0,20]", "logger=none"],
        ["eval.at_steps", "attack.steps=10"],
    ),
    "bad split filter": (
        ["dataset.splits.owner.where.kind=[hexagon]", "logger=none"],
        ["dataset.splits.owner.where.kind"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_message(name, cli_env, tmp_path):
    args, needles = CASES[name]
    proc = run_cli(args, cli_env, tmp_path, timeout=300)
    err = proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    for needle in needles:
        assert needle in err, err
    own_lines = [line for line in err.strip().splitlines() if not line.startswith("\t")]  # not Hydra's option list
    assert len(own_lines) <= 10, err


def test_empty_dreambooth_instance_folder_is_one_clear_message(cli_env, tmp_path):
    (tmp_path / "subject").mkdir()
    proc = run_cli(
        ["attack=dreambooth", f"attack.instance_dir={tmp_path / 'subject'}", "logger=none"], cli_env, tmp_path
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "attack.instance_dir" in proc.stderr and "holds no images" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "protected").exists() and "sampling" not in proc.stderr  # failed before work


def test_sweep_files_are_redacted(tmp_path):
    """multirun.yaml (sweep dir) and each job's .hydra files lose secret values and overrides."""
    import yaml
    from experiments.cli import _redact_hydra_files

    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    hydra_node = {"overrides": {"task": ["defense=backdoor", "defense.key_seed=55501234"]},
                  "job": {"override_dirname": "defense.key_seed=55501234,defense=backdoor"}}  # fmt: skip
    config = {"defense": {"name": "backdoor", "key_seed": 55501234, "trigger": "zz#9"}}
    (tmp_path / "sweep" / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra_node, **config}))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra_node}))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(hydra_node["overrides"]["task"]))
    _redact_hydra_files(job)
    for path in [tmp_path / "sweep" / "multirun.yaml", *(job / ".hydra").iterdir()]:
        text = path.read_text()
        assert "55501234" not in text and "zz#9" not in text, path
    assert yaml.safe_load((tmp_path / "sweep" / "multirun.yaml").read_text())["defense"]["name"] == "backdoor"
