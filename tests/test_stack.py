"""Stacked defenses (defense=stack): members protect in order, the key holds every member's key, every
watermark member is verified. End to end on micro: a decoder watermark and a freezing mask through the
owner's protect and verify; the parts that need no model run below it."""

import json
import re

import pytest

from adaptguard.cli.build import defense_node, instantiate
from adaptguard.cli.errors import user_error
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.verification import Verification
from adaptguard.defenses.freezing import FreezeMask
from adaptguard.defenses.stack import StackDefense, StackKey, combine
from tests.helpers import STABLE_SIGNATURE, cli, compose, same_numbers
from tests.helpers import verify_json as verify

# the diagonal's Stable Signature settings and a 3-step FreezeAsGuard, as one stack member list
EXTRACTOR = ",".join(a.split("=", 1)[0].removeprefix("defense.extractor.") + ":" + a.split("=", 1)[1]
                     for a in STABLE_SIGNATURE if a.startswith("defense.extractor."))  # fmt: skip
STAGE_2 = ",".join(a.removeprefix("defense.").replace("=", ":") for a in STABLE_SIGNATURE[1:]
                   if not a.startswith("defense.extractor."))  # fmt: skip
MEMBERS = (f"defense.members=[{{defense:stable_signature,extractor:{{{EXTRACTOR}}},{STAGE_2}}},"
           "{defense:freezeasguard,steps:3,batch_size:4,user_steps:2,user_batch_size:4}]")  # fmt: skip
STACK = ["model=micro", "experiment=freeze", "defense=stack", MEMBERS, "model.sampler.steps=3", "progress=false"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ADAPTGUARD_CACHE", str(tmp / "cache"))
        result = cli(["protect", *STACK, f"out={tmp / 'release'}"])
        assert result.code == 0, result.stderr
        yield tmp / "release"


@pytest.mark.slow
def test_the_owner_protects_with_a_stack_and_verify_detects_it(release):
    report = json.loads((release / "protect.json").read_text())
    protected, base = report["protected"], report["base"]
    assert protected["detected"] and not base["detected"]
    figures = protected["figures"]  # every watermark member's own numbers
    assert figures["stable_signature.detected"] == 1.0 and figures["stable_signature.rate"] == protected["rate"]
    assert 0 < report["summary"]["frozen_tensors_ratio"] < 1  # the freezing member's mask
    members = report["config"]["members"]  # in the user's order, secrets redacted
    assert [m["name"] for m in members] == ["stable_signature", "freezeasguard"]
    assert members[0]["key_seed"] == "<redacted>" and members[0]["extractor"]["bits"] == 16
    assert (release / "owner.key").stat().st_mode & 0o077 == 0
    verdict = verify(f"key={release / 'owner.key'}", f"suspect={release / 'model'}")
    assert verdict["detected"] and verdict["identical_to_protected"]
    same_numbers(verdict, protected)


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
