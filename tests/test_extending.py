"""docs/extending.md's example defense and attack (examples/) are real: the page quotes the files as they
are, and they run through the library, the experiment pipeline and the owner's commands on the micro model."""

import json
import re

import pytest
import torch

from adaptguard.cli.build import instantiate
from adaptguard.core.constraint import FineTuneConstraint
from examples.my_attack import MyAttack, norm_parameters
from examples.my_defense import MyDefense, SignKey, weights
from tests.helpers import REPO, cli, compose, run_config

QUOTED = re.compile(r"<!-- example: (?P<path>\S+) -->\n```[a-z]*\n(?P<code>.*?)```\n", re.DOTALL)
MICRO = ["model=micro", "defense=example", "progress=false"]


def test_the_page_quotes_the_example_files_as_they_are():
    quoted = {m["path"]: m["code"] for m in QUOTED.finditer((REPO / "docs" / "extending.md").read_text())}
    files = ["examples/my_defense.py", "examples/my_attack.py", "conf/defense/example.yaml", "conf/attack/example.yaml"]
    assert sorted(quoted) == sorted(files)
    for path in files:
        assert quoted[path] == (REPO / path).read_text(), f"docs/extending.md quotes an old {path}"


def test_the_example_defense_and_attack_in_plain_python(micro_base, micro_data, ctx):
    """Built from their configs: the watermark is detected, a never-marked model and a wrong key are not, and
    the attack changes only the norm layers it trains (a tensor the constraint freezes stays as published)."""
    defense = instantiate(compose(["defense=example"]).defense)
    attack = instantiate(compose(["attack=example", "attack.steps=3", "attack.batch_size=4"]).attack)
    assert isinstance(defense, MyDefense) and isinstance(attack, MyAttack)
    protected = defense.protect(micro_base, micro_data, ctx)
    assert defense.verify(protected.model, protected.key, ctx).detected
    assert not defense.verify(micro_base, protected.key, ctx).detected
    wrong = SignKey(positions=protected.key.positions, bits=1 - protected.key.bits)
    assert not defense.verify(protected.model, wrong, ctx).detected

    names = {id(p): n for n, p in protected.model.named_parameters()}
    frozen = names[id(norm_parameters(protected.model)[0])]
    attacked = attack.run(protected.model, micro_data, FineTuneConstraint(frozenset({frozen})), ctx)
    before, after = dict(protected.model.named_parameters()), dict(attacked.named_parameters())
    norms = {names[id(p)] for p in norm_parameters(protected.model)}
    changed = {n for n in norms if not torch.equal(before[n], after[n])}
    assert changed and frozen not in changed  # trained, but not the frozen tensor
    assert all(torch.equal(before[n], after[n]) for n in before if n not in norms)
    assert (
        attack.cost()["trainable_params"]
        == sum(p.numel() for p in norm_parameters(protected.model)) - before[frozen].numel()
    )
    assert all(torch.equal(a, b) for a, b in zip(weights(protected.model), weights(attacked), strict=True))


@pytest.mark.slow
def test_the_examples_run_through_the_pipeline_and_the_owners_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTGUARD_CACHE", str(tmp_path / "cache"))
    result = run_config([*MICRO, "attack=example", "attack.steps=3", "attack.batch_size=4", "eval.fid=null",
                         "logger=none"], tmp_path / "run")  # fmt: skip
    (attacked,) = result.attacks.values()
    assert result.protected.verification.detected and result.protected.verification.rate == 1.0
    assert not result.base.verification.detected and result.base.verification.rate < 0.5
    assert attacked.model.verification.detected  # the attack trains norm layers; the marked weights are not there
    assert attacked.cost["trainable_params"] > 0 and result.summary["marked_weights"] == 128

    release = tmp_path / "release"  # a fixed key: a fresh one would be detected on the base 1 time in 1000
    assert cli(["protect", *MICRO, "defense.key_seed=11", f"out={release}"]).code == 0
    verdict = cli(["verify", f"key={release / 'owner.key'}", f"suspect={release / 'model'}", "--json"])
    assert verdict.code == 0 and json.loads(verdict.stdout)["detected"], verdict.stderr
    report = json.loads((release / "protect.json").read_text())
    assert report["protected"]["detected"] and not report["base"]["detected"]
