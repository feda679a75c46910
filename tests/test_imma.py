"""IMMA on the micro model: what the immunization changes and what it leaves. End to end (an attack on the
illegal and the legal domain after it) it runs in tests/test_latent.py's diagonal."""

import pytest
import torch

from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.defenses.imma import IMMADefense
from tests.helpers import make_ctx, model_source

DATA = ShapesDataModule(resolution=32, splits={"illegal": {"where": {"colour": ["red"]}, "size": 32}})


def test_only_the_cross_attention_moves_and_the_attackers_adapter_is_discarded(tmp_path):
    ctx = make_ctx(tmp_path)
    base = model_source("micro").load(ctx)
    protected = IMMADefense(steps=3, batch_size=4, lr=1e-3).protect(base, DATA, ctx)
    before, after = base.unet.state_dict(), protected.model.unet.state_dict()
    assert before.keys() == after.keys()  # no LoRA tensors left, nothing renamed
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(".attn2.to_" in n for n in moved), sorted(moved)[:3]
    assert protected.key is None and protected.info["immunized_tensors"] >= len(moved)
    assert set(protected.info["final_losses"]) == {"inner_loss", "outer_loss"}
    text = base.text_encoder.state_dict()
    assert all(torch.equal(v, protected.model.text_encoder.state_dict()[k]) for k, v in text.items())


def test_a_missing_illegal_split_is_one_line():
    with pytest.raises(ConfigError, match=r"defense=imma: dataset.splits has no 'illegal'.*experiment=freeze"):
        IMMADefense().check_data(ShapesDataModule(resolution=32, splits={"owner": {"size": 8}}))
