"""eval.at_steps: verification and FID/KID at several attack steps in one run, without changing the run."""

import random

import lightning as L
import numpy as np
import pytest
import torch

from adaptguard.attacks import DreamBooth, LoraFineTune, MagnitudePrune
from adaptguard.core.errors import ConfigError
from adaptguard.data import SplitSpec
from adaptguard.defenses import BackdoorDefense
from adaptguard.metrics.curve import StepProbe
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.pipeline import EvalConfig, Experiment, run_experiment
from adaptguard.reporting.results import RunResult
from adaptguard.reporting.table import format_table
from tests.helpers import make_ctx, micro_source, params_equal


def _greedy_evaluate(step, model):
    """An evaluation that draws from every random stream, as sampling and verification do."""
    torch.rand(7), np.random.rand(3), random.random()
    model.sample(["a red circle"], steps=2)
    return {"mean_weight": float(next(model.unet.parameters()).detach().mean())}


def test_probes_do_not_change_what_the_attack_trains(micro_model, micro_data, tmp_path):
    attack = LoraFineTune(steps=4, batch_size=8, gradient_accumulation_steps=2)
    plain = attack.run(micro_model, micro_data, None, make_ctx(tmp_path / "a"))
    probe = StepProbe([0, 1, 4], _greedy_evaluate, snapshot=attack.snapshot)
    ctx = make_ctx(tmp_path / "b")
    ctx.callbacks = [probe]
    probed = attack.run(micro_model, micro_data, None, ctx)
    assert all(params_equal(plain, probed).values())
    assert [p["step"] for p in probe.points] == [0, 1, 4] and not probe.missing()
    assert probe.points[0]["mean_weight"] == pytest.approx(float(next(micro_model.unet.parameters()).detach().mean()))


def test_batches_per_step_follow_gradient_accumulation(micro_model, micro_data, ctx):
    class Count(L.Callback):
        batches = 0

        def on_train_batch_end(self, *args):
            Count.batches += 1

    ctx.callbacks = [Count()]
    attack = LoraFineTune(steps=3, batch_size=4, gradient_accumulation_steps=2, max_grad_norm=1.0)
    attack.run(micro_model, micro_data, None, ctx)
    assert Count.batches == 6  # 3 optimizer steps x 2 micro-batches


def _experiment(attack, data, **eval_kw):
    defense = BackdoorDefense(steps=20, batch_size=8, lr=1e-3, grid=4, num_samples=8, fpr=1e-2, key_seed=3)
    fid = QualityEvaluator(num_samples=16, kid_subset_size=8, kid_subsets=5)
    return Experiment(model=micro_source(), data=data, defense=defense, attack=attack,
                      eval=EvalConfig(fid=fid, quality_of_base=False, **eval_kw))  # fmt: skip


@pytest.mark.slow
def test_curve_is_in_results_plot_and_table_and_ends_at_the_after_attack_numbers(micro_data, tmp_path):
    ctx = make_ctx(tmp_path)
    exp = _experiment(LoraFineTune(steps=4, batch_size=8, lr=1e-2), micro_data, at_steps=[4, 0, 2])
    result = run_experiment(exp, ctx)
    attack = result.attacks["attacker"]
    curve, after = attack.curve, attack.model.verification
    assert [p.step for p in curve] == [0, 2, 4]
    assert curve[-1].verification == after  # rate, p-value, figures and TPR@FPR alike
    assert curve[-1].quality["attacker"] == attack.model.quality["attacker"]
    assert curve[0].verification.rate == result.protected.verification.rate  # step 0: the protected model
    assert curve[0].quality["attacker"] == result.protected.quality["attacker"]
    assert (ctx.out_dir / result.files["curves"]).stat().st_size > 5000
    saved = RunResult.read(ctx.out_dir / "results.json")
    assert saved.attacks["attacker"].curve == curve
    assert "curve (attacker): step -> verification rate, FID" in format_table(result)


@pytest.mark.slow
def test_dreambooth_curve_scores_the_subject(micro_data, tmp_path):
    micro_data.splits["instance"] = SplitSpec.parse("instance", {"where": {"kind": "star", "colour": "red"}, "size": 4})
    ctx = make_ctx(tmp_path)
    attack = DreamBooth(num_class_images=4, steps=4, batch_size=2, lr=1e-3, lora=True)  # prompts: the dataset's
    result = run_experiment(_experiment(attack, micro_data, at_steps=[0, 4]), ctx)
    ((domain, report),) = result.attacks.items()
    assert domain == "subject" and report.cost["instance_images"] == 4 and report.train_split == "instance"
    assert [set(p.quality) for p in report.curve] == [{"subject"}, {"subject"}]
    assert report.curve[-1].quality["subject"] == report.model.quality["subject"]
    assert set(report.model.quality) == {"clean", "subject"}  # DreamBooth's domain is its subject


@pytest.mark.parametrize(
    "attack,at_steps,match",
    [(LoraFineTune(steps=4), [0, 5], "past the end of training"), (MagnitudePrune(ratio=0.2), [0], "does not train"),
     (LoraFineTune(steps=4), [-1], "non-negative integer")],
)  # fmt: skip
def test_bad_at_steps_fail_before_any_work(attack, at_steps, match, micro_data, tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(ConfigError, match=f"eval.at_steps: .*{match}"):
        run_experiment(_experiment(attack, micro_data, at_steps=at_steps), ctx)
    assert not (ctx.cache.root / "protected").exists()  # nothing was protected first
