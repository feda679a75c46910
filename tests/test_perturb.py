"""Model-level perturbations: what each changes, by how much, and that frozen tensors stay put."""

import pytest
import torch

from adaptguard.attacks import Int8Quantize, MagnitudePrune, WeightNoise
from adaptguard.attacks.perturb import editable_weights
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from tests.helpers import params_equal


def _frozen(model) -> FineTuneConstraint:
    names = [n for n, p in model.named_parameters() if n.startswith("unet.") and p.dim() > 1]
    return FineTuneConstraint(frozenset(names[::3]))


@pytest.mark.parametrize("attack", [MagnitudePrune(ratio=0.5), Int8Quantize(), WeightNoise(sigma=0.1)])
def test_perturbation_edits_weights_but_not_frozen_ones_nor_the_input(attack, micro_model, ctx):
    before = micro_model.clone()
    constraint = _frozen(micro_model)
    attacked = attack.run(micro_model, None, constraint, ctx)
    same = params_equal(attacked, micro_model)
    assert all(same[n] for n in constraint.frozen)
    assert not all(same[n] for n in same if n.startswith("unet.") and n not in constraint.frozen)
    assert all(params_equal(micro_model, before).values())  # the input model is unchanged


def test_global_pruning_zeroes_the_requested_share_of_smallest_weights(micro_model, ctx):
    attack = MagnitudePrune(ratio=0.4)
    attacked = attack.run(micro_model, None, None, ctx)
    cost = attack.cost()
    assert cost["pruned_weights"] == pytest.approx(0.4 * cost["editable_weights"], abs=2)
    kept = torch.cat([m.weight.flatten() for _, m in editable_weights(attacked, None)])
    orig = torch.cat([m.weight.flatten() for _, m in editable_weights(micro_model, None)])
    assert orig[kept != 0].abs().min() >= orig[kept == 0].abs().max()  # global: the smallest went


def test_int8_error_is_within_half_a_step(micro_model, ctx):
    attack = Int8Quantize()
    attacked = attack.run(micro_model, None, None, ctx)
    edited = dict(editable_weights(attacked, None))
    for n, module in editable_weights(micro_model, None):
        p, q = module.weight, edited[n].weight
        step = p.abs().flatten(1).amax(1) / 127
        err = (q - p).abs().flatten(1).amax(1)
        assert torch.all(err <= step / 2 + 1e-6), n
        assert len(torch.unique(torch.round(q.flatten(1)[0] / step[0]))) <= 255
    assert 0 < attack.cost()["rms_error"]


@pytest.mark.parametrize(
    "make, key",
    [(lambda: MagnitudePrune(ratio=1.5), "attack.ratio"), (lambda: WeightNoise(sigma=-1), "attack.sigma")],
)
def test_bad_perturbation_parameters_name_the_key(make, key):
    with pytest.raises(ConfigError, match=key):
        make()
