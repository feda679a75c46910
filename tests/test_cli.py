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
    assert len(err.strip().splitlines()) <= 15, err  # Hydra lists the available options
