"""Full and LoRA fine-tuning, and that both honour a FineTuneConstraint."""

import lightning as L
import pytest
import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

from adaptguard.attacks import FullFineTune, LoraFineTune
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.lora import load_lora, merge_lora
from adaptguard.training import DenoisingModule
from tests.helpers import make_ctx, params_equal


def _frozen_names(model):
    """Every weight/bias of the first down block and the attention output projections."""
    return frozenset(n for n, _ in model.named_parameters() if n.startswith("unet.down_blocks.0.") or ".to_out.0." in n)


def test_full_finetune_changes_weights_but_not_frozen_ones(micro_model, micro_data, ctx):
    constraint = FineTuneConstraint(_frozen_names(micro_model))
    attack = FullFineTune(steps=4, batch_size=8, lr=1e-3)
    attacked = attack.run(micro_model, micro_data, constraint, ctx)
    same = params_equal(micro_model, attacked)
    assert all(same[n] for n in constraint.frozen)  # frozen: bit-identical
    unet_free = [n for n in same if n.startswith("unet.") and n not in constraint.frozen]
    assert sum(not same[n] for n in unet_free) > 0.9 * len(unet_free)  # the rest did train
    assert all(same[n] for n in same if n.startswith("text_encoder."))  # text encoder off by default
    cost = attack.cost()
    frozen_count = sum(p.numel() for n, p in micro_model.named_parameters() if n in constraint.frozen)
    assert cost["frozen_params"] == frozen_count
    assert cost["trainable_params"] == sum(p.numel() for p in micro_model.unet.parameters()) - frozen_count
    assert cost["step_time_s"] > 0


def test_frozen_tensors_get_no_gradient_and_no_optimizer_state(micro_model):
    constraint = FineTuneConstraint(_frozen_names(micro_model))
    micro_model.requires_grad_(False)
    micro_model.unet.requires_grad_(True)
    constraint.apply(micro_model)
    module = DenoisingModule(micro_model)
    optimizer = module.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = dict(micro_model.named_parameters())
    assert not any(id(named[n]) in in_optimizer for n in constraint.frozen)
    micro_model.training_loss(torch.rand(2, 3, 16, 16) * 2 - 1, ["a", "b"]).backward()
    assert all(named[n].grad is None for n in constraint.frozen)


def test_constraint_with_unknown_tensor_names_is_an_error(micro_model):
    with pytest.raises(ConfigError, match="does not have"):
        FineTuneConstraint(frozenset({"unet.not_a_layer.weight"})).apply(micro_model)


def test_lora_trains_adapters_merges_them_and_skips_frozen_modules(micro_model, micro_data, ctx):
    constraint = FineTuneConstraint(_frozen_names(micro_model))
    attack = LoraFineTune(steps=4, batch_size=8, lr=1e-2, rank=2, alpha=2)
    attacked = attack.run(micro_model, micro_data, constraint, ctx)
    assert not any(isinstance(m, BaseTunerLayer) for m in attacked.unet.modules())  # merged and unloaded
    assert set(dict(attacked.named_parameters())) == set(dict(micro_model.named_parameters()))
    same = params_equal(micro_model, attacked)
    assert all(same[n] for n in constraint.frozen)
    changed = {n for n, s in same.items() if not s}
    assert changed and all(any(t in n for t in (".to_q.", ".to_k.", ".to_v.")) for n in changed)
    cost = attack.cost()
    n_attn = sum(1 for n, _ in micro_model.unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0")))
    assert cost["lora_skipped_frozen"] == n_attn // 4  # every to_out.0 was frozen
    assert cost["lora_modules"] == n_attn - n_attn // 4
    assert cost["trainable_params"] < 0.1 * cost["total_params"]


def test_lora_without_constraint_changes_all_targets(micro_model, micro_data, ctx):
    attacked = LoraFineTune(steps=2, batch_size=8, lr=1e-2).run(micro_model, micro_data, None, ctx)
    changed = {n for n, s in params_equal(micro_model, attacked).items() if not s}
    assert any(".to_out.0.weight" in n for n in changed)


@pytest.mark.parametrize(
    "kwargs,key",
    [({"rank": 0}, "attack.rank"), ({"steps": 0}, "attack.steps"), ({"lr": 0}, "attack.lr"),
     ({"target_modules": []}, "attack.target_modules")],
)  # fmt: skip
def test_bad_attack_parameters_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        LoraFineTune(**kwargs)


def test_lora_targets_matching_nothing_is_an_error(micro_model, micro_data, ctx):
    with pytest.raises(ConfigError, match="matched no trainable UNet module"):
        LoraFineTune(steps=1, target_modules=["not_a_module"]).run(micro_model, micro_data, None, ctx)


def test_lora_attack_does_not_depend_on_earlier_random_draws(micro_model, micro_data, ctx):
    attack = LoraFineTune(steps=2, batch_size=8)
    first = attack.run(micro_model, micro_data, None, ctx)
    torch.rand(1000)  # e.g. a protection that ran in the same process
    second = attack.run(micro_model, micro_data, None, ctx)
    assert all(params_equal(first, second).values())


class _CheckpointingSeen(L.Callback):
    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self.seen.append(pl_module.model.unet.is_gradient_checkpointing)


def test_gradient_checkpointing_trains_the_same_weights(micro_model, micro_data, tmp_path):
    plain = FullFineTune(steps=2, batch_size=4).run(micro_model, micro_data, None, make_ctx(tmp_path / "a"))
    micro_model.gradient_checkpointing = True  # model.gradient_checkpointing: every training stage of the run
    ctx = make_ctx(tmp_path / "b")
    ctx.callbacks = [seen := _CheckpointingSeen()]
    checkpointed = FullFineTune(steps=2, batch_size=4).run(micro_model, micro_data, None, ctx)
    assert seen.seen == [True, True]  # on while training
    ours, theirs = dict(plain.named_parameters()), dict(checkpointed.named_parameters())
    assert all(torch.allclose(ours[n], theirs[n], atol=1e-6) for n in ours)
    assert not checkpointed.unet.is_gradient_checkpointing  # switched off again for evaluation


def test_mixed_precision_on_cpu_falls_back_to_fp32_with_a_warning(micro_model, micro_data, ctx, caplog):
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    attack = FullFineTune(steps=1, batch_size=4, mixed_precision="fp16")
    with caplog.at_level("WARNING"):
        attack.run(micro_model, micro_data, None, ctx)
    assert "needs a GPU" in caplog.text and attack.cost()["precision"] == "32-true"
    with pytest.raises(ConfigError, match="attack.mixed_precision"):
        FullFineTune(mixed_precision="fp8")


def test_saved_merged_model_loads_as_the_attacked_model(micro_model, micro_data, ctx):
    attack = LoraFineTune(steps=2, batch_size=4, lr=1e-2, save="merged")
    attacked = attack.run(micro_model, micro_data, None, ctx)
    folder = ctx.out_dir / "attacked_model" / "attacker"
    assert attack.cost()["saved_to"] == str(folder)
    assert all(params_equal(attacked, DiffusionModel.load(folder)).values())


def test_saved_adapter_is_a_diffusers_lora_file_that_reproduces_the_attack(micro_model, micro_data, ctx):
    attack = LoraFineTune(steps=2, batch_size=4, lr=1e-2, rank=2, alpha=4, train_text_encoder=True, save="adapter")
    attacked = attack.run(micro_model, micro_data, None, ctx)
    folder = ctx.out_dir / "attacked_model" / "attacker"
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    changed = {n for n, s in params_equal(micro_model, attacked).items() if not s}
    assert any(n.startswith("text_encoder.") for n in changed) and any(n.startswith("unet.") for n in changed)
    rebuilt = micro_model.clone()
    load_lora(rebuilt, folder)  # as a user would, into the model that was attacked
    merge_lora(rebuilt)
    ours = dict(attacked.named_parameters())
    assert all(torch.allclose(p, ours[n], atol=1e-6) for n, p in rebuilt.named_parameters())
    with pytest.raises(ConfigError, match="attack.save"):
        FullFineTune(save="adapter")  # full fine-tuning has no adapter


def test_the_text_encoder_adapter_shim_is_needed_exactly_when_it_is_on(micro_model):
    """transformers' own add_adapter refuses the installed peft while the shim is on; once it accepts it, this
    fails and the shim (and its private attribute) should go."""
    from adaptguard.models import lora

    config = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"])
    if lora.TEXT_ENCODER_ADAPTER_SHIM:
        with pytest.raises((ImportError, ValueError)):
            micro_model.text_encoder.add_adapter(config)
    else:
        micro_model.text_encoder.add_adapter(config)
        assert lora.has_lora_in(micro_model.text_encoder)
