"""Stable Signature's parts that need no pipeline run: the extractor's whitening, its refusals and its key.
End to end (detected, survives a UNet fine-tune, falls to a VAE swap) it runs in tests/test_latent.py's
and tests/test_dit_runs.py's diagonals."""

import stat

import pytest
import torch

from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.defenses.hidden_extractor import ExtractorConfig, HiddenDecoder, HiddenEncoder, whiten
from adaptguard.defenses.stable_signature import StableSignatureDefense, StableSignatureKey
from tests.helpers import make_ctx, model_source


def test_whitening_centres_and_decorrelates_the_extractor_on_unmarked_images():
    torch.manual_seed(0)
    decoder = HiddenDecoder(bits=8, depth=2, channels=8, pool=2).eval()
    with torch.no_grad():
        decoder.linear.bias.add_(3.0)  # a biased extractor: every bit reads 1 on any image
    images = torch.rand(256, 3, 16, 16) * 2 - 1
    balance = whiten(decoder, images)
    assert balance["bit_bias_before"] > 0.4 and balance["bit_bias_after"] < 0.1
    with torch.no_grad():
        ys = decoder(images).double()
    torch.testing.assert_close(ys.mean(0), torch.zeros(8, dtype=torch.double), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.cov(ys.T), torch.eye(8, dtype=torch.double), atol=0.05, rtol=0)


def test_the_encoder_draws_a_bounded_message_dependent_residual():
    encoder = HiddenEncoder(bits=8, depth=2, channels=8).eval()
    torch.nn.init.normal_(encoder.message.weight)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    a = encoder(images, torch.zeros(2, 8, dtype=torch.uint8))
    b = encoder(images, torch.ones(2, 8, dtype=torch.uint8))
    assert a.shape == images.shape and a.abs().max() <= 1 and not torch.allclose(a, b)


def test_a_pixel_model_is_refused_in_one_line(tmp_path):
    ctx = make_ctx(tmp_path)
    pixel = model_source("pixel_micro").load(ctx)
    data = ShapesDataModule(resolution=pixel.resolution, splits={"owner": {"size": 8}, "eval": {"size": 8}})
    with pytest.raises(ConfigError, match="defense=stable_signature: .*no VAE decoder"):
        StableSignatureDefense().protect(pixel, data, ctx)


def test_bad_settings_fail_before_any_work():
    with pytest.raises(ConfigError, match="defense.extractor.distortions"):
        ExtractorConfig(distortions=["no_such_transform"])
    with pytest.raises(ConfigError, match="defense.image_weight"):
        StableSignatureDefense(image_weight=-1.0)


def test_the_key_is_owner_only_and_never_printed(tmp_path):
    d = StableSignatureDefense(extractor={"bits": 8})
    key = StableSignatureKey(d.make_message(5), ["a red circle"], {"decoder": {}, "info": {}})
    key.save(tmp_path)
    assert stat.S_IMODE((tmp_path / key.FILE).stat().st_mode) == 0o600
    assert "".join(map(str, key.message.tolist())) not in repr(key) and "<secret>" in repr(key)
    other = d.random_key(key, seed=6)
    assert other.prompts == key.prompts and other.extractor is key.extractor
    assert not torch.equal(other.message, key.message) and other.message.numel() == 8
    assert "key_seed" not in str(StableSignatureDefense(key_seed=7).public_config().get("key_seed", ""))
