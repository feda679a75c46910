"""Stacked defenses (defense=stack): members protect in order, the key holds every member's key, every
watermark member is verified. End to end on micro (a decoder watermark and a random mask: a run, then the
owner's protect and verify) in tests/test_latent.py; the parts that need no model run here."""

import json
import re

import pytest

from adaptguard.cli.build import defense_node, instantiate
from adaptguard.cli.errors import user_error
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.verification import Verification
from adaptguard.defenses.freezing import FreezeMask
from adaptguard.defenses.stack import StackDefense, StackKey, combine
from tests.helpers import compose


def test_members_are_named_by_config_and_keep_their_overrides(tmp_path):
    cfg = compose(["defense=stack", "defense.members=[{defense:sleepermark,steps:7},aiao_busy,freezeasguard]"],
                  output_dir=tmp_path)  # fmt: skip
    stack = instantiate(defense_node(cfg.defense))
    assert [m.name for m in stack.member_list] == ["sleepermark", "aiao_busy", "freezeasguard"]
    assert stack.member_list[0].steps == 7 and stack.member_list[1].layers == "busy"  # aiao_busy extends aiao
    assert stack.verification == "images" and stack.modifies_weights
    rebuilt = StackDefense(**stack.describe())  # what verify does with an owner key's config
    assert rebuilt.describe() == stack.describe()
    public = json.dumps(stack.public_config())
    assert stack.member_list[0].trigger not in public and "<redacted>" in public


@pytest.mark.parametrize(("members", "message"), [
    ("[]", "defense.members: a stack needs at least one defense"),
    ("[no_such_defense]", r"defense.members\[0\]: 'no_such_defense' is not a defense config; one of: .*sleepermark"),
    ("[{steps:3}]", r"defense.members\[0\]: name a defense config"),
    ("[sleepermark,sleepermark]", "two members are both named 'sleepermark'"),
])  # fmt: skip
def test_bad_member_lists_fail_in_one_line(tmp_path, members, message):
    cfg = compose(["defense=stack", f"defense.members={members}"], output_dir=tmp_path)
    with pytest.raises(Exception) as raised:  # Hydra wraps what the class raises; the CLI prints user_error's line
        instantiate(defense_node(cfg.defense))
    assert re.search(message, user_error(raised.value)) and "\n" not in user_error(raised.value)


def _verification(rate: float, p: float, detected: bool) -> Verification:
    return Verification(detected, rate, 16, int(rate * 16), (0.0, 1.0), p, 14, "matching bits of 16",
                        details={"model_fpr": 1e-3})  # fmt: skip


def test_the_stack_is_detected_when_any_member_is_and_says_which():
    one = combine({"a": _verification(0.9, 1e-4, True), "b": _verification(0.0, 1.0, False)})
    assert one.detected and one.rate == 0.9 and one.p_value == pytest.approx(2e-4)  # Bonferroni over 2
    assert one.figures == {"a.rate": 0.9, "a.detected": 1.0, "a.p_value": 1e-4, "b.rate": 0.0, "b.detected": 0.0,
                           "b.p_value": 1.0}  # fmt: skip
    assert one.details["headline"] == "a" and one.details["model_fpr"] == pytest.approx(2e-3)
    none = combine({"a": _verification(0.1, 0.4, False), "b": _verification(0.0, 0.9, False)})
    assert not none.detected and none.p_value == pytest.approx(0.8)


def test_the_constraint_is_every_members_and_keys_round_trip(tmp_path):
    member = {"_target_": "adaptguard.defenses.random_freeze.RandomFreezeDefense"}
    stack = StackDefense(members=[{**member, "name": "first"}, {**member, "name": "second"}])
    masks = [FreezeMask({"a": 1.0, "b": 1.0, "c": 0.0}, {}), FreezeMask({"b": 1.0, "c": 0.0, "d": 1.0}, {})]
    key = StackKey([{"mask": m.mask, "scores": m.scores} for m in masks])
    key.save(tmp_path)
    loaded = StackKey.load(tmp_path)
    assert stack.constraint(loaded) == FineTuneConstraint(frozenset({"a", "b", "d"}))
    assert (tmp_path / key.FILE).stat().st_mode & 0o077 == 0 and "<secret>" in repr(loaded)
