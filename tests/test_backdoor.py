"""The output-space backdoor: embedding, verification, and what must not be detected."""

import pytest
import torch

from adaptguard.core.errors import ConfigError
from adaptguard.defenses import BackdoorDefense, BackdoorKey
from adaptguard.defenses.backdoor import read_bits
from tests.helpers import make_ctx, make_micro_data


def test_target_image_reads_back_as_the_key_bits():
    key = BackdoorDefense(grid=8, key_seed=3).make_key()
    image = key.target_image(32)
    assert image.shape == (3, 32, 32) and set(image.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(read_bits(image[None], 8)[0], key.bits)


def test_keys_are_reproducible_by_seed_random_otherwise_and_redacted():
    d = BackdoorDefense(key_seed=5)
    a, b = d.make_key(), d.make_key()
    assert a.trigger == b.trigger and torch.equal(a.bits, b.bits)
    c, e = BackdoorDefense().make_key(), BackdoorDefense().make_key()
    assert c.trigger != e.trigger
    assert a.trigger not in repr(a) and "secret" in repr(a)


def test_key_save_load(tmp_path):
    key = BackdoorDefense(key_seed=1).make_key()
    key.save(tmp_path)
    loaded = BackdoorKey.load(tmp_path)
    assert loaded.trigger == key.trigger and torch.equal(loaded.bits, key.bits)


@pytest.fixture(scope="module")
def embedded(micro_base, tmp_path_factory):
    """A short embedding on the 16-px micro model: enough to move bit accuracy, not to be detected.

    Detection itself (rate >= 0.9) is tested on the tiny model in test_e2e.py.
    """
    ctx = make_ctx(tmp_path_factory.mktemp("backdoor"))
    defense = BackdoorDefense(steps=300, batch_size=16, lr=1e-3, trigger_fraction=0.9, grid=4, num_samples=16,
                              fpr=1e-2, key_seed=11)  # fmt: skip
    base = micro_base.clone()
    return defense, base, defense.protect(base, make_micro_data(), ctx)


def test_embedding_moves_the_trigger_output_towards_the_key_only(embedded, tmp_path):
    defense, base, protected = embedded
    ctx = make_ctx(tmp_path)
    ver = defense.verify(protected.model, protected.key, ctx)
    assert ver.figures["bit_accuracy"] >= 0.75, ver.summary()
    null = defense.verify(base, protected.key, ctx)  # never-watermarked model
    assert not null.detected and null.figures["bit_accuracy"] < 0.65, null.summary()
    flipped = BackdoorKey(trigger=protected.key.trigger, bits=1 - protected.key.bits)  # right trigger, wrong bits
    wrong = defense.verify(protected.model, flipped, ctx)
    assert not wrong.detected and wrong.rate == 0 and wrong.figures["bit_accuracy"] <= 0.25, wrong.summary()
    # null scores (same images against random keys) follow the binomial null: mean near half the bits
    assert abs(sum(ver.null_scores) / len(ver.null_scores) - 8) < 0.5


def test_protect_leaves_the_input_model_unchanged(embedded, micro_base):
    _, base, protected = embedded
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), micro_base.parameters(), strict=True))
    assert not all(
        torch.equal(p, q) for p, q in zip(base.unet.parameters(), protected.model.unet.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    "kwargs,key", [({"trigger_fraction": 1.0}, "defense.trigger_fraction"), ({"fpr": 0}, "defense.fpr")]
)
def test_bad_defense_parameters_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        BackdoorDefense(**kwargs)
