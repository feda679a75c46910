"""The DiffusionModel bundle: tiny build, sampling, diffusers-format save/load, SD folders."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.models import DiffusionModel
from adaptguard.sources import PretrainedSource
from tests.helpers import write_tiny_sd_folder


def test_training_loss_and_gradients(micro_model):
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    loss = micro_model.training_loss(images, ["a red circle"] * 4)
    loss.backward()
    assert loss.item() > 0
    assert micro_model.unet.conv_in.weight.grad.abs().sum() > 0


def test_sampling_is_seeded_and_guidance_matters(micro_model):
    prompts = ["a small red circle", "*[Z]& sks"]
    a = micro_model.sample(prompts, generator=torch.Generator().manual_seed(0))
    b = micro_model.sample(prompts, generator=torch.Generator().manual_seed(0))
    c = micro_model.sample(prompts, generator=torch.Generator().manual_seed(1))
    d = micro_model.sample(prompts, generator=torch.Generator().manual_seed(0), guidance_scale=6.0)
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    for sampler in ("dpm", "euler"):
        assert micro_model.sample(prompts, steps=4, sampler=sampler).shape == (2, 3, 16, 16)


def test_sampling_leaves_every_part_in_the_mode_it_found(micro_model):
    """A loaded bundle's parts are in eval mode while the bundle's own flag says train: sampling used to
    restore that flag onto every part, so a stage trained after an evaluation (a train-mode teacher, whose
    ResNets make their input contiguous) rounded differently from one whose evaluation came from the cache."""
    micro_model.train()
    micro_model.unet.eval()
    before = {name: m.training for name, m in micro_model.named_modules()}
    micro_model.sample(["a small red circle"], steps=2, generator=torch.Generator().manual_seed(0))
    assert {name: m.training for name, m in micro_model.named_modules()} == before
    assert micro_model.training and not micro_model.unet.training and micro_model.text_encoder.training


def test_save_load_round_trip_is_exact(micro_model, tmp_path):
    micro_model.save(tmp_path / "m")
    loaded = DiffusionModel.load(tmp_path / "m")
    for (n, p), (_, q) in zip(micro_model.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(micro_model.sample(["a star"], generator=g()), loaded.sample(["a star"], generator=g()))
    # each component is a plain diffusers / transformers folder
    assert UNet2DConditionModel.from_pretrained(tmp_path / "m", subfolder="unet").config.sample_size == 16
    assert json.loads((tmp_path / "m" / "adaptguard.json").read_text())["kind"] == "pixel"


def test_stable_diffusion_folder_loads_trains_samples_and_saves(tmp_path):
    sd = tmp_path / "sd"
    write_tiny_sd_folder(sd)
    source = PretrainedSource(path=str(sd), resolution=64, sampler={"steps": 3, "guidance_scale": 5.0}, name="sd15")
    model = source.load(RunContext(progress=False, device="cpu"))
    assert model.is_latent and model.latent_shape == (4, 8, 8)
    loss = model.training_loss(torch.rand(2, 3, 64, 64) * 2 - 1, ["a cat", "a dog"])
    assert torch.isfinite(loss)
    images = model.sample(["a cat"], generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 64, 64)
    model.save(tmp_path / "protected")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "protected", safety_checker=None)
    assert torch.equal(pipe.unet.conv_in.weight, model.unet.conv_in.weight)


def test_missing_or_wrong_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.path: model=sd15 needs a local Stable Diffusion folder"):
        PretrainedSource(name="sd15").load(RunContext())
    with pytest.raises(ConfigError, match=r"model.path: .* does not exist"):
        PretrainedSource(path=str(tmp_path / "nope")).load(RunContext())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"missing unet/, text_encoder/"):
        PretrainedSource(path=str(tmp_path / "empty")).load(RunContext())


def test_zero_terminal_snr_starts_sampling_where_training_ends(tmp_path):
    """The flaw it fixes: with `leading` spacing the first sampling step (t=950 of 1000) is not pure noise, so
    the initial noise's low frequencies decide layout and colours (docs/models.md)."""
    from adaptguard.models.tiny import build_tiny_model
    from adaptguard.sources import TinyModelSource

    zsnr = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    model = build_tiny_model(resolution=16, scheduler=zsnr)
    assert model.noise_scheduler.alphas_cumprod[-1].item() == 0.0  # the last training step is pure noise
    old = build_tiny_model(resolution=16)
    assert old.noise_scheduler.alphas_cumprod[-1].item() > 0
    for name in ("ddim", "dpm", "euler"):
        sampler = model.make_sampler(name)
        sampler.set_timesteps(4)
        assert int(sampler.timesteps[0]) == 999, name
        images = model.sample(["a red circle"], steps=4, sampler=name, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(images).all(), name
    model.save(tmp_path / "m")  # the schedule travels with the folder
    assert DiffusionModel.load(tmp_path / "m").make_sampler().config.timestep_spacing == "trailing"
    with pytest.raises(ConfigError, match="model.scheduler.rescale_betas_zero_snr: needs prediction_type"):
        build_tiny_model(scheduler={"rescale_betas_zero_snr": True})
    # models from before these keys keep their cache key (their shipped weights stay found)
    assert set(TinyModelSource().describe()["scheduler"]).isdisjoint(zsnr.keys() - {"prediction_type"})
    described = TinyModelSource(scheduler=zsnr).describe()["scheduler"]
    assert {key: described[key] for key in zsnr} == zsnr
