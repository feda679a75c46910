"""GPU check (``make gpu-check``): the Stable Diffusion code paths at SD 1.5's and SD3-medium's size, timed.

``--model sd15``: an SD-1.5-sized UNet / VAE / text encoder at 512 px. ``--model sd3``: an
SD3-medium-sized ``SD3Transformer2DModel`` (24 joint blocks, width 1536, 2x2 patches of a 16-channel
latent, about 2 B parameters) with SD3's VAE at 1024 px; its text encoders have SD3's output widths (the
transformer's joint and pooled dimensions) but one layer each, since they never train. Random weights
from config (nothing is downloaded), bf16 mixed precision and gradient checkpointing on:

- one LoRA and one full fine-tuning step through adaptguard's attacks (Lightning), each against a
  plain diffusers training step (train_text_to_image.py's loss, torch.autocast) on the same batch;
- AIAO's and SleeperMark's protection steps, against the same plain step;
- AIAO's white-box verification, SleeperMark's image verification, sampling (VAE decode included);
- peak GPU memory of each part.

    python -m benchmarks.gpu_check --out bench/gpu_check.json            # on any CUDA machine
    python -m benchmarks.gpu_check --model sd3 --out bench/gpu_check_sd3.json
    python -m benchmarks.gpu_check --small [--model sd3] --out /tmp/check.json   # the same code on a CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import logging
import platform
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from adaptguard.attacks.finetune import FullFineTune, LoraFineTune
from adaptguard.core.artifacts import ArtifactCache
from adaptguard.core.context import RunContext
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.defenses.aiao import AIAODefense
from adaptguard.defenses.sleepermark import SleeperMarkDefense
from adaptguard.models import objective
from adaptguard.models.bundle import DiffusionModel, SamplerConfig
from adaptguard.models.tiny_dit import build_tiny_dit
from adaptguard.models.tokenizer import DEFAULT_WORDS, build_tokenizer
from adaptguard.training.loop import StepTimer

SD15 = {
    "unet": {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": 768,
             "attention_head_dim": 8, "sample_size": 64},
    "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2},
    "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    "resolution": 512,
}  # fmt: skip
SMALL = {
    "unet": {"block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32,
             "attention_head_dim": 8, "sample_size": 8, "norm_num_groups": 8,
             "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")},
    "vae": {"block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    "resolution": 16,
}  # fmt: skip


SD3_MEDIUM = {
    "transformer": {"num_layers": 24, "num_attention_heads": 24, "attention_head_dim": 64, "patch_size": 2},
    "text_encoder": {"hidden_size": 1024, "intermediate_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 8,
                     "max_length": 77},
    "t5": {"d_model": 4096, "d_ff": 1024, "num_layers": 1, "num_heads": 32, "max_length": 256},
    "vae": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32},
    "resolution": 1024,
}  # fmt: skip
SD3_SMALL = {
    "transformer": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8, "patch_size": 2},
    "text_encoder": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    "t5": {"d_model": 32, "d_ff": 32, "num_layers": 1, "num_heads": 2, "max_length": 16},
    "vae": {"block_out_channels": [16, 32], "layers_per_block": 1},
    "resolution": 16,
}  # fmt: skip


def build_sd3(spec: dict[str, Any]) -> DiffusionModel:
    """Random weights in SD3's architecture (tiny_dit's builder at SD3-medium's sizes), SD3's schedule shift."""
    sampler = SamplerConfig(name="euler", steps=20, guidance_scale=7.0, batch_size=4)
    model = build_tiny_dit(spec["resolution"], spec["transformer"], spec["text_encoder"], spec["t5"], sampler=sampler,
                           vae=spec["vae"])  # fmt: skip
    model.gradient_checkpointing = True
    return model


def build_model(spec: dict[str, Any]) -> DiffusionModel:
    """Random weights in SD's architecture; SD 1.5's noise schedule and latent scale."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(DEFAULT_WORDS, vocab_size=1024, max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, **spec["text"]))  # fmt: skip
    levels = len(spec["vae"]["block_out_channels"])
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                        latent_channels=4, scaling_factor=0.18215, **spec["vae"])  # fmt: skip
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    sampler = SamplerConfig(name="dpm", steps=20, guidance_scale=7.5, batch_size=4)
    return DiffusionModel(unet, text, tokenizer, scheduler, vae=vae, resolution=spec["resolution"], sampler=sampler,
                          gradient_checkpointing=True)  # fmt: skip


class Checker:
    """Times each part on one batch; ``plain_step_s`` is the yardstick every ratio divides by."""

    def __init__(
        self, model: DiffusionModel, batch_size: int, steps: int, device: torch.device, profile: bool = False
    ) -> None:
        self.model = model.to(device)
        self.profile = profile
        self.device = device
        self.batch_size = batch_size
        self.steps = steps
        self.bf16 = device.type == "cuda"
        self.data = ShapesDataModule(resolution=model.resolution, splits={
            "owner": {"size": 4 * batch_size}, "attacker": {"offset": 5000, "size": 4 * batch_size},
            "eval": {"offset": 9000, "size": 4 * batch_size}})  # fmt: skip
        self.batch = next(iter(self.data.dataloader("owner", batch_size)))
        trainer = functools.partial(
            L.Trainer, accelerator=device.type, devices=1, precision="bf16-mixed" if self.bf16 else "32-true",
            logger=False, enable_model_summary=False, enable_progress_bar=False, enable_checkpointing=False,
        )  # fmt: skip
        self.timer = StepTimer()
        self.ctx = RunContext(cache=ArtifactCache(Path("/tmp/adaptguard-gpu-check")), make_trainer=trainer,
                              progress=False, device=str(device), callbacks=[self.timer])  # fmt: skip

    def measure(self, fn: Callable[[], Any], profile: bool = False) -> dict[str, Any]:
        """Wall time and peak GPU memory of ``fn``; the step times ``fn``'s fits recorded (warm-up skipped);
        with ``profile``, where ``fn``'s time went (the functions with the most cumulative time, cProfile)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.timer.times.clear()
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        returned = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if profiler:
            profiler.disable()
        out: dict[str, Any] = {"wall_s": round(time.perf_counter() - start, 3)}
        if isinstance(returned, dict):  # the part timed its own steps
            out.update(returned)
        timed = self.timer.times[-(self.steps - 2) :] if self.timer.times else []
        if timed and "step_s" not in out:
            out["step_s"] = round(statistics.median(timed), 4)
        if self.device.type == "cuda":
            out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if profiler:
            out["profile"] = top_functions(profiler)
        return out

    def plain_step(self) -> dict[str, Any]:
        """diffusers' train_text_to_image.py step, written from the components: autocast, checkpointing, AdamW."""
        m = self.model.clone()
        m.requires_grad_(False)
        m.unet.requires_grad_(True).train()
        m.unet.enable_gradient_checkpointing()
        opt = torch.optim.AdamW(m.unet.parameters(), lr=1e-5)
        images = self.batch["image"].to(self.device)
        flow = objective.is_flow(m.noise_scheduler)
        ids = None if flow else m.tokenize(self.batch["caption"])
        times = []
        for _ in range(self.steps):
            start = time.perf_counter()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                with torch.no_grad():
                    latents = m.vae.encode(images).latent_dist.sample()
                    shift = m.vae.config.get("shift_factor") or 0.0
                    latents = (latents - shift) * m.vae.config.scaling_factor
                    emb = m.encode_prompts(self.batch["caption"]) if flow else m.text_encoder(ids)[0]
                noise = torch.randn_like(latents)
                if flow:  # train_dreambooth_lora_sd3.py: logit-normal u, x_t = (1 - s) x + s e, target e - x
                    index = (torch.sigmoid(torch.randn(latents.shape[0])) * 1000).long()
                    t = m.noise_scheduler.timesteps[index].to(self.device)
                    s = (t / 1000).view(-1, 1, 1, 1)
                    pooled = emb[:, -1, : m.unet.config.pooled_projection_dim]
                    pred = m.unet(hidden_states=(1 - s) * latents + s * noise, timestep=t,
                                  encoder_hidden_states=emb[:, :-1], pooled_projections=pooled).sample  # fmt: skip
                    loss = F.mse_loss(pred.float(), (noise - latents).float())
                else:
                    t = torch.randint(0, 1000, (latents.shape[0],), device=self.device)
                    pred = m.unet(m.noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=emb).sample
                    loss = F.mse_loss(pred.float(), noise.float())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        del m, opt
        return {"step_s": round(statistics.median(times[2:] or times), 4)}

    def run(self) -> dict[str, Any]:
        bs, steps, m, data, ctx = self.batch_size, self.steps, self.model, self.data, self.ctx
        precision = "bf16" if self.bf16 else None
        report: dict[str, Any] = {"plain_diffusers_step": self.measure(self.plain_step)}
        lora = LoraFineTune(steps=steps, batch_size=bs, mixed_precision=precision)
        full = FullFineTune(steps=steps, batch_size=bs, mixed_precision=precision)
        aiao = AIAODefense(steps=steps, batch_size=bs, probe_steps=steps, num_subpaths=16,
                           verify_batch_size=8, key_seed=1)  # fmt: skip
        mark = SleeperMarkDefense(steps=steps, batch_size=bs, codec={"steps": steps, "batch_size": bs, "bits": 16},
                                  num_samples=4, null_messages=7, key_seed=1, sample_steps=10)  # fmt: skip
        report["lora_step"] = self.measure(lambda: lora.run(m, data, None, ctx))
        report["full_finetune_step"] = self.measure(lambda: full.run(m, data, None, ctx))
        protected: dict[str, Any] = {}
        report["aiao_protect"] = self.measure(lambda: protected.update(aiao=aiao.protect(m, data, ctx)))
        report["aiao_verify"] = self.measure(
            lambda: aiao.verify(protected["aiao"].model, protected["aiao"].key, ctx), profile=self.profile
        )
        report["sleepermark_protect"] = self.measure(lambda: protected.update(mark=mark.protect(m, data, ctx)))
        report["sleepermark_verify"] = self.measure(
            lambda: mark.verify(protected["mark"].model, protected["mark"].key, ctx), profile=self.profile
        )
        for part, name in (("aiao_verify", "aiao"), ("sleepermark_verify", "mark")):
            # where verification ran: Lightning's teardown once left every fine-tuned model on the CPU
            report[part]["model_device"] = str(protected[name].model.device)
        prompts = data.captions("eval", 4)
        report["sampling"] = self.measure(lambda: m.sample(prompts, steps=20))
        report["sampling"]["images_per_s"] = round(len(prompts) / report["sampling"]["wall_s"], 3)
        plain = report["plain_diffusers_step"]["step_s"]
        for part in ("lora_step", "full_finetune_step", "aiao_protect", "sleepermark_protect"):
            if "step_s" in report[part]:
                report[part]["ratio_to_plain_step"] = round(report[part]["step_s"] / plain, 3)
        return report


def top_functions(profiler: cProfile.Profile, n: int = 15) -> list[dict[str, Any]]:
    """The ``n`` functions with the most cumulative time: name, calls, seconds (with what they call)."""
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive, own s, cumulative s, callers)}
    rows = sorted(stats.items(), key=lambda item: -item[1][3])[:n]
    return [{"function": f"{Path(file).name}:{line}({name})", "calls": calls, "cumulative_s": round(cum, 4)}
            for (file, line, name), (calls, _, _, cum, _) in rows]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/gpu_check.json")
    parser.add_argument("--model", choices=("sd15", "sd3"), default="sd15", help="SD 1.5's UNet or SD3-medium's DiT")
    parser.add_argument("--small", action="store_true", help="tiny sizes: check the script itself on a CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 (sd15), 1 (sd3 at 1024 px)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed part (the first 2 are warm-up)")
    parser.add_argument("--profile", action="store_true", help="where each verification's time goes (cProfile)")
    opts = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(f"{name}.utilities.rank_zero").setLevel(logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not opts.small:
        raise SystemExit("gpu-check: no CUDA device here; run it on a GPU machine, or add --small to test the script")
    sd3 = opts.model == "sd3"
    spec = (SD3_SMALL if opts.small else SD3_MEDIUM) if sd3 else (SMALL if opts.small else SD15)
    model = build_sd3(spec) if sd3 else build_model(spec)
    batch_size = opts.batch_size or (1 if sd3 and not opts.small else 4)
    report = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "precision": "bf16-mixed" if device.type == "cuda" else "fp32"},
        "model": {"family": opts.model, "size": "small" if opts.small else {"sd15": "sd15", "sd3": "sd3-medium"}[opts.model],
                  "resolution": spec["resolution"],
                  "denoiser": type(model.unet).__name__,
                  "unet_params_m": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 1),
                  "gradient_checkpointing": True, "batch_size": batch_size, "steps_per_part": opts.steps},
    }  # fmt: skip
    report.update(Checker(model, batch_size, opts.steps, device, profile=opts.profile).run())
    report["written"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
