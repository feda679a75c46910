"""SleeperMark: the codec, the stage-2 targets, the statistics, and what must not be detected."""

import json

import pytest
import torch

from adaptguard.core.errors import ConfigError
from adaptguard.defenses import SleeperMarkDefense, SleeperMarkKey
from adaptguard.defenses.message_codec import Codec, evaluate_codec, train_codec
from adaptguard.defenses.sleepermark import time_weights, watermark_target
from adaptguard.metrics.stats import binomial_tail
from adaptguard.models import objective
from adaptguard.pipeline import EvalConfig, Experiment, run_experiment
from tests.helpers import make_ctx, make_micro_data, micro_source

# Sized for the 16-px micro model on 2 CPU cores (48 bits need more steps than a test can spend).
MICRO_CODEC = {"bits": 16, "encoder_hidden": 256, "steps": 300, "image_ramp_steps": 100, "perceptual_ramp_steps": 200}


def test_threshold_is_the_binomial_tail_41_of_48_at_1e6():
    d = SleeperMarkDefense(fpr=1e-6)
    k = d.detection_threshold()
    assert k == 41
    assert binomial_tail(41, 48) <= 1e-6 < binomial_tail(40, 48)
    assert SleeperMarkDefense(fpr=1e-2).detection_threshold() < k  # a looser FPR needs fewer bits


def test_time_weights_cross_at_tau():
    t = torch.tensor([0.0, 250.0, 1000.0])
    w1, w2 = time_weights(t, eta=0.05, tau=250, beta=100)
    assert w1[1].item() == pytest.approx(0.025) and w2[1].item() == pytest.approx(0.5)
    assert w1[0] > w1[2] and w2[0] < w2[2]  # watermark at small t, fidelity at large t


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "flow"])
def test_watermark_target_shifts_the_one_step_x0_estimate_by_delta(prediction_type):
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    g = torch.Generator().manual_seed(0)
    z_t, out, delta = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([1, 50, 300, 900])
    if prediction_type == "flow":  # x_t = (1 - s) x + s e, v = e - x: x0 = z - s v
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        s = (t.float() / 1000).view(-1, 1, 1, 1)

        def x0(pred):
            return z_t - s * pred
    else:
        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)

        def x0(pred):
            if prediction_type == "epsilon":
                return (z_t - (1 - a).sqrt() * pred) / a.sqrt()
            return a.sqrt() * z_t - (1 - a).sqrt() * pred

    shifted = watermark_target(out, delta, objective.x0_gain(sched, t))
    torch.testing.assert_close(x0(shifted) - x0(out), delta.expand(4, -1, -1, -1), atol=1e-3, rtol=1e-3)


def test_flow_positions_put_tau_in_the_last_quarter_of_the_trajectory():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    t = objective.timesteps_at(sched, torch.tensor([0, 250, 1000]))
    torch.testing.assert_close(t, torch.tensor([0.0, 500.0, 1000.0]))


@pytest.fixture(scope="module")
def sleepermark_run(tmp_path_factory):
    """One micro-model experiment (protect -> verify, with image attacks) shared by the tests below."""
    tmp = tmp_path_factory.mktemp("sleepermark")
    ctx = make_ctx(tmp)
    defense = SleeperMarkDefense(codec=MICRO_CODEC, trainable="unet", eta=1.0, small_t_fraction=0.5, steps=200, batch_size=32,
                                 lr=1e-3, num_samples=32, fpr=1e-2, key_seed=7)  # fmt: skip
    exp = Experiment(
        model=micro_source(),
        data=make_micro_data(),
        defense=defense,
        eval=EvalConfig(fid=None, image_attacks=["jpeg", {"name": "noise", "std": 0.5}]),
    )
    return defense, run_experiment(exp, ctx), ctx


def test_codec_round_trip_reaches_high_bit_accuracy(sleepermark_run, micro_base):
    defense, _, ctx = sleepermark_run
    data = make_micro_data()
    codec = train_codec(defense.codec, micro_base, data, ctx)  # stage 1 of the run above, from the cache
    assert len(list((ctx.cache.root / "codec").glob("*/codec.pt"))) == 1
    assert codec.info["perceptual"] in ("ssim", "lpips-alex")
    held_out = torch.stack([data.dataset("eval")[i]["image"] for i in range(64)])
    scores = evaluate_codec(codec, micro_base, held_out, seed=5)  # fresh random messages, unseen images
    assert scores["bit_accuracy"] >= 0.9, scores
    assert scores["psnr_db"] > 25, scores
    # a cover without a residual reads as noise, not as any particular message
    bits = torch.randint(0, 2, (64, 16), generator=torch.Generator().manual_seed(1))
    assert abs((codec.read_bits(micro_base, held_out) == bits).float().mean().item() - 0.5) < 0.1
    assert isinstance(Codec.from_state(codec.state()), Codec)


def test_triggered_images_carry_the_message_and_nothing_else_does(sleepermark_run):
    _, result, _ = sleepermark_run
    before, null = result.protected.verification, result.base.verification
    # 300 split-batch stage-2 steps at batch 32 on the micro model (16 triggered + 16 plain rows, the rows of 300 paired
    # steps at batch 16; at batch 16 split the untriggered bit accuracy reached 0.72): 14 of 16 bits pass at fpr 1e-2
    assert before.detected and before.rate >= 0.8, before
    assert before.figures["bit_accuracy"] >= 0.85
    # stealth: the same prompts and noise without the trigger do not carry it
    assert before.figures["untriggered_rate"] <= 0.1, before.figures
    assert 0.3 <= before.figures["untriggered_bit_accuracy"] <= 0.7
    # a never-watermarked model is not detected, with or without the trigger
    assert not null.detected and null.rate <= 0.05, null
    assert null.figures["untriggered_rate"] <= 0.05


def test_image_attacks_are_verified_on_the_same_images(sleepermark_run):
    _, result, _ = sleepermark_run
    attacks = result.protected.image_attacks
    assert set(attacks) == {"jpeg", "noise(std=0.5)"}
    jpeg, noise = attacks["jpeg"], attacks["noise(std=0.5)"]
    assert noise.figures["bit_accuracy"] < result.protected.verification.figures["bit_accuracy"]
    assert jpeg.trials == noise.trials == 32
    assert set(noise.tpr_at_fpr) == {"0.01", "0.001"}  # thresholds from the same never-watermarked null


def test_secrets_stay_out_of_results(sleepermark_run):
    defense, results, ctx = sleepermark_run
    text = (ctx.out_dir / "results.json").read_text()
    assert defense.trigger not in text
    json.loads(text)


def test_key_round_trip_and_redacted_repr(tmp_path):
    d = SleeperMarkDefense(key_seed=3)
    key = SleeperMarkKey(d.trigger, d.make_message(), ["a red circle"], {"encoder": {}, "decoder": {}, "info": {}})
    key.save(tmp_path)
    loaded = SleeperMarkKey.load(tmp_path)
    assert torch.equal(loaded.message, key.message) and loaded.trigger == key.trigger
    assert d.trigger not in repr(key)
    assert not torch.equal(SleeperMarkDefense().make_message(), SleeperMarkDefense().make_message())


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"trainable": "everything"}, "defense.trainable"),
        ({"fpr": 0}, "defense.fpr"),
        ({"trigger": "  "}, "defense.trigger"),
        ({"codec": {"perceptual": "vgg"}}, "defense.codec.perceptual"),
        ({"codec": {"distortions": ["smudge"]}}, "smudge"),
        ({"small_t_fraction": 2}, "defense.small_t_fraction"),
    ],
)
def test_bad_parameters_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        SleeperMarkDefense(**kwargs)


def test_unknown_image_attack_in_eval_config_names_it():
    with pytest.raises(ConfigError, match="smudge"):
        EvalConfig(fid=None, image_attacks=["jpeg", "smudge"])
