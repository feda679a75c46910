"""Adaptive attacks on the micro model: attack=targeted trains only where the method says its mark lives (or
where the attacker's own probe finds AIAO's lazy blocks) and never a tensor the defense froze."""

import pytest
import torch

from adaptguard.attacks.leaked_trigger import LeakedTrigger, TriggerErasure
from adaptguard.attacks.targeted import TargetedFineTune
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule
from tests.helpers import make_ctx, model_source

DATA = ShapesDataModule(resolution=32, splits={"attacker": {"offset": 5000, "size": 32}})


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    ctx = make_ctx(tmp_path_factory.mktemp("adaptive"))
    return model_source("micro").load(ctx), ctx


def _moved(before, after) -> set[str]:
    b, a = before.unet.state_dict(), after.unet.state_dict()
    return {n for n in b if not torch.equal(b[n], a[n])}


def test_the_backdoor_attack_trains_the_cross_attention_and_honours_the_mask(micro):
    model, ctx = micro
    frozen = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"  # in the bundle: unet.<name>
    attack = TargetedFineTune(method="backdoor", steps=2, batch_size=4)
    tuned = attack.run(model, DATA, FineTuneConstraint(frozenset({f"unet.{frozen}"})), ctx)
    moved = _moved(model, tuned)
    assert moved and all(".attn2.to_" in n for n in moved), sorted(moved)[:3]
    assert frozen not in moved  # the defense's mask holds
    assert attack.cost()["located_by"] == "public" and attack.cost()["targeted_tensors"] > len(moved) - 1


def test_the_sleepermark_attack_trains_the_up_blocks_attention(micro):
    model, ctx = micro
    tuned = TargetedFineTune(method="sleepermark", steps=2, batch_size=4).run(model, DATA, None, ctx)
    moved = _moved(model, tuned)
    assert moved and all(n.startswith("up_blocks.") and ".attentions." in n and "norm" not in n for n in moved)


def test_the_aiao_attack_finds_lazy_blocks_with_its_own_probe(micro):
    model, ctx = micro
    attack = TargetedFineTune(method="aiao", steps=2, batch_size=4, probe_steps=3, lazy_fraction=0.5)
    tuned = attack.run(model, DATA, None, ctx)
    cost = attack.cost()
    assert cost["located_by"] == "analysis" and cost["lazy_blocks"] == cost["blocks"] // 2
    assert 0 < len(_moved(model, tuned)) <= cost["targeted_tensors"] < len(model.unet.state_dict())


def test_a_decoder_watermark_is_refused_with_its_attack_named():
    with pytest.raises(ConfigError, match="attack.method: stable_signature lives in the VAE decoder.*attack=vae_swap"):
        TargetedFineTune(method="stable_signature")
    with pytest.raises(ConfigError, match="attack.method: 'stack' is not a defense this attack knows"):
        TargetedFineTune(method="stack")


def test_a_leaked_trigger_is_trained_away_while_plain_prompts_keep_their_output(micro):
    """A "trigger" with a large effect on the base (a prefix that changes the caption): after the attack the
    triggered output is near the untriggered one, and the untriggered output moved far less than that."""
    model, ctx = micro
    trigger = "a big yellow star, "
    batch = next(iter(DATA.dataloader("attacker", 8)))
    torch.manual_seed(0)
    start = TriggerErasure(model.unet, trigger, 1.0, 0.0, seed=0)(model, batch)
    tuned = LeakedTrigger(trigger=trigger, steps=30, batch_size=8).run(model, DATA, None, ctx)
    torch.manual_seed(0)
    end = TriggerErasure(model.unet, trigger, 1.0, 0.0, seed=0)(tuned, batch)
    assert start["keep"] < 1e-9 and end["erase"] < 0.5 * start["erase"]  # keep: 0 up to float rounding
    assert end["keep"] < 0.5 * start["erase"]


def test_a_leak_needs_a_trigger(micro):
    model, ctx = micro
    with pytest.raises(ConfigError, match="attack=leaked_trigger: the defense's key has no trigger"):
        LeakedTrigger(steps=1).run(model, DATA, None, ctx)  # no key leaked, none configured
