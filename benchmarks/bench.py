"""Speed and memory targets, written as JSON (``make bench``).

Entries:
- ``train_step``: tiny-model training step through our Lightning module (with the finite-value
  guard and per-step seeding every stage has) vs a plain torch loop on the same UNet and batch
  (target: ratio <= 1.05); ``guard_and_seed_overhead`` is that loop with vs without the two callbacks.
- ``sampling``: images/s with the pixel model's default sampler (DDIM, CFG).
- ``latent_train_step``: the latent tiny model (VAE encode + UNet on 16x16x4 latents) through our
  Lightning module vs a plain diffusers-style loop written from the components (target: ratio <= 1.05).
- ``latent_sampling``: images/s of the latent tiny model, VAE decode included.
- ``aiao``: white-box verification wall time for K = 64 subpaths (one batched forward with
  the trigger, one without as the stealth control), and an embedding step's time relative
  to a plain fine-tuning step on the same batch: split (the default, half the batch triggered)
  and paired (every image both ways), interleaved in one run (target: split <= 1.6).
- ``sleepermark``: the same for a stage-2 step, and verification throughput.
- ``freezeasguard``: a mask-learning step vs a plain fine-tuning step, and fine-tuning under a rho = 0.5
  mask (step time, exact optimizer-state and gradient memory) against a floor with no weight gradients.
- ``lora_vs_full``: a LoRA step (ranks 4, 16) vs a full fine-tuning step: time, peak memory, trainable size.
- ``data_loading``: on-disk loader images/s (AFHQ layout, 2 workers) vs a training step's consumption.
- ``default_experiment``: wall time of ``make run``'s experiment (``experiment=quickstart``: AIAO x LoRA
  on the latent tiny model) on an empty cache with the shipped base model (target <= 300 s on 2 cores),
  each stage's share of it, and the verification rates.
- ``sweep``: a 2 x 2 micro sweep's wall time vs its four jobs run separately on empty caches without
  the evaluation cache, and vs the sweep with ``eval.cache=false``.
- ``sampler_steps``: the tiny base model's FID vs sampler steps (DDIM, DPM-Solver++) and sampling
  images/s vs batch size.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from adaptguard.cli.build import instantiate
from adaptguard.cli.config import compose
from adaptguard.data.shapes import ShapesDataModule
from adaptguard.training import DenoisingModule
from adaptguard.training.loop import FiniteGuard, StepSeed

REPO = Path(__file__).resolve().parents[1]


class _StepClock(L.Callback):
    """Wall time between consecutive step ends: the loop's own overhead included."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.marks.append(time.perf_counter())


def build_model(name: str):
    """``model=<name>`` built from its config, random weights (step times do not depend on the values)."""
    return instantiate(compose([f"model={name}"]).model).build()


def diffusers_loss(m, batch) -> torch.Tensor:
    """The loss of diffusers' train_text_to_image.py, written from the components (the baseline)."""
    with torch.no_grad():
        latents = m.vae.encode(batch["image"]).latent_dist.sample() * m.vae.config.scaling_factor
        ids = m.tokenizer(list(batch["caption"]), padding="max_length", truncation=True,
                          max_length=m.tokenizer.model_max_length, return_tensors="pt").input_ids  # fmt: skip
        emb = m.text_encoder(ids)[0]
    noise = torch.randn_like(latents)
    t = torch.randint(0, m.noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
    pred = m.unet(m.noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=emb).sample
    return torch.nn.functional.mse_loss(pred.float(), noise.float())


def bench_train_step(steps: int, warmup: int, batch_size: int, repeats: int, name: str = "pixel") -> dict[str, Any]:
    model = build_model(name)
    data = ShapesDataModule(resolution=model.resolution, splits={"s": {"size": batch_size}})
    batch = next(iter(data.dataloader("s", batch_size)))
    batches = DataLoader([batch] * (steps + warmup), batch_size=None)

    def lightning_run(guarded: bool = True) -> float:
        """Our stages' loop: Lightning with the finite-value guard and per-step seeding every fit adds."""
        m = copy.deepcopy(model).requires_grad_(False)
        m.unet.requires_grad_(True)
        clock = _StepClock()
        extra = [FiniteGuard("bench", "attack.lr"), StepSeed(0)] if guarded else []
        trainer = L.Trainer(
            max_steps=steps + warmup, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[clock, *extra],
        )  # fmt: skip
        trainer.fit(DenoisingModule(m), batches)
        d = [b - a for a, b in zip(clock.marks[warmup - 1 :], clock.marks[warmup:], strict=False)]
        return statistics.median(d)

    def plain_run() -> float:
        m = copy.deepcopy(model).requires_grad_(False)
        m.unet.requires_grad_(True)
        m.train()
        opt = DenoisingModule(m).configure_optimizers()["optimizer"]
        marks = []
        for b in batches:
            loss = diffusers_loss(m, b) if m.is_latent else m.training_loss(b["image"], b["caption"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            marks.append(time.perf_counter())
        d = [b - a for a, b in zip(marks[warmup - 1 :], marks[warmup:], strict=False)]
        return statistics.median(d)

    lit, bare, plain = [], [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits all three
        plain.append(plain_run())
        lit.append(lightning_run())
        bare.append(lightning_run(guarded=False))
    lit_s, bare_s, plain_s = min(lit), min(bare), min(plain)
    return {
        "model": name,
        "batch_size": batch_size,
        "steps_timed": steps,
        "lightning_step_s": round(lit_s, 4),
        "lightning_unguarded_step_s": round(bare_s, 4),
        "guard_and_seed_overhead": round(lit_s / bare_s, 4),  # FiniteGuard + StepSeed vs Lightning alone
        "plain_torch_step_s": round(plain_s, 4),
        "ratio": round(lit_s / plain_s, 4),
        "target_ratio": 1.05,
        "meets_target": lit_s / plain_s <= 1.05,
    }


def bench_sampling(n: int, name: str = "pixel") -> dict[str, Any]:
    model = build_model(name)
    prompts = ShapesDataModule(splits={"s": {"size": n}}).captions("s", n)
    model.sample(prompts[:8], steps=2)  # warm-up
    start = time.perf_counter()
    model.sample(prompts, generator=torch.Generator().manual_seed(0))
    wall = time.perf_counter() - start
    s = model.sampler
    return {
        "model": name,
        "resolution": model.resolution,
        "vae_decode": model.is_latent,
        "images": n,
        "sampler": s.name,
        "steps": s.steps,
        "guidance_scale": s.guidance_scale,
        "batch_size": s.batch_size,
        "wall_s": round(wall, 2),
        "images_per_s": round(n / wall, 2),
    }


def _unet_stepper(model, loss_fn):
    """One AdamW step on a fresh copy's UNet with ``loss_fn(copy)``: the unit the ratios compare."""
    m = copy.deepcopy(model).requires_grad_(False)
    m.unet.requires_grad_(True)
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = loss_fn(m)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _median_step_s(step, steps: int, warmup: int) -> float:
    times = []
    for i in range(steps + warmup):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _interleaved(losses: dict[str, Any], model, steps: int, rounds: int = 3) -> dict[str, float]:
    """Median step time of each loss on fresh copies of ``model``, the cases taking turns in ``rounds`` rounds
    (so drift in machine load hits every case); the fastest round of each."""
    best = {name: float("inf") for name in losses}
    per_round = max(2, steps // rounds)
    for _ in range(rounds):
        for name, loss in losses.items():
            best[name] = min(best[name], _median_step_s(_unet_stepper(model, loss), per_round, 2))
    return best


def _split_vs_paired(model, batch, split, paired, steps: int) -> tuple[float, float, float]:
    """Step times of a plain fine-tuning step and of two embedding objectives (split, paired) on one batch."""
    times = _interleaved(
        {
            "plain": lambda m: m.training_loss(batch["image"], batch["caption"]),
            "split": lambda m: split(m, batch)["loss"],
            "paired": lambda m: paired(m, batch)["loss"],
        },
        model,
        steps,
    )
    return times["plain"], times["split"], times["paired"]


def bench_aiao(steps: int, batch_size: int) -> dict[str, Any]:
    from adaptguard.analysis import unet_blocks
    from adaptguard.core.context import RunContext
    from adaptguard.defenses.aiao import AIAODefense, _EmbeddingObjective

    model = build_model("pixel")
    blocks = unet_blocks(model.unet, model.latent_shape)
    defense = AIAODefense(num_subpaths=64)
    key = defense.make_key(list(range(len(blocks))), [1.0] * len(blocks), seed=1)
    ctx = RunContext(progress=False, device="cpu")
    defense.verify(model, key, ctx)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        defense.verify(model, key, ctx)
    verify_s = (time.perf_counter() - start) / 3

    batch = next(iter(ShapesDataModule(splits={"s": {"size": batch_size}}).dataloader("s", batch_size)))
    teacher = copy.deepcopy(model.unet).requires_grad_(False)

    split = _EmbeddingObjective(defense, key, blocks, teacher, seed=0)
    paired = _EmbeddingObjective(AIAODefense(num_subpaths=64, paired=True), key, blocks, teacher, seed=0)
    plain, embed, before = _split_vs_paired(model, batch, split, paired, steps)
    return {
        "num_subpaths": 64,
        "verify_wall_s": round(verify_s, 3),
        "verify_unet_forwards": 2,
        "batch_size": batch_size,
        "plain_finetune_step_s": round(plain, 4),
        "embedding_step_s": round(embed, 4),
        "embedding_step_ratio": round(embed / plain, 3),
        "paired_step_s": round(before, 4),
        "paired_step_ratio": round(before / plain, 3),
        "target_ratio": 1.6,
        "note": "split (default): half the batch triggered, teacher forward + one student step; paired "
        "(defense.paired=true, the objective before issue 17): every image untriggered and triggered, 2x student "
        "rows; every UNet weight trained here (defense.trainable=candidates, the default, trains fewer)",
    }


def bench_sleepermark(steps: int, batch_size: int, samples: int) -> dict[str, Any]:
    """Stage 2 runs the frozen teacher and the student on triggered + plain prompts: 2 UNets x 2 inputs."""
    from adaptguard.core.context import RunContext
    from adaptguard.defenses.message_codec import Codec, CodecConfig, MessageDecoder, MessageEncoder
    from adaptguard.defenses.sleepermark import SleeperMarkDefense, SleeperMarkKey, TriggerDistillation

    model = build_model("pixel")
    cfg = CodecConfig()
    shape = model.latent_shape
    codec = Codec(
        MessageEncoder(cfg.bits, shape, cfg.encoder_hidden),
        MessageDecoder(cfg.bits, shape, cfg.decoder_width, cfg.decoder_hidden),
        {"config": asdict(cfg), "latent_shape": list(shape)},
    )  # untrained weights cost the same as trained ones
    defense = SleeperMarkDefense(num_samples=samples)
    batch = next(iter(ShapesDataModule(splits={"s": {"size": batch_size}}).dataloader("s", batch_size)))
    teacher = copy.deepcopy(model.unet).requires_grad_(False)
    delta = torch.zeros(1, *shape)

    split = TriggerDistillation(teacher, delta, defense.trigger, 1.0, 250, 100, 0.5, 0.2)
    paired = TriggerDistillation(teacher, delta, defense.trigger, 1.0, 250, 100, 0.5, 0.2, paired=True)
    plain, stage2, before = _split_vs_paired(model, batch, split, paired, steps)

    key = SleeperMarkKey(defense.trigger, defense.make_message(0), ["a red circle"] * samples, codec.state())
    ctx = RunContext(progress=False, device="cpu")
    start = time.perf_counter()
    images = defense.verification_images(model, key, ctx)
    sample_s = time.perf_counter() - start
    start = time.perf_counter()
    defense.verify_images(images, key, model)
    decode_s = time.perf_counter() - start
    n = sum(len(v) for v in images.values())
    return {
        "batch_size": batch_size,
        "plain_finetune_step_s": round(plain, 4),
        "stage2_step_s": round(stage2, 4),
        "stage2_step_ratio": round(stage2 / plain, 3),
        "paired_step_s": round(before, 4),
        "paired_step_ratio": round(before / plain, 3),
        "target_ratio": 1.6,
        "verify_images": n,
        "verify_images_per_s": round(n / (sample_s + decode_s), 2),
        "decode_only_images_per_s": round(n / decode_s, 1),
        "note": "whole-UNet training in all; split (default): half the batch triggered, one teacher forward + one "
        "student step; paired (defense.paired=true, the objective before issue 17): every image triggered and "
        "plain; verification = triggered + untriggered images, model sampler settings",
    }


def _measure_steps(step, steps: int, trainable: int) -> dict[str, Any]:
    """Median step time and the process's peak memory (call in a fresh process)."""
    import resource

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step_s = _median_step_s(step, steps, 3)
    return {
        "step_s": round(step_s, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_steps_mb": round(base_rss, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "trainable": trainable,
    }


def _freeze_child(kind: str, rho: float, steps: int, batch_size: int, queue) -> None:
    """One measurement in a fresh process, so its peak memory is its own."""

    from adaptguard.core.constraint import FineTuneConstraint
    from adaptguard.defenses.freezeasguard import FreezeAsGuardDefense, MaskLearning
    from adaptguard.defenses.freezing import candidate_sizes, project_to_ratio, random_scores

    torch.manual_seed(0)
    model = build_model("pixel")
    data = ShapesDataModule(splits={"a": {"size": batch_size}, "b": {"offset": 100, "size": batch_size}})
    a, b = (next(iter(data.dataloader(s, batch_size))) for s in ("a", "b"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    a, b = ({k: v.to(device) if torch.is_tensor(v) else v for k, v in x.items()} for x in (a, b))
    if kind == "mask":
        model.requires_grad_(False)
        theta_ft = {n: p.detach() + 0.01 for n, p in model.unet.named_parameters()}
        learner = MaskLearning(model, theta_ft, FreezeAsGuardDefense(), seed=0).to(device)
        opt = torch.optim.SGD([learner.x, *learner.ft], lr=1.0)
        count = [0]

        def step() -> None:
            opt.zero_grad()
            learner.set_gradients({"illegal": a, "legal": b}, publisher=count[0] % 5 == 0)
            opt.step()
            count[0] += 1

        trainable = len(learner.names)
    else:  # a full fine-tuning step on 2 x batch_size images, with or without a freezing mask
        both = {"image": torch.cat([a["image"], b["image"]]), "caption": a["caption"] + b["caption"]}
        model.requires_grad_(False)
        model.unet.requires_grad_(True)
        if rho > 0:
            sizes = candidate_sizes(model)
            frozen = project_to_ratio(random_scores(sizes, 0), sizes, rho, kind.split("_")[-1])
            FineTuneConstraint(frozenset(frozen)).apply(model)
        if kind == "floor":  # only the first conv trains: the whole backward pass runs, almost no weight grads
            model.unet.requires_grad_(False)
            model.unet.conv_in.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)

        def step() -> None:
            loss = model.training_loss(both["image"], both["caption"])
            opt.zero_grad()
            loss.backward()
            opt.step()

        trainable = sum(p.numel() for p in params)
        result = _measure_steps(step, steps, trainable)
        mb = lambda ts: round(sum(t.numel() * t.element_size() for t in ts) / 2**20, 2)  # noqa: E731
        result["optimizer_state_mb"] = mb(t for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
        result["grad_mb"] = mb(p.grad for p in params if p.grad is not None)
        queue.put(result)
        return
    queue.put(_measure_steps(step, steps, trainable))


def bench_freezeasguard(steps: int, batch_size: int) -> dict[str, Any]:
    """Mask learning vs a plain full fine-tuning step (same images: batch_size illegal + batch_size legal),
    and what a rho = 0.5 mask saves when fine-tuning. Each case runs in its own process."""

    def run(kind: str, rho: float = 0.0) -> dict[str, Any]:
        return _in_child(_freeze_child, kind, rho, steps, batch_size)

    cases = {"plain": ("plain", 0.0), "mask": ("mask", 0.0), "by_tensors": ("frozen_tensors", 0.5),
             "by_params": ("frozen_params", 0.5), "floor": ("floor", 0.0)}  # fmt: skip
    best: dict[str, dict[str, Any]] = {}
    for _ in range(2):  # two interleaved rounds, the faster of each: machine load drifts between processes
        for name, (kind, rho) in cases.items():
            r = run(kind, rho)
            if name not in best or r["step_s"] < best[name]["step_s"]:
                best[name] = r
    plain, mask, by_tensors, by_params, floor = best.values()

    def rel(r: dict[str, Any]) -> dict[str, Any]:
        out = {**r, "step_ratio": round(r["step_s"] / plain["step_s"], 3)}
        if "optimizer_state_mb" in r:
            out["optimizer_state_ratio"] = round(r["optimizer_state_mb"] / plain["optimizer_state_mb"], 3)
        return out

    return {
        "images_per_step": 2 * batch_size,
        "plain_finetune": plain,
        "mask_learning": rel(mask),  # trainable = number of mask scores
        "finetune_rho0.5_by_tensors": rel(by_tensors),
        "finetune_rho0.5_by_params": rel(by_params),
        "no_weight_grads_floor": rel(floor),  # forward + every input gradient: what freezing cannot remove
        "note": "mask step = median over a 1 publisher : 4 simulated-user cycle; peak RSS includes torch itself "
        "(the steps stay under the start-up peak on this model); optimizer_state_mb / grad_mb are exact",
    }


def _finetune_child(rank: int, steps: int, batch_size: int, queue) -> None:
    """One fine-tuning step measurement (rank 0: full UNet, else LoRA of that rank) in its own process."""

    from adaptguard.models.lora import LoraSettings, add_lora

    torch.manual_seed(0)
    model = build_model("pixel")
    batch = next(iter(ShapesDataModule(splits={"a": {"size": batch_size}}).dataloader("a", batch_size)))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    images = batch["image"].to(device)
    if rank:
        add_lora(model, LoraSettings(rank=rank, alpha=rank), None)
    else:
        model.requires_grad_(False)
        model.unet.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        loss = model.training_loss(images, batch["caption"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    queue.put(_measure_steps(step, steps, sum(p.numel() for p in params)))


def _in_child(target, *args) -> dict[str, Any]:
    """Run ``target(*args, queue)`` in a fresh spawned process, so its peak memory is its own."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_lora_vs_full(steps: int, batch_size: int) -> dict[str, Any]:
    """A LoRA step (UNet attention, ranks 4 and 16) relative to a full fine-tuning step, same batch."""
    full = _in_child(_finetune_child, 0, steps, batch_size)
    out: dict[str, Any] = {"batch_size": batch_size, "full": full}
    for rank in (4, 16):
        r = _in_child(_finetune_child, rank, steps, batch_size)
        out[f"lora_rank{rank}"] = {
            **r,
            "step_ratio": round(r["step_s"] / full["step_s"], 3),
            "peak_rss_ratio": round(r["peak_rss_mb"] / full["peak_rss_mb"], 3),
            "trainable_ratio": round(r["trainable"] / full["trainable"], 4),
        }
    out["note"] = "peak RSS includes torch itself; on a GPU compare peak_cuda_mb"
    return out


def bench_data_loading(images: int, batch_size: int, steps: int) -> dict[str, Any]:
    """Images/s of the on-disk loader (AFHQ layout, 512 px JPEGs, 2 workers, tiny-model resolution)
    against the images/s a full fine-tuning step of the tiny model consumes (target ratio >= 1)."""
    import numpy as np
    from PIL import Image

    from adaptguard.data import AfhqDataModule

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(images):  # smooth random images compress like photos, unlike white noise
            small = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((512, 512), Image.Resampling.BICUBIC)
            folder = Path(tmp) / "train" / ("cat", "dog", "wild")[i % 3]
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i:05d}.jpg", quality=95)
        data = AfhqDataModule(root=tmp, resolution=32, num_workers=2, splits={"all": {}})
        start = time.perf_counter()
        data.dataset("all")
        check_s = time.perf_counter() - start
        loader = data.dataloader("all", batch_size)
        seen, start = 0, None
        for _ in range(2):  # second epoch: persistent workers, no start-up cost
            for batch in loader:
                if start is None:
                    start = time.perf_counter()  # after the first batch: worker start-up excluded
                    continue
                seen += batch["image"].shape[0]
        load_ips = seen / (time.perf_counter() - start)
    step = _in_child(_finetune_child, 0, steps, batch_size)
    train_ips = batch_size / step["step_s"]
    return {
        "images": images,
        "source_px": 512,
        "workers": 2,
        "first_use_check_s": round(check_s, 2),
        "loader_images_per_s": round(load_ips, 1),
        "train_step_images_per_s": round(train_ips, 1),
        "loader_over_training": round(load_ips / train_ips, 2),
        "meets_target": load_ips >= train_ips,
        "note": "loader measured alone; in a run its 2 workers share the CPU with training",
    }


def bench_default_experiment(args: list[str]) -> dict[str, Any]:
    """A first run: an empty artifact cache (the shipped base model and feature extractor still count)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, WANDB_SILENT="true", ADAPTGUARD_CACHE=f"{tmp}/cache")
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.run", *args, f"hydra.run.dir={tmp}/run", "progress=false"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"default experiment failed:\n{proc.stderr[-3000:]}")
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
    return {
        "command": "python -m experiments.run " + " ".join(args),
        "wall_s": round(wall, 1),
        "target_s": 300,
        "meets_target": wall <= 300,
        "stages": results["stages"],
        "stage_share": {k: round(v["wall_s"] / wall, 3) for k, v in results["stages"].items()},
        "cached": results.get("cached", []),
        "verification_rate": {m: (results[m]["verification"] or {}).get("rate") for m in ("base", "protected")}
        | {f"attacked_{d}": (a["model"]["verification"] or {}).get("rate") for d, a in results["attacks"].items()},
    }


SWEEP_ARGS = [
    "model=micro", "logger=none", "progress=false", "defense.steps=60", "defense.batch_size=8", "attack.steps=20", "attack.batch_size=8", "model.sampler.steps=10",
    "eval.fid.num_samples=32", "eval.fid.kid_subset_size=16", "eval.fid.kid_subsets=10",
]  # fmt: skip
SWEEP_AXES = {"defense": ["backdoor", "aiao"], "attack": ["full", "lora"]}


def _experiment(args: list[str], cache: Path, out: Path, multirun: bool = False) -> float:
    """Wall time of ``experiments.run`` (``-m`` with ``multirun``) on artifact cache ``cache``."""
    env = dict(os.environ, WANDB_SILENT="true", ADAPTGUARD_CACHE=str(cache))
    where = f"hydra.sweep.dir={out}" if multirun else f"hydra.run.dir={out}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "experiments.run", *(["-m"] if multirun else []), *args, where],
                          cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"experiment {args} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def bench_sweep(args: list[str] | None = None) -> dict[str, Any]:
    """A 2 x 2 micro sweep (two defenses x two attacks) on one empty cache, against its four jobs run one by
    one, each on its own empty cache with ``eval.cache=false`` (every job pays for everything), and against
    the sweep with ``eval.cache=false`` (protections shared, evaluations not: sweeps before issue 17)."""
    import itertools

    args = SWEEP_ARGS if args is None else args
    axes = [f"{k}={','.join(v)}" for k, v in SWEEP_AXES.items()]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        sweep = _experiment([*args, *axes], t / "cache_sweep", t / "sweep", multirun=True)
        jobs = sorted((t / "sweep").glob("*/results.json"))
        cached = {str(j.parent.name): json.loads(j.read_text()).get("cached", []) for j in jobs}
        sweep_uncached = _experiment([*args, *axes, "eval.cache=false"], t / "cache_plain", t / "plain", True)
        separate = {}
        for i, combo in enumerate(itertools.product(*SWEEP_AXES.values())):
            overrides = [f"{k}={v}" for k, v in zip(SWEEP_AXES, combo, strict=True)]
            separate[" ".join(overrides)] = round(
                _experiment([*args, *overrides, "eval.cache=false"], t / f"cache_{i}", t / f"job_{i}"), 1
            )
    total = sum(separate.values())
    return {
        "command": "python -m experiments.run -m " + " ".join([*args, *axes]),
        "sweep_wall_s": round(sweep, 1),
        "sweep_without_eval_cache_wall_s": round(sweep_uncached, 1),
        "separate_jobs_wall_s": separate,
        "separate_total_s": round(total, 1),
        "sweep_over_separate": round(sweep / total, 3),
        "sweep_over_sweep_without_eval_cache": round(sweep / sweep_uncached, 3),
        "cached_per_job": cached,
        "note": "each run is a fresh process (imports included); empty caches still use the shipped base models",
    }


def bench_sampler_steps(curves: dict[str, list[int]], batch_sizes: list[int], name: str = "tiny") -> dict[str, Any]:
    """FID/KID of the shipped base model vs sampler steps per sampler (the eval split, 128 samples, CFG as
    configured), and sampling throughput vs batch size: where the default sampler settings come from."""
    from adaptguard.core.artifacts import ArtifactCache
    from adaptguard.core.context import RunContext

    cfg = compose([f"model={name}"])
    source, data, ev = instantiate(cfg.model), instantiate(cfg.dataset), instantiate(cfg.eval)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(cache=ArtifactCache(tmp), progress=False, device="cpu")
        model = source.load(ctx)
        out: dict[str, list[dict[str, Any]]] = {}
        for sampler, steps in curves.items():
            model.sampler.name = sampler
            for n in steps:
                model.sampler.steps = n
                start = time.perf_counter()
                report, _ = ev.fid.evaluate(model, data, "eval", ctx, offset=100)
                out.setdefault(sampler, []).append({"steps": n, "fid": round(report.fid, 2),
                    "kid_mean": round(report.kid_mean, 4), "wall_s": round(time.perf_counter() - start, 1)})  # fmt: skip
        model.sampler.name = cfg.model.sampler.name
        prompts = data.captions("eval", 64, seed=0)
        throughput = {}
        for b in batch_sizes:
            start = time.perf_counter()
            model.sample(prompts, steps=10, batch_size=b, generator=torch.Generator().manual_seed(0))
            throughput[str(b)] = round(len(prompts) / (time.perf_counter() - start), 2)
    return {"model": name, "samples": ev.fid.num_samples, "guidance_scale": cfg.model.sampler.guidance_scale,
            "fid_vs_steps": out, "images_per_s_by_batch_size": throughput}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results.json")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--skip-experiment", action="store_true")
    parser.add_argument("--only", nargs="*", help="run only these entries")
    opts = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(f"{name}.utilities.rank_zero").setLevel(logging.WARNING)

    entries = {
        "train_step": lambda: bench_train_step(opts.steps, 3, opts.batch_size, opts.repeats),
        "sampling": lambda: bench_sampling(opts.samples),
        "latent_train_step": lambda: bench_train_step(opts.steps, 3, opts.batch_size, opts.repeats, "tiny"),
        "latent_sampling": lambda: bench_sampling(opts.samples, "tiny"),
        "aiao": lambda: bench_aiao(opts.steps, opts.batch_size),
        "sleepermark": lambda: bench_sleepermark(opts.steps, 16, 64),
        "freezeasguard": lambda: bench_freezeasguard(opts.steps, 16),
        "lora_vs_full": lambda: bench_lora_vs_full(opts.steps, opts.batch_size),
        "data_loading": lambda: bench_data_loading(512, opts.batch_size, opts.steps),
        "default_experiment": lambda: bench_default_experiment(["experiment=quickstart", "logger=none"]),
        "sweep": bench_sweep,
        "sampler_steps": lambda: bench_sampler_steps(
            {"ddim": [5, 10, 20, 40, 80], "dpm": [5, 10, 20, 40]}, [16, 32, 64, 128]
        ),
    }
    if opts.skip_experiment:
        for name in ("default_experiment", "sweep"):
            entries.pop(name)
    if opts.only:
        entries = {k: v for k, v in entries.items() if k in opts.only}
    out = Path(opts.out)
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    report["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name, fn in entries.items():
        print(f"bench: {name} ...", flush=True)
        report[name] = fn()
        print(json.dumps(report[name], indent=2), flush=True)
    report["written"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
