"""The DiffusionModel bundle: tiny build, sampling, diffusers-format save/load, SD folders."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from adaptguard.context import RunContext
from adaptguard.errors import ConfigError
from adaptguard.models import DiffusionModel, PretrainedSource


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


def _write_tiny_sd_folder(path):
    """A miniature Stable Diffusion folder, written the way real ones are (save_pretrained)."""
    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tok_dir = path.parent / "tok"
    tok_dir.mkdir()
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32, 32, 32), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
    )  # fmt: skip
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(path)  # fmt: skip


def test_stable_diffusion_folder_loads_trains_samples_and_saves(tmp_path):
    sd = tmp_path / "sd"
    _write_tiny_sd_folder(sd)
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
