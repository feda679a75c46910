"""FreezeAsGuard and random freezing: the mask gradient, the ratio projection, and enforcement."""

import json

import pytest
import torch

from adaptguard.attacks import FullFineTune, LoraFineTune
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.defenses import FreezeAsGuardDefense, FreezeMask, RandomFreezeDefense
from adaptguard.defenses.freezeasguard import MaskLearning, mask_gradient, sparsity_gradient
from adaptguard.defenses.freezing import candidate_sizes, freeze_ratios, project_to_ratio, random_scores
from adaptguard.metrics.quality import QualityEvaluator
from adaptguard.pipeline import EvalConfig, Experiment, run_experiment
from adaptguard.reporting.results import RunResult
from adaptguard.reporting.sweep import sweep_table
from tests.helpers import cli, make_ctx, micro_source


def freeze_data() -> ShapesDataModule:
    star, others = {"kind": ["star"]}, {"kind": ["circle", "square", "triangle", "cross"]}
    return ShapesDataModule(
        resolution=16,
        splits={
            "illegal": {"where": star, "size": 64},
            "legal": {"where": others, "size": 64},
            "attacker_illegal": {"where": star, "offset": 100, "size": 64},
            "attacker_legal": {"where": others, "offset": 100, "size": 64},
            "eval_illegal": {"where": star, "offset": 200, "size": 32},
            "eval_legal": {"where": others, "offset": 200, "size": 32},
        },
    )


def test_mask_gradient_matches_autograd_through_the_soft_mix(micro_model, tmp_path):
    """The analytic dJ/dx equals autograd through theta = m * theta_pre + (1 - m) * theta_ft, m = sigmoid(x / T)."""
    torch.manual_seed(0)
    model = micro_model
    model.requires_grad_(False)
    theta_ft = {n: p + 0.05 * torch.randn_like(p) for n, p in model.unet.named_parameters()}
    cfg = FreezeAsGuardDefense(temperature=0.2)
    learner = MaskLearning(model, theta_ft, cfg, seed=0)
    with torch.no_grad():
        learner.x.copy_(torch.randn(len(learner.names)) * 0.3)  # away from saturation: every tensor matters
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1, "caption": ["a red star"] * 2 + ["a blue circle"] * 2}
    illegal = {k: v[:2] for k, v in batch.items()}
    legal = {k: v[2:] for k, v in batch.items()}

    def objective(params):
        torch.manual_seed(1)  # the same noise and timesteps on both routes
        return (-learner.denoising_loss(params, illegal) + learner.denoising_loss(params, legal)) / 2

    eff = learner.effective_weights()
    grads = torch.autograd.grad(objective(eff), list(eff.values()))
    analytic = mask_gradient(grads, learner.theta_pre(), list(learner.ft), learner.x, cfg.temperature)

    x = learner.x.detach().clone().requires_grad_(True)
    m = torch.sigmoid(x / cfg.temperature)
    mixed = {
        n: m[i] * p + (1 - m[i]) * f
        for i, (n, p, f) in enumerate(zip(learner.names, learner.theta_pre(), learner.ft, strict=True))
    }
    objective(mixed).backward()
    torch.testing.assert_close(analytic, x.grad, rtol=1e-4, atol=1e-9)
    assert analytic.abs().max() > 0

    # the sparsity term is the autograd gradient of (rho - mean(m))^2 as well
    x2 = learner.x.detach().clone().requires_grad_(True)
    ((0.3 - torch.sigmoid(x2 / 0.2).mean()) ** 2).backward()
    torch.testing.assert_close(sparsity_gradient(learner.x, 0.3, 0.2), x2.grad)


@pytest.mark.parametrize("rho", [0.0, 0.2, 0.5, 0.7, 1.0])
def test_topk_projection_by_tensors_is_exact_and_keeps_the_top_scores(rho, micro_model):
    sizes = candidate_sizes(micro_model)
    scores = random_scores(sizes, seed=3)
    frozen = project_to_ratio(scores, sizes, rho, "tensors")
    assert len(frozen) == round(rho * len(sizes))
    if frozen and len(frozen) < len(sizes):
        assert min(scores[n] for n in frozen) > max(scores[n] for n in sizes.keys() - frozen)
    assert freeze_ratios(frozen, sizes)["ratio_by_tensors"] == pytest.approx(round(rho * len(sizes)) / len(sizes))


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.7])
def test_projection_by_params_is_the_closest_prefix(rho, micro_model):
    sizes = candidate_sizes(micro_model)
    scores = random_scores(sizes, seed=4)
    frozen = project_to_ratio(scores, sizes, rho, "params")
    total = sum(sizes.values())
    order = sorted(scores, key=lambda n: (-scores[n], n))
    prefixes = [sum(sizes[n] for n in order[:k]) for k in range(len(order) + 1)]
    best = min(abs(c - rho * total) for c in prefixes)
    assert abs(sum(sizes[n] for n in frozen) - rho * total) == best
    assert frozen == set(order[: len(frozen)])


def test_bad_freeze_configs_name_the_key():
    with pytest.raises(ConfigError, match="defense.rho"):
        FreezeAsGuardDefense(rho=1.5)
    with pytest.raises(ConfigError, match="defense.ratio_by"):
        RandomFreezeDefense(ratio_by="bytes")
    with pytest.raises(ConfigError, match="defense.projection"):
        FreezeAsGuardDefense(projection="soft")
    with pytest.raises(ConfigError, match="defense.illegal_split"):
        FreezeAsGuardDefense(illegal_split="owner", legal_split="owner")
    with pytest.raises(ConfigError, match="eval.adaptation.illegal"):
        EvalConfig(fid=None, adaptation={"illegal": {"train": "attacker_illegal"}})


@pytest.mark.parametrize(
    "attack",
    [
        FullFineTune(steps=3, batch_size=8, lr=1e-2, split="attacker_legal"),
        FullFineTune(steps=3, batch_size=8, lr=1e-2, split="attacker_legal", train_text_encoder=True),
        LoraFineTune(steps=3, batch_size=8, lr=1e-1, split="attacker_legal"),
    ],
    ids=["full", "full+text_encoder", "lora"],
)
def test_frozen_tensors_are_bit_identical_after_the_attack(attack, micro_model, tmp_path):
    sizes = candidate_sizes(micro_model)
    frozen = project_to_ratio(random_scores(sizes, seed=5), sizes, 0.5, "tensors")
    # every attention query projection frozen too, so LoRA has adapters to skip
    frozen |= {n for n in sizes if n.endswith("attn1.to_q.weight")}
    constraint = FineTuneConstraint(frozen=frozenset(frozen))
    attacked = attack.run(micro_model, freeze_data(), constraint, make_ctx(tmp_path))
    before = dict(micro_model.named_parameters())
    after = dict(attacked.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in frozen)
    assert any(not torch.equal(after[n], before[n]) for n in sizes.keys() - frozen)  # the attack did train
    cost = attack.cost()
    assert cost["frozen_params"] == sum(sizes[n] for n in frozen)
    if isinstance(attack, LoraFineTune):
        targets = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")
        assert cost["lora_skipped_frozen"] == sum(1 for n in frozen if n.endswith(targets))
    else:  # no optimizer state for frozen tensors: only the rest is handed to the optimizer
        trained = ("unet.", "text_encoder.") if attack.train_text_encoder else ("unet.",)
        expected = sum(
            p.numel() for n, p in micro_model.named_parameters() if n.startswith(trained) and n not in frozen
        )
        assert cost["trainable_params"] == expected


def test_random_freeze_is_reproducible_and_hits_the_ratio(micro_model, tmp_path):
    ctx = make_ctx(tmp_path)
    a = RandomFreezeDefense(rho=0.3, mask_seed=7).protect(micro_model, freeze_data(), ctx)
    b = RandomFreezeDefense(rho=0.3, mask_seed=7).protect(micro_model, freeze_data(), ctx)
    c = RandomFreezeDefense(rho=0.3, mask_seed=8).protect(micro_model, freeze_data(), ctx)
    assert a.key.frozen == b.key.frozen != c.key.frozen
    assert a.model is micro_model  # the weights are published unchanged
    n = len(candidate_sizes(micro_model))
    assert a.info["mask"]["frozen_tensors"] == round(0.3 * n)
    by_params = RandomFreezeDefense(rho=0.3, ratio_by="params", mask_seed=7).protect(micro_model, freeze_data(), ctx)
    assert by_params.info["mask"]["ratio_by_params"] == pytest.approx(0.3, abs=0.05)
    assert "mask_seed" not in repr(RandomFreezeDefense(mask_seed=7))


@pytest.fixture(scope="module")
def freeze_run(tmp_path_factory):
    """One micro-model FreezeAsGuard experiment: protect, then attack each domain and score it."""
    tmp = tmp_path_factory.mktemp("freeze")
    ctx = make_ctx(tmp)
    defense = FreezeAsGuardDefense(rho=0.4, user_steps=20, steps=20, batch_size=8, user_batch_size=16)
    exp = Experiment(
        model=micro_source(),
        data=freeze_data(),
        defense=defense,
        attack=FullFineTune(steps=5, batch_size=8),
        eval=EvalConfig(
            fid=QualityEvaluator(num_samples=16, kid_subset_size=8, kid_subsets=5),
            clean_split=None,
            adaptation={
                "illegal": {"train": "attacker_illegal", "eval": "eval_illegal"},
                "legal": {"train": "attacker_legal", "eval": "eval_legal"},
            },
        ),
    )
    results = run_experiment(exp, ctx)
    return exp, ctx, results, tmp


@pytest.mark.slow
def test_freezeasguard_experiment_reports_both_domains_and_keeps_the_mask_secret(freeze_run):
    exp, ctx, result, tmp = freeze_run
    mask = result.protect["mask"]
    assert mask["frozen_tensors"] == round(0.4 * mask["total_tensors"])
    assert 0 < mask["ratio_by_params"] < 1
    assert result.summary == {"rho": 0.4, "frozen_tensors_ratio": mask["ratio_by_tensors"],
                              "frozen_params_ratio": mask["ratio_by_params"]}  # fmt: skip
    assert set(result.attacks) == {"illegal", "legal"}
    for domain, attack in result.attacks.items():
        assert attack.train_split == f"attacker_{domain}" and attack.eval_split == f"eval_{domain}"
        assert attack.cost["frozen_params"] == mask["frozen_params"]
        assert attack.cost["trainable_params"] == mask["total_params"] - mask["frozen_params"]
        assert set(attack.model.quality) == {domain} and attack.model.quality[domain].fid > 0  # clean_split: null
        assert result.base.quality[domain].fid > 0
        assert result.protected.quality[domain] == result.base.quality[domain]  # the weights are the base's
        assert f"attack_{domain}" in result.stages
    assert result.config["defense"]["rho"] == 0.4
    text = (tmp / "out" / "results.json").read_text()
    assert "down_blocks" not in text and "up_blocks" not in text  # no tensor names: the mask stays in key.pt
    json.loads(text)


@pytest.mark.slow
def test_freezeasguard_mask_is_keyed_by_name_and_cached_apart_from_the_simulated_user(freeze_run):
    exp, ctx, result, tmp = freeze_run
    (key_file,) = (tmp / "cache" / "protected").glob("*/key.pt")
    key = FreezeMask.load(key_file.parent)
    names = {n for n, _ in micro_source().build().named_parameters() if n.startswith("unet.")}
    assert set(key.mask) == names == set(key.scores)
    assert len(key.frozen) == result.protect["mask"]["frozen_tensors"]
    assert not (key_file.parent / "model").exists()  # weights unchanged: only the key is stored
    # another rho learns a new mask but reuses the simulated user's fine-tune
    users = list((tmp / "cache" / "simulated_user").iterdir())
    base = exp.model.load(ctx)
    other = FreezeAsGuardDefense(rho=0.6, user_steps=20, steps=5, batch_size=8, user_batch_size=16)
    protected = other.protect(base, exp.data, ctx)
    assert list((tmp / "cache" / "simulated_user").iterdir()) == users
    assert protected.info["mask"]["frozen_tensors"] == round(0.6 * len(names))


@pytest.mark.slow
def test_cli_freeze_experiment_attacks_each_domain(cli_env, tmp_path):
    """`experiment=freeze` end to end on the micro model: both domains attacked and scored, LoRA skips frozen modules."""
    small = [f"dataset.splits.{s}.size=48" for s in ("illegal", "legal", "attacker_illegal", "attacker_legal")]
    args = [
        "run", "experiment=freeze", "model=pixel_micro", "attack=lora", "logger=none", "progress=false", "defense.rho=0.7",
        "defense.user_steps=10", "defense.steps=10", "defense.batch_size=8", "defense.user_batch_size=16",
        "attack.steps=4", "attack.batch_size=8", "eval.fid.num_samples=16", "eval.fid.kid_subset_size=8", *small,
        f"hydra.run.dir={tmp_path}/run",
    ]  # fmt: skip
    proc = cli(args)
    assert proc.code == 0, proc.stderr[-3000:]
    result = RunResult.read(tmp_path / "run" / "results.json")
    mask = result.protect["mask"]
    assert mask["frozen_tensors"] == round(0.7 * mask["total_tensors"])
    for domain, attack in result.attacks.items():
        assert attack.cost["lora_modules"] > 0 and attack.cost["lora_skipped_frozen"] > 0
        assert attack.model.quality[domain].fid > 0
    assert "frozen tensors ratio" in proc.stdout and "rho" in proc.stdout
    table = sweep_table(tmp_path / "run")
    assert "FID/KID attacked (domain)" in table
    assert table.count("| freezeasguard | lora | ") == 2  # one row per domain
    assert "| freezeasguard | lora | illegal | 0.7 |" in table
