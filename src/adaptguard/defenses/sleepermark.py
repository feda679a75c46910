"""SleeperMark: a trigger-conditioned latent watermark that survives fine-tuning.

Our implementation of Wang et al., arXiv 2412.04852 (spec: the project's method note;
docs/defenses/sleepermark.md lists what is ours). Stage 1 (``message_codec``) learns a message
encoder/decoder in the model's latent space. Stage 2 self-distils the model: with the
trigger prepended to a prompt, the one-step x0 estimate at small t must carry the fixed
residual ``delta* = E(m*)``; at large t and without the trigger the frozen original is
the target, so the watermark is tied to the trigger rather than to the concepts that
downstream fine-tuning changes. Verification is black-box: images from triggered
prompts, decoded bits, a per-image binomial test at a target FPR.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from adaptguard.analysis.locations import sleepermark_pattern
from adaptguard.core.config import from_mapping, setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected, SecretKey
from adaptguard.core.verification import Verification
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import MessageWatermark, trigger_rows
from adaptguard.defenses.message_codec import Codec, CodecConfig, codec_report, train_codec
from adaptguard.metrics.stats import clopper_pearson
from adaptguard.models import objective
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import OptimConfig, TrainSettings, drop_captions, finetune

log = logging.getLogger(__name__)


@dataclass(repr=False)
class SleeperMarkKey(SecretKey):
    trigger: str  # secret
    message: torch.Tensor  # (bits,) uint8, secret
    prompts: list[str]  # verification prompts (not secret; the trigger is prepended)
    codec: dict[str, Any]  # encoder/decoder weights (the decoder is the owner's reader)


def time_weights(t: torch.Tensor, eta: float, tau: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w1(t) = eta * sigmoid(-(t - tau) / beta) (watermark), w2(t) = sigmoid((t - tau) / beta) (fidelity)."""
    z = (t.float() - tau) / beta
    return eta * torch.sigmoid(-z), torch.sigmoid(z)


def watermark_target(teacher_out: torch.Tensor, delta: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The teacher's triggered output, shifted so its one-step x0 estimate gains ``delta`` (gain: objective.x0_gain)."""
    return teacher_out - gain.float().view(-1, *[1] * (teacher_out.ndim - 1)) * delta


@dataclass
class SleeperMarkDefense(MessageWatermark):
    codec: CodecConfig | dict[str, Any] = setting(
        default_factory=CodecConfig, doc="stage 1: the message encoder / decoder, cached and message-independent"
    )
    # key
    trigger: str = setting(
        "*[Z]& ",
        nonempty=True,
        secret=True,
        doc="prepended to any prompt; the default is the paper's, public: set your own",
    )
    # stage 2: L = w1 |e - e_wm|^2 + w2 |e - e_tr|^2 + |e(c) - e_n|^2, targets from the frozen original
    steps: int = setting(400, ge=1, doc="stage-2 optimizer steps (reference: 20k)")
    batch_size: int = setting(16, ge=1, doc="stage-2 batch (reference: 10)")
    paired: bool = setting(
        False,
        doc="false: half of each batch triggered (watermark + fidelity terms), half plain (keep term), one teacher "
        "forward and one student step; true: every image both ways on the same noisy latent (2x the rows, the "
        "method note's form)",
    )
    lr: float = setting(3e-4, gt=0, doc="stage-2 learning rate (AdamW)")
    weight_decay: float = setting(1e-2, ge=0, doc="stage-2 weight decay")
    lr_scheduler: str = setting("cosine", doc="stage-2 schedule: any `diffusers.optimization` schedule")
    max_grad_norm: float | None = setting(
        1.0, gt=0, doc="gradient clipping (null: none; the reference's 1e-5 looks accidental)"
    )
    trainable: Literal["up_attention", "up_blocks", "decoder", "unet"] = setting(
        "up_attention",
        doc="the UNet weights stage 2 trains (up_attention: the up-blocks' attention, the reference; decoder: the "
        "up-blocks and conv_out); norms stay frozen except with unet",
    )
    eta: float | None = setting(
        None, gt=0, doc="scale of the watermark weight w1; null: the reference's 0.05 (pixel) / 0.02 (latent)"
    )
    tau: float = setting(
        250.0, doc="where w1 and w2 cross: a DDPM timestep, or a flow schedule position (t = 500 at shift 3)"
    )
    beta: float = setting(100.0, gt=0, doc="width of that crossover, in timesteps")
    empty_prompt_p: float = setting(
        0.2, ge=0, le=1, doc="the untriggered term uses the empty prompt this often (CFG's unconditional branch)"
    )
    small_t_fraction: float = setting(
        0.0, ge=0, le=1, doc="share of each batch with t from q(t) ~ w1(t) a_t / (1 - a_t) (0: uniform, the reference)"
    )
    split: str = setting("owner", doc="the owner's images stage 2 trains on")
    # verification (black-box)
    num_samples: int = setting(64, ge=1, doc="verification prompts: the trigger + this many captions")
    prompt_split: str = setting("eval", doc="the split whose captions the trigger is prepended to")

    name: str = setting("sleepermark", doc="label in results and logs")
    key_type: ClassVar[type[SecretKey]] = SleeperMarkKey
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "lr", "codec.steps", "num_samples")
    version: ClassVar[int] = 2  # 2: the key-randomization decision (1: binomial over independent images)

    def __post_init__(self) -> None:
        self.codec = from_mapping(CodecConfig, self.codec)
        super().__post_init__()

    @property
    def bits(self) -> int:
        return self.codec.bits

    def random_key(self, like: SecretKey, seed: int) -> SleeperMarkKey:
        """Another owner's message with this trigger, prompts and codec (the message is what the key keeps secret
        from someone who knows the method; the codec is trained once per latent space and owner data)."""
        assert isinstance(like, SleeperMarkKey)
        return SleeperMarkKey(like.trigger, self.make_message(seed), list(like.prompts), like.codec)

    def sampling_identity(self, key: SecretKey) -> Any:
        assert isinstance(key, SleeperMarkKey)
        return (key.trigger, tuple(key.prompts))

    def trainable_parameters(self, model: DiffusionModel) -> list[torch.nn.Parameter]:
        pattern = re.compile(sleepermark_pattern(self.trainable, model.unet))
        params = [p for n, p in model.unet.named_parameters() if pattern.search(n)]
        if not params:
            raise ConfigError(f"defense.trainable={self.trainable}: selects no denoiser weights in this model")
        return params

    # ------------------------------------------------------------------ protect
    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        codec = train_codec(self.codec, model, data, ctx)
        prompts = data.captions(self.prompt_split, self.num_samples, seed=ctx.seed + 3)
        key = SleeperMarkKey(self.trigger, self.make_message(ctx.key_seed(self.key_seed)), prompts, codec.state())
        with torch.no_grad():
            delta = codec.encoder.to(model.device)(key.message[None].to(model.device))

        eta = self.eta if self.eta is not None else (0.02 if model.is_latent else 0.05)
        objective = TriggerDistillation(
            model.unet, delta, self.trigger, eta, self.tau, self.beta, self.small_t_fraction, self.empty_prompt_p,
            ctx.seed, self.paired,
        )  # fmt: skip
        loader = data.dataloader(self.split, self.batch_size)
        optim = OptimConfig(lr=self.lr, weight_decay=self.weight_decay, lr_scheduler=self.lr_scheduler)
        settings = TrainSettings(
            self.steps, optim, max_grad_norm=self.max_grad_norm, log_prefix="protect", lr_key="defense.lr"
        )
        tuned = finetune(model, loader, settings, ctx, objective=objective, trainable=self.trainable_parameters)
        info = {**codec_report(codec, delta), "steps": self.steps, "eta": eta, "final_losses": tuned.losses,
                "trainable_params": tuned.cost["trainable_params"], "detection_threshold": self.detection_threshold()}  # fmt: skip
        return Protected(tuned.model, key, info)

    # ------------------------------------------------------------------ verify
    def verification_images(
        self, model: DiffusionModel, key: SecretKey | None, ctx: RunContext
    ) -> dict[str, torch.Tensor]:
        """The same prompts and starting noise with and without the trigger."""
        assert isinstance(key, SleeperMarkKey)
        return {
            "triggered": self.sample(model, [key.trigger + p for p in key.prompts], ctx, offset=11),
            "untriggered": self.sample(model, list(key.prompts), ctx, offset=11),
        }

    def read_bits(self, images: dict[str, torch.Tensor], key: SecretKey, model: DiffusionModel) -> torch.Tensor:
        assert isinstance(key, SleeperMarkKey)
        return Codec.from_state(key.codec).read_bits(model, images["triggered"])

    def verify_images(
        self, images: dict[str, torch.Tensor], key: SecretKey | None, model: DiffusionModel
    ) -> Verification:
        assert isinstance(key, SleeperMarkKey)
        codec = Codec.from_state(key.codec)
        message = key.message.to(torch.uint8)
        bits = codec.read_bits(model, images["triggered"])  # read_bits's reading, with the codec built once
        figures: dict[str, float] = {}
        details: dict[str, Any] = {}
        if "untriggered" in images:
            plain = (codec.read_bits(model, images["untriggered"]) == message).sum(1)
            hits = int((plain >= self.detection_threshold()).sum())
            figures.update(
                untriggered_bit_accuracy=float(plain.float().mean() / self.bits), untriggered_rate=hits / len(plain)
            )
            details["untriggered_ci"] = list(clopper_pearson(hits, len(plain)))
        return self.decide(bits, message, 4242, figures=figures, details=details)


class TriggerDistillation:
    """The stage-2 loss on one batch of the owner's data; every target comes from the frozen teacher."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        delta: torch.Tensor,
        trigger: str,
        eta: float,
        tau: float,
        beta: float,
        small_t_fraction: float = 0.0,
        empty_prompt_p: float = 0.0,
        seed: int = 0,
        paired: bool = False,
    ) -> None:
        self.teacher = teacher.requires_grad_(False)
        self.delta = delta
        self.trigger = trigger
        self.eta, self.tau, self.beta = eta, tau, beta
        self.small_t_fraction = small_t_fraction
        self.empty_prompt_p = empty_prompt_p
        self._q: torch.Tensor | None = None  # small-t distribution, built on first use from the scheduler
        self.generator = torch.Generator().manual_seed(seed + 29)
        self.paired = paired  # see defenses.base.trigger_rows

    def timesteps(self, n: int, scheduler: Any) -> torch.Tensor:
        """Schedule positions (objective.timesteps_at; t itself on a DDPM schedule): uniform, except a
        ``small_t_fraction`` share drawn from q(t) ~ w1(t) k(t)^2 (k: objective.x0_gain).

        q is where the watermark term's target differs most from the teacher's: under uniform
        t a batch rarely contains such a t, so the term learns slowly at small budgets. Not
        reweighted: this strengthens the watermark term relative to the reference loss.
        """
        if self._q is None:
            p_all = torch.arange(scheduler.config.num_train_timesteps)
            gain = objective.x0_gain(scheduler, objective.timesteps_at(scheduler, p_all)).double()
            q = time_weights(p_all, self.eta, self.tau, self.beta)[0].double() * gain.pow(2)
            self._q = q / q.sum()
        t = torch.randint(0, len(self._q), (n,), generator=self.generator)
        small = torch.rand(n, generator=self.generator) < self.small_t_fraction
        return torch.where(small, torch.multinomial(self._q, n, replacement=True, generator=self.generator), t)

    def __call__(self, model: DiffusionModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = batch["image"].to(model.device)
        prompts = list(batch["caption"])
        plain_prompts = drop_captions(prompts, self.empty_prompt_p, self.generator)
        sched = model.noise_scheduler
        latents = model.encode_images(images)
        positions = self.timesteps(latents.shape[0], sched).to(latents.device)  # w1 / w2 are over positions
        t = objective.timesteps_at(sched, positions)
        noisy = objective.add_noise(sched, latents, torch.randn_like(latents), t)
        paired, plain = trigger_rows(len(prompts), self.paired)  # rows [0, plain) plain, the rest triggered
        if paired:
            noisy, t, rows = torch.cat([noisy, noisy]), torch.cat([t, t]), plain_prompts + prompts
            positions = torch.cat([positions, positions])
        else:
            rows = plain_prompts[:plain] + prompts[plain:]
        rows = rows[:plain] + [self.trigger + p for p in rows[plain:]]
        with torch.no_grad():  # one teacher forward on the student's rows: every target at once
            emb = model.encode_prompts(rows)
            self.teacher.to(model.device)
            teacher = model.predict_with(self.teacher, noisy, t, emb).float()
        student = model.predict(noisy, t, emb).float()
        e_n, e_tr = teacher[:plain], teacher[plain:]
        s_n, s_tr, t_tr = student[:plain], student[plain:], t[plain:]
        e_wm = watermark_target(e_tr, self.delta.to(model.device).float(), objective.x0_gain(sched, t_tr))
        w1, w2 = time_weights(positions[plain:], self.eta, self.tau, self.beta)
        wm = (w1 * _per_sample_mse(s_tr, e_wm)).mean()
        fid = (w2 * _per_sample_mse(s_tr, e_tr)).mean()
        keep = _per_sample_mse(s_n, e_n).mean()
        loss = wm + fid + keep
        return {"loss": loss, "wm": wm.detach(), "fidelity": fid.detach(), "keep": keep.detach()}


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1)
