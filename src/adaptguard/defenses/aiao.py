"""AIAO: feature-space watermarks on Monte-Carlo-sampled subpaths through lazy blocks.

Our reading of Liu et al., "Lazy Layers to Make Fine-Tuned Diffusion Models More
Traceable" (arXiv 2405.00466; no public code; spec in docs/defenses/aiao.md). A short probe
fine-tune on the owner's data ranks the UNet's blocks by relative weight change; the
least active ("lazy") ones carry the watermark. The secret key seeds, per block, a
mask-controlled trigger T(h) = (1 - M) * h + M * tau and a response (entries R and
signs r). Embedding teaches: trigger at block i => sign(h_j[R_j]) = r_j at a later
lazy block j, for subpaths (i, j) sampled afresh every step, while the untriggered
model stays close to the original. Verification samples K subpaths with arbitrary
inputs; each trial is a one-sided binomial test on matching signs, and the model-level
decision compares the passing trials with random response signs on the same features
(the shared key-randomization test: the "rate threshold calibrated on never-watermarked
models" of the method note, calibrated on the suspect itself, valid for any suspect),
paired: each input is read with and without the trigger, and only what the trigger adds counts.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adaptguard.analysis.activity import ActivityReport, layer_activity
from adaptguard.analysis.blocks import Block, block_parameters, unet_blocks
from adaptguard.core.config import setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense, trigger_rows
from adaptguard.defenses.subpath_hooks import BlockSecret, SubpathHooks
from adaptguard.metrics.stats import binomial_threshold, bit_match_verification, random_key_matches
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import OptimConfig, TrainSettings, finetune

log = logging.getLogger(__name__)
_SEED_MOD = 2**62


@dataclass(repr=False)
class AIAOKey(SecretKey):
    """All the owner keeps. Only ``seed`` is secret; the rest says where and how to look."""

    seed: int  # secret: masks, patterns, response entries and signs derive from it
    candidates: list[int]  # blocks subpaths are drawn from (forward-order indices)
    fixed_pair: list[int]  # [] for Monte-Carlo subpaths; [i, j] for one fixed subpath
    scales: list[float]  # per-block feature std of the original model (pattern and margin unit)


def block_secret(
    seed: int, block: Block, mask_ratio: float, response_bits: int, pattern_scale: float, scale: float
) -> BlockSecret:
    """Deterministic per (seed, block): the same key always gives the same masks and signs."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + 7919 * (block.index + 1)) % _SEED_MOD)
    n = block.numel
    n_mask = max(1, round(mask_ratio * n))
    mask = torch.zeros(n)
    mask[torch.randperm(n, generator=g)[:n_mask]] = 1.0
    signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    pattern = pattern_scale * scale * signs
    k = min(response_bits, n)
    response_index = torch.randperm(n, generator=g)[:k]
    response_sign = torch.randint(0, 2, (k,), generator=g).float() * 2 - 1
    return BlockSecret(mask.view(block.shape), pattern.view(block.shape), response_index, response_sign)


def all_pairs(candidates: list[int]) -> list[tuple[int, int]]:
    return [(i, j) for a, i in enumerate(candidates) for j in candidates[a + 1 :]]


@dataclass
class AIAODefense(Defense):
    # which blocks (probe fine-tune on the owner's data -> busy / lazy)
    layers: Literal["lazy", "busy"] = setting("lazy", doc="the blocks subpaths are drawn from (busy: the ablation)")
    busy_fraction: float = setting(0.2, gt=0, lt=1, doc="top share of blocks by activity called busy")
    probe_steps: int = setting(100, ge=1, doc="steps of the probe fine-tune on the owner's data that ranks blocks")
    probe_lr: float = setting(1e-4, gt=0, doc="learning rate of the probe fine-tune")
    monte_carlo: bool = setting(True, doc="false: one fixed subpath drawn from the key (the ablation)")
    trainable: Literal["candidates", "unet"] = setting(
        "candidates", doc="the weights the embedding may change (candidates: only the chosen blocks')"
    )
    # key material
    mask_ratio: float = setting(
        0.05, gt=0, le=1, doc="share of a block's (channel × position) entries the trigger overwrites"
    )
    pattern_scale: float = setting(3.0, gt=0, doc="trigger values, in units of the block's feature std")
    response_bits: int = setting(64, ge=1, doc="response signs read at block j")
    key_seed: int | None = setting(
        None,
        secret=True,
        doc="null: drawn from `seed`, so a command gives the same key on any cache (`adaptguard protect`: a fresh "
        "secret key); an int fixes it",
    )
    # embedding
    steps: int = setting(400, ge=1, doc="embedding optimizer steps")
    batch_size: int = setting(32, ge=1, doc="embedding batch")
    lr: float = setting(1e-3, gt=0, doc="embedding learning rate (AdamW)")
    weight_decay: float = setting(
        0.0, ge=0, doc="embedding weight decay (AdamW); decay would move every trainable weight, watermark or not"
    )
    paired: bool = setting(
        False,
        doc="true: each image untriggered and triggered in every step (2x the student's rows) instead of a split batch",
    )
    subpaths_per_step: int = setting(8, ge=1, doc="S, the Monte-Carlo subpaths drawn per embedding step")
    lambda_keep: float = setting(
        1.0, ge=0, doc="weight of L_keep, the distillation towards the original model on the untriggered rows"
    )
    lambda_wm: float = setting(0.5, ge=0, doc="weight of the watermark hinge loss L_wm")
    lambda_null: float = setting(
        2.0, ge=0, doc="weight of L_null, which keeps the untriggered response uncorrelated with the key's signs"
    )
    margin: float = setting(1.0, ge=0, doc="hinge margin on r_j * h_j / std_j, in feature stds")
    empty_prompt_p: float = setting(0.5, ge=0, le=1, doc="arbitrary inputs during embedding: share of empty prompts")
    pure_noise_p: float = setting(0.5, ge=0, le=1, doc="arbitrary inputs during embedding: share of pure-noise latents")
    split: str = setting("owner", doc="the owner's data for the probe, feature scales and embedding")
    # verification (white-box)
    num_subpaths: int = setting(64, ge=1, doc="K verification trials")
    alpha: float = setting(1e-3, gt=0, lt=1, doc="per-trial one-sided binomial test on matching signs")
    model_fpr: float = setting(
        1e-3, gt=0, lt=1, doc="model-level false-positive target of the detected / not-detected decision"
    )
    null_keys: int = setting(
        16, ge=1, doc="random sign vectors every trial is also scored against (the null for TPR @ FPR)"
    )
    paired_decision: bool = setting(
        True,
        doc="a trial counts only when its untriggered read of the same input fails (the evidence is triggered "
        "minus untriggered matches), so a trigger-independent lean towards the key after fine-tuning is not "
        "counted; false: triggered reads alone (before issue 29)",
    )
    verify_batch_size: int = setting(64, ge=1, doc="trials per batched UNet forward")
    verify_prompt: str = setting("", doc="the prompt verification inputs use")

    name: str = setting("aiao", doc="label in results and logs")
    key_type: ClassVar[type[SecretKey]] = AIAOKey
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "lr", "probe_steps", "num_subpaths")
    verification: ClassVar[Literal["none", "weights", "images"]] = "weights"
    version: ClassVar[int] = 2  # 2: key-randomization decision, no calibrated rate threshold in the key

    # ------------------------------------------------------------------ key
    def secrets_for(self, key: AIAOKey, blocks: list[Block]) -> dict[int, BlockSecret]:
        return {
            b: block_secret(key.seed, blocks[b], self.mask_ratio, self.response_bits, self.pattern_scale, key.scales[b])
            for b in key.candidates
        }

    def choose_candidates(self, activity: ActivityReport) -> list[int]:
        chosen = activity.lazy if self.layers == "lazy" else activity.busy
        if len(chosen) < 2:
            raise ConfigError(
                f"defense.layers={self.layers}: only {len(chosen)} such block(s) with busy_fraction="
                f"{self.busy_fraction}; a subpath needs two. Change defense.busy_fraction."
            )
        return chosen

    def make_key(self, candidates: list[int], scales: list[float], seed: int | None = None) -> AIAOKey:
        seed = seed if seed is not None else self.key_seed
        seed = int(seed if seed is not None else secrets.randbits(62))
        fixed: list[int] = []
        if not self.monte_carlo:
            pairs = all_pairs(candidates)
            g = torch.Generator().manual_seed((seed * 31 + 1) % _SEED_MOD)
            fixed = list(pairs[int(torch.randint(len(pairs), (1,), generator=g))])
        return AIAOKey(seed=seed, candidates=list(candidates), fixed_pair=fixed, scales=list(scales))

    def random_key(self, like: SecretKey, seed: int) -> AIAOKey:
        """Another owner's key on the same blocks: fresh masks, patterns, response entries and signs."""
        assert isinstance(like, AIAOKey)
        return self.make_key(like.candidates, like.scales, seed=seed)

    def sample_pairs(self, key: AIAOKey, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 2) subpaths: uniform over pairs i < j of candidate blocks, or the fixed one."""
        if key.fixed_pair:
            return torch.tensor([key.fixed_pair] * n)
        pairs = torch.tensor(all_pairs(key.candidates))
        return pairs[torch.randint(len(pairs), (n,), generator=generator)]

    # ------------------------------------------------------------------ protect
    def probe_activity(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> ActivityReport:
        """A short full fine-tune on the owner's (non-trigger) data; which blocks move?"""
        settings = TrainSettings(
            self.probe_steps, OptimConfig(lr=self.probe_lr), log_prefix="probe", lr_key="defense.probe_lr"
        )
        tuned = finetune(model, data.dataloader(self.split, self.batch_size), settings, ctx)
        blocks = unet_blocks(model.unet, model.latent_shape)
        return layer_activity(model.unet, tuned.model.unet, blocks, self.busy_fraction)

    @torch.no_grad()
    def feature_scales(self, model: DiffusionModel, blocks: list[Block], data: CaptionedImageDataModule) -> list[float]:
        batch = next(iter(data.dataloader(self.split, self.batch_size)))
        hooks = SubpathHooks(model.unet, blocks, {}, read=range(len(blocks)))
        with hooks:
            noisy, t, emb, _ = model.noisy_inputs(batch["image"].to(model.device), batch["caption"])
            model.predict(noisy, t, emb)
            return [float(hooks.features[b.index].float().std()) + 1e-6 for b in blocks]

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        activity = self.probe_activity(model, data, ctx)
        blocks = activity.blocks
        candidates = self.choose_candidates(activity)
        key = self.make_key(candidates, self.feature_scales(model, blocks, data), seed=ctx.key_seed(self.key_seed))
        teacher = model.unet.requires_grad_(False)  # the frozen original: the untriggered target
        objective = _EmbeddingObjective(self, key, blocks, teacher, seed=ctx.seed)
        loader = data.dataloader(self.split, self.batch_size)
        settings = TrainSettings(
            self.steps,
            OptimConfig(lr=self.lr, weight_decay=self.weight_decay),
            log_prefix="protect",
            lr_key="defense.lr",
        )
        try:
            tuned = finetune(
                model, loader, settings, ctx, objective=objective,
                trainable=lambda m: _trainable_params(m, blocks, candidates, self.trainable),
            )  # fmt: skip
        finally:
            objective.close()
        info = {
            "steps": self.steps,
            "final_losses": tuned.losses,
            "blocks": [b.name for b in blocks],
            "activity": activity.activity,
            "busy": activity.busy,
            "candidates": candidates,
            "trainable_params": tuned.cost["trainable_params"],
        }
        return Protected(tuned.model, key, info)

    # ------------------------------------------------------------------ verify
    @torch.no_grad()
    def _trials(
        self, model: DiffusionModel, key: AIAOKey, blocks: list[Block], ctx: RunContext, untriggered: bool = False
    ) -> tuple[Verification, torch.Tensor]:
        sec = self.secrets_for(key, blocks)
        g = ctx.generator(offset=11)
        pairs = self.sample_pairs(key, self.num_subpaths, g)
        n_steps = model.noise_scheduler.config.num_train_timesteps
        latents = torch.randn(self.num_subpaths, *model.latent_shape, generator=g)
        timesteps = torch.randint(0, n_steps, (self.num_subpaths,), generator=g)
        emb_one = model.encode_prompts([self.verify_prompt])
        values, plain = [], []
        batches = range(0, self.num_subpaths, self.verify_batch_size)
        with SubpathHooks(model.unet, blocks, sec, read=key.candidates) as hooks:
            for start in tqdm(batches, desc="verifying", disable=not ctx.progress, leave=False):
                sl = slice(start, start + self.verify_batch_size)
                n = pairs[sl].shape[0]
                args = (latents[sl].to(model.device), timesteps[sl].to(model.device), emb_one.expand(n, -1, -1))
                if untriggered:  # the same inputs without the trigger: the response must not appear
                    hooks.trigger_at = None
                    model.predict(*args)
                    plain.append(hooks.responses(pairs[sl, 1]).float().cpu())
                hooks.trigger_at = pairs[sl, 0]
                model.predict(*args)
                values.append(hooks.responses(pairs[sl, 1]).float().cpu())
        # bits: is the response positive; the key's bits: is each response block's secret sign positive
        read = (torch.cat(values) > 0).to(torch.uint8)
        key_bits = torch.stack([(sec[j].response_sign > 0).to(torch.uint8) for j in key.candidates])
        groups = torch.tensor([key.candidates.index(j) for j in pairs[:, 1].tolist()], dtype=torch.long)
        n_bits = key_bits.shape[1]
        figures = {}
        if untriggered:
            plain_agree = ((torch.cat(plain) > 0).to(torch.uint8) == key_bits[groups]).sum(1)
            figures = {
                "untriggered_rate": float((plain_agree >= binomial_threshold(n_bits, self.alpha)).float().mean()),
                "untriggered_bit_accuracy": float(plain_agree.float().mean() / n_bits),
            }
        # random sign vectors are independent of the model: exact Binomial(n_bits, 1/2) null scores (TPR@FPR)
        null = random_key_matches(read, self.null_keys, seed=4242)
        baseline = (torch.cat(plain) > 0).to(torch.uint8) if untriggered and self.paired_decision else None
        ver = bit_match_verification(
            read, key_bits, self.alpha, self.model_fpr, groups, null.tolist(), figures, baseline=baseline
        )
        return ver, pairs

    def verify(self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext) -> Verification:
        assert isinstance(key, AIAOKey)
        blocks = unet_blocks(model.unet, model.latent_shape)
        ver, pairs = self._trials(model, key, blocks, ctx, untriggered=True)
        ver.details.update(distinct_subpaths=len({tuple(p) for p in pairs.tolist()}))
        return ver


def _trainable_params(model: DiffusionModel, blocks: list[Block], candidates: list[int], trainable: str):
    if trainable == "unet":
        return list(model.unet.parameters())
    return [p for b in candidates for p in block_parameters(model.unet, blocks[b]).values()]


class _EmbeddingObjective:
    """L = lambda_keep * L_keep + lambda_wm * L_wm + lambda_null * L_null on one batch of the owner's data.

    The untriggered and triggered rows are one forward (per-sample triggers): by default the batch is
    split into an untriggered and a triggered half, so a step costs one plain fine-tuning step plus the
    teacher's forward (``paired``: every image in both, twice the student's work). The hooks
    stay on the UNet until training ends: with gradient checkpointing the backward pass
    re-runs each block's forward, hooks included, and must find them as the forward did.
    """

    def __init__(self, cfg: AIAODefense, key: AIAOKey, blocks: list[Block], teacher: torch.nn.Module, seed: int):
        self.cfg = cfg
        self.key = key
        self.blocks = blocks
        self.teacher = teacher
        self.secrets = cfg.secrets_for(key, blocks)
        self.scales = torch.tensor(key.scales)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.hooks: SubpathHooks | None = None

    def _hooks_on(self, unet: torch.nn.Module) -> SubpathHooks:
        if self.hooks is None or self.hooks.unet is not unet:
            self.close()
            self.hooks = SubpathHooks(unet, self.blocks, self.secrets, read=self.key.candidates).__enter__()
        return self.hooks

    def close(self) -> None:
        if self.hooks is not None:
            self.hooks.__exit__(None, None, None)
            self.hooks = None

    def __call__(self, model: DiffusionModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, g = self.cfg, self.generator
        images = batch["image"].to(model.device)
        bsz = images.shape[0]
        drop = torch.rand(bsz, generator=g) < cfg.empty_prompt_p
        prompts = ["" if d else c for d, c in zip(drop.tolist(), batch["caption"], strict=True)]
        noisy, t, emb, _ = model.noisy_inputs(images, prompts)
        # arbitrary inputs: some latents are pure noise (verification feeds pure noise)
        pure = (torch.rand(bsz, generator=g) < cfg.pure_noise_p).to(model.device).view(-1, 1, 1, 1)
        noisy = torch.where(pure, torch.randn_like(noisy), noisy)
        if self.teacher.device != model.device:
            self.teacher.to(model.device)
        paired, plain = trigger_rows(bsz, cfg.paired)  # rows [0, plain) untriggered, the rest triggered
        if paired:
            noisy, t, emb = torch.cat([noisy, noisy]), torch.cat([t, t]), torch.cat([emb, emb])
        rows = noisy.shape[0]
        with torch.no_grad():  # the student's batch shape: identical weights give identical untriggered rows
            teacher_eps = model.predict_with(self.teacher, noisy, t, emb)[:plain]
        pairs = self.cfg.sample_pairs(self.key, cfg.subpaths_per_step, g)
        pairs = pairs[torch.arange(rows) % pairs.shape[0]]  # each row takes one of the S subpaths
        if paired:  # a sample and its triggered copy share one subpath
            pairs[plain:] = pairs[:plain]
        scale = self.scales.to(model.device)[pairs[:, 1].to(model.device)].unsqueeze(1)
        hooks = self._hooks_on(model.unet)
        hooks.trigger_at = torch.cat([torch.full((plain,), -1), pairs[plain:, 0]])
        eps = model.predict(noisy, t, emb)[:plain]
        keep = F.mse_loss(eps.float(), teacher_eps.float())
        resp = hooks.responses(pairs[:, 1]).float() / scale
        signs = hooks.signs(pairs[:, 1], resp)
        null = (signs[:plain] * torch.tanh(resp[:plain])).mean(1).pow(2).mean()
        wm = F.relu(cfg.margin - signs[plain:] * resp[plain:]).mean()
        with torch.no_grad():
            bit_acc = (torch.sign(resp[plain:]) == signs[plain:]).float().mean()
        loss = cfg.lambda_keep * keep + cfg.lambda_wm * wm + cfg.lambda_null * null
        return {"loss": loss, "keep": keep.detach(), "wm": wm.detach(), "null": null.detach(), "bit_acc": bit_acc}
