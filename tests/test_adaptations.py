"""Merges and VAE swaps (attack=merge, attack=vae_swap) on the latent micro model: their arithmetic, what
they leave alone, and their one-line refusals. End to end they run in the diagonals (test_latent, test_dit)."""

import pytest
import torch

from adaptguard.attacks.merge import WeightMerge
from adaptguard.attacks.vae_swap import VaeSwap
from adaptguard.core.constraint import FineTuneConstraint
from adaptguard.core.errors import ConfigError
from adaptguard.data.shapes import ShapesDataModule
from tests.helpers import make_ctx, model_source

DATA = ShapesDataModule(resolution=32, splits={"attacker": {"offset": 5000, "size": 64}})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The shipped micro base, and a 'published' model: the base with every denoiser weight moved."""
    tmp = tmp_path_factory.mktemp("adaptations")
    ctx = make_ctx(tmp)
    base = model_source("micro").load(ctx)
    published = base.clone()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in published.unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return tmp, base, published, ctx.with_base(base)


def _unet(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_a_weighted_sum_with_the_base_is_the_interpolation(models, alpha):
    _, base, published, ctx = models
    before = _unet(published)
    merged = WeightMerge(other="base", alpha=alpha).run(published, DATA, None, ctx)
    for name, tensor in merged.unet.state_dict().items():
        expected = (1 - alpha) * before[name] + alpha * base.unet.state_dict()[name]
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)
    assert all(torch.equal(published.unet.state_dict()[k], v) for k, v in before.items())  # the input is untouched


def test_add_difference_grafts_another_checkpoints_change(models):
    """A + alpha (B - C) with B a saved folder: exactly the published weights plus half of B's difference."""
    tmp, base, published, ctx = models
    other = base.clone()
    with torch.no_grad():
        for p in other.unet.parameters():
            p.mul_(1.1)
    folder = other.save(tmp / "other")
    attack = WeightMerge(mode="add_difference", other=str(folder), alpha=0.5)
    merged = attack.run(published, DATA, None, ctx)
    for name, tensor in merged.unet.state_dict().items():
        c = base.unet.state_dict()[name]
        torch.testing.assert_close(tensor, published.unet.state_dict()[name] + 0.05 * c, rtol=1e-5, atol=1e-6)
    assert attack.cost()["merged_tensors"] > len(merged.unet.state_dict())  # the text encoder merged too


def test_a_merge_leaves_frozen_tensors_as_published(models):
    _, _, published, ctx = models
    frozen = sorted(n for n, _ in published.unet.named_parameters())[:5]
    constraint = FineTuneConstraint(frozenset(f"unet.{n}" for n in frozen))
    merged = WeightMerge(other="base", alpha=1.0).run(published, DATA, constraint, ctx)
    state = merged.unet.state_dict()
    assert all(torch.equal(state[n], published.unet.state_dict()[n]) for n in frozen)
    moved = [n for n, _ in published.unet.named_parameters() if n not in frozen]
    assert not any(torch.equal(state[n], published.unet.state_dict()[n]) for n in moved)


def test_bad_merges_are_refused_in_one_line(models, tmp_path):
    with pytest.raises(ConfigError, match="add_difference with other=base adds nothing"):
        WeightMerge(mode="add_difference", other="base")
    with pytest.raises(ConfigError, match="attack.other: .* does not exist"):
        WeightMerge(other=str(tmp_path / "nope")).check_data(DATA)
    _, _, published, _ = models
    dit = model_source("micro_dit").load(make_ctx(tmp_path)).save(tmp_path / "dit")
    with pytest.raises(ConfigError, match="attack.other: .* is not of this model's architecture"):
        WeightMerge(other=str(dit)).run(published, DATA, None, make_ctx(tmp_path))


def test_a_finetuned_decoder_keeps_the_latent_space_and_changes_the_images(models):
    _, _, published, ctx = models
    attack = VaeSwap(steps=5, batch_size=8, lr=1e-3)
    swapped = attack.run(published, DATA, None, ctx)
    same = {n: torch.equal(p, dict(published.vae.named_parameters())[n]) for n, p in swapped.vae.named_parameters()}
    assert all(v for n, v in same.items() if n.startswith(("encoder.", "quant_conv.")))  # the latent space stays
    assert not all(v for n, v in same.items() if n.startswith("decoder."))
    assert attack.cost()["trainable_params"] == sum(
        p.numel() for n, p in swapped.vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))
    )
    assert swapped.unet is not published.unet and all(torch.equal(a, b) for a, b in zip(
        swapped.unet.parameters(), published.unet.parameters(), strict=True))  # fmt: skip


def test_vae_swaps_to_the_base_or_a_folder_and_refuses_what_does_not_fit(models, tmp_path):
    tmp, base, published, ctx = models
    to_base = VaeSwap(vae="base").run(published, DATA, None, ctx)
    assert to_base.vae is not base.vae and all(torch.equal(a, b) for a, b in zip(
        to_base.vae.parameters(), base.vae.parameters(), strict=True))  # fmt: skip
    folder = base.save(tmp_path / "with_vae")
    from_folder = VaeSwap(vae=str(folder)).run(published, DATA, None, ctx)
    assert all(torch.equal(a, b) for a, b in zip(from_folder.vae.parameters(), base.vae.parameters(), strict=True))
    dit = model_source("micro_dit").load(make_ctx(tmp_path)).save(tmp_path / "dit")  # a 16-channel VAE
    with pytest.raises(ConfigError, match="attack.vae: .* has 16 latent channels, the model 4"):
        VaeSwap(vae=str(dit)).run(published, DATA, None, ctx)
    pixel = model_source("pixel_micro").load(make_ctx(tmp_path))
    with pytest.raises(ConfigError, match="attack=vae_swap: .* has no VAE"):
        VaeSwap(vae="base").run(pixel, DATA, None, ctx)
