"""The diffusion-transformer model: the SD3-structured micro_dit built from config, its flow-matching
objective, its StableDiffusion3Pipeline folders and diffusers as their client (runs: test_dit_runs.py)."""

import subprocess
import sys
import textwrap

import pytest
import torch

from adaptguard.cli.build import instantiate
from adaptguard.cli.config import compose
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.sd3 import SD3Model
from adaptguard.sources import TinyDiTSource

PROMPTS = ["a small red circle in the center on a black background", "a large blue square at the top left on a white background"]  # fmt: skip


@pytest.fixture(scope="module")
def micro_dit(tmp_path_factory) -> SD3Model:
    """The shipped micro_dit (its VAE's measured shift and scale are not the identity)."""
    from tests.helpers import make_ctx

    tmp = tmp_path_factory.mktemp("cfg")
    source = instantiate(compose(["model=micro_dit"], output_dir=tmp).model)
    assert isinstance(source, TinyDiTSource)
    model = source.load(make_ctx(tmp))
    assert model.vae.config.shift_factor != 0.0 and not list((tmp / "cache").glob("base/*"))  # shipped, not built
    return model


def test_micro_dit_has_sd3s_parts_and_trains_by_flow_matching(micro_dit):
    m = micro_dit
    assert type(m.unet).__name__ == "SD3Transformer2DModel" and type(m.noise_scheduler).__name__.startswith("FlowMatch")
    assert m.vae.config.latent_channels == 16 and m.vae.config.shift_factor is not None
    assert m.latent_shape == (16, 8, 8)
    latents = torch.randn(2, *m.latent_shape)
    # the objective: x_t = (1 - s) x + s e, target e - x, s = t / 1000
    t = torch.tensor([0.0, 1000.0])
    noisy, _, emb, target = m.noisy_latents(latents, PROMPTS, t)
    assert torch.allclose(noisy[0], latents[0])  # at s = 0, x_t is the data
    assert torch.allclose(target[1], noisy[1] - latents[1])  # at s = 1, x_t is the noise: the target is x_t - x
    # one packed conditioning tensor: CLIP tokens + T5 tokens + the pooled row
    clip_len, t5_len = m.tokenizer.model_max_length, m.t5_length
    assert emb.shape == (2, clip_len + t5_len + 1, m.unet.config.joint_attention_dim)
    # drawn timesteps follow the scheduler's shifted schedule (logit-normal u, SD3's shift 3 pushes s up)
    torch.manual_seed(0)
    _, drawn, _, _ = m.noisy_latents(torch.randn(512, *m.latent_shape), [""] * 512)
    assert 0 < drawn.min() and drawn.max() <= 1000 and drawn.float().mean() > 600
    m.unet.requires_grad_(True)
    loss = m.latent_loss(latents, PROMPTS)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in m.unet.parameters() if p.requires_grad)
    m.unet.zero_grad(set_to_none=True)
    m.unet.requires_grad_(False)


def test_a_saved_micro_dit_is_a_stable_diffusion_3_folder_diffusers_samples_alike(micro_dit, tmp_path):
    """A fresh process that never imports adaptguard loads the folder with StableDiffusion3Pipeline and, from
    the same noise, draws the images adaptguard draws."""
    folder = micro_dit.save(tmp_path / "model")
    for part in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer_3", "vae", "scheduler"):
        assert (folder / part).is_dir(), part
    reloaded = DiffusionModel.load(folder)
    assert isinstance(reloaded, SD3Model)
    ours = micro_dit.sample(PROMPTS, steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(3))
    again = reloaded.sample(PROMPTS, steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, again)
    torch.save(ours, tmp_path / "ours.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from diffusers import StableDiffusion3Pipeline
        pipe = StableDiffusion3Pipeline.from_pretrained({str(folder)!r})
        images = pipe({PROMPTS!r}, num_inference_steps=4, guidance_scale=3.0, max_sequence_length={micro_dit.t5_length},
                      generator=torch.Generator().manual_seed(3), output_type="pt").images
        ours = torch.load({str(tmp_path / "ours.pt")!r}) * 0.5 + 0.5
        assert "adaptguard" not in sys.modules
        print("max_abs_diff", float((images - ours).abs().max()))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = float(proc.stdout.split("max_abs_diff")[1])
    assert diff < 1e-3, diff


def test_pretraining_a_dit_measures_its_vae_shift_and_scale(tmp_path):
    from tests.helpers import make_ctx

    small = {"steps": 3, "batch_size": 4, "dataset_size": 16, "warmup_steps": 1, "ema_decay": 0.9, "vae_steps": 3,
             "vae_batch_size": 4, "vae_crop": None, "checkpoint_every": 50}  # fmt: skip
    cfg = compose(["model=micro_dit"], output_dir=tmp_path)
    source = instantiate(cfg.model)
    source = TinyDiTSource(**{**{k: getattr(source, k) for k in ("resolution", "transformer", "vae", "text_encoder",
                                                                  "t5", "scheduler", "sampler")}, "pretrain": small})  # fmt: skip
    model = source.load(make_ctx(tmp_path))
    assert isinstance(model, SD3Model)
    shift, scale = model.vae.config.shift_factor, model.vae.config.scaling_factor
    assert shift != 0.0 and scale > 0 and scale != 1.0
    # the denoiser sees centred, unit-scale latents, and decoding undoes it
    z = torch.randn(1, *model.latent_shape)
    assert torch.allclose(model.scale_latents(z / scale + shift), z, atol=1e-5)
