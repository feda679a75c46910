"""Adaptive attacks on the micro model: attack=targeted trains only where the method says its mark lives (or
where the attacker's own probe finds AIAO's lazy blocks) and never a tensor the defense froze; a leaked trigger is
trained away; a distilled student learns the published model's outputs without touching its weights; a forger's key
fits the model's own images."""

from dataclasses import replace

import pytest
import torch

from adaptguard.attacks.distill import Distill, TeacherPredictions
from adaptguard.attacks.leaked_trigger import LeakedTrigger, TriggerErasure
from adaptguard.attacks.targeted import TargetedFineTune
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.defenses.backdoor import BackdoorDefense
from adaptguard.defenses.base import forger_seed
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


def _published(model):
    """The base with every denoiser weight nudged: a model whose outputs differ from the base's."""
    published = model.clone()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in published.unet.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    return published


def test_a_distilled_student_learns_the_published_models_predictions(micro):
    base, ctx = micro
    published = _published(base)
    before = {n: t.clone() for n, t in published.unet.state_dict().items()}
    ctx = ctx.with_base(base)
    attack = Distill(target="predictions", num_images=8, steps=20, batch_size=8, lr=1e-4)
    student = attack.run(published, DATA, None, ctx)
    batch = {"image": attack.teacher_images(published, DATA.captions("attacker", 8, seed=ctx.seed + 900), ctx),
             "caption": DATA.captions("attacker", 8, seed=ctx.seed + 900)}  # fmt: skip
    distance = {}
    for name, model in (("base", base), ("student", student)):
        torch.manual_seed(0)
        distance[name] = TeacherPredictions(published.unet)(model, batch)["loss"].item()
    assert distance["student"] < 0.5 * distance["base"], distance
    assert all(torch.equal(before[n], t) for n, t in published.unet.state_dict().items())  # never touched
    assert attack.cost()["teacher_images"] == 8 and attack.cost()["student"] == "base"
    drawn = [p for p in (ctx.cache.root / "teacher_images").iterdir() if p.is_dir()]
    assert len(drawn) == 1 and len(list(drawn[0].glob("*.png"))) == 8  # drawn once, then served from the cache


def test_a_scratch_student_is_a_fresh_seeded_denoiser_and_the_base_is_refused_under_a_mask(micro):
    base, ctx = micro
    attack = Distill(student="scratch")
    with pytest.raises(ConfigError, match="attack=distill: the student starts from the experiment's base model"):
        attack.run(base, DATA, None, ctx)  # no base model outside an experiment
    ctx = ctx.with_base(base)
    first, again = attack.initial_student(ctx), attack.initial_student(ctx)
    w = "conv_in.weight"
    assert torch.equal(first.unet.state_dict()[w], again.unet.state_dict()[w])
    assert not torch.equal(first.unet.state_dict()[w], base.unet.state_dict()[w])
    assert first.text_encoder is not base.text_encoder and torch.equal(
        first.vae.state_dict()["decoder.conv_out.weight"], base.vae.state_dict()["decoder.conv_out.weight"]
    )
    with pytest.raises(ConfigError, match="attack.student: base, but a freezing defense publishes its model"):
        Distill().run(base, DATA, FineTuneConstraint(frozenset({"unet.conv_in.weight"})), ctx)


def test_a_forged_target_matches_the_forgers_own_images_better_than_any_random_key(micro):
    """Free key bits are majority-voted from the images the forger drew (``budget`` of them); on those images no
    random key of the same defense matches more bits. AIAO's seed-only key is searched instead."""
    model, ctx = micro
    defense = BackdoorDefense(grid=4, num_samples=8, sample_steps=3)
    like = defense.make_key(1)
    forgery = defense.forge_key(model, like, ctx, budget=16)
    assert forgery.budget == {"images": 16} and forgery.key.trigger != like.trigger  # the forger's own trigger
    draws = [replace(ctx, seed=forger_seed(ctx, r)) for r in (1, 2)]  # the forger's two rounds of 8
    bits = torch.cat(
        [defense.read_bits(defense.verification_images(model, forgery.key, d), like, model) for d in draws]
    )

    def matched(key_bits: torch.Tensor) -> float:
        return (bits == key_bits).float().mean().item()

    assert matched(forgery.key.bits) >= max(matched(defense.random_key(like, s).bits) for s in range(32))
