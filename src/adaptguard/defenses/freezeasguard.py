"""FreezeAsGuard: learn which UNet tensors to freeze so illegal adaptation stays poor.

Our implementation of Huang & Gao, arXiv 2405.17472 (spec: the method note, summarised
in docs/defenses/freezeasguard.md). The publisher releases the model unchanged plus a per-tensor
mask that every fine-tuning must keep frozen. The mask comes from the reference's
single-loop, first-order version of the bilevel problem: a simulated user's weights
``theta_ft`` (cached full fine-tune on illegal + legal data) keep adapting under the soft
mask, while the publisher moves the mask scores ``x`` to make the effective model
``m * theta_pre + (1 - m) * theta_ft`` bad on illegal and good on legal data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import ConcatDataset

from adaptguard.core.artifacts import weights_sha256
from adaptguard.core.config import setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected
from adaptguard.data.base import CaptionedImageDataModule, train_loader
from adaptguard.defenses.freezing import (
    FreezingDefense,
    RatioBy,
    candidate_sizes,
    freeze_ratios,
    hard_mask,
    logit,
    project_to_ratio,
    sigmoid_mask,
)
from adaptguard.models.bundle import DiffusionModel
from adaptguard.training import OptimConfig, TrainSettings, final_terms, finetune, fit

log = logging.getLogger(__name__)


def mask_gradient(
    grads: Sequence[torch.Tensor],
    theta_pre: Sequence[torch.Tensor],
    theta_ft: Sequence[torch.Tensor],
    x: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """dJ/dx_i = <dJ/dtheta_i, theta_pre_i - theta_ft_i> * m_i (1 - m_i) / T.

    The chain rule through theta_i = m_i theta_pre_i + (1 - m_i) theta_ft_i with
    m_i = sigmoid(x_i / T), computed from one backward pass to the effective weights, so
    the mask needs no graph of its own.
    """
    m = sigmoid_mask(x.detach(), temperature)
    inner = torch.stack(
        [(g.float() * (p.float() - f.float())).sum() for g, p, f in zip(grads, theta_pre, theta_ft, strict=True)]
    )
    return inner * m * (1 - m) / temperature


def sparsity_gradient(x: torch.Tensor, rho: float, temperature: float) -> torch.Tensor:
    """dS/dx for S = (rho - mean(m))^2: pulls the soft freeze ratio toward rho."""
    m = sigmoid_mask(x.detach(), temperature)
    return -2.0 * (rho - m.mean()) * m * (1 - m) / (temperature * x.numel())


class MaskLearning(L.LightningModule):
    """Alternating publisher (mask) and simulated-user (theta_ft) steps on mixed batches.

    Both updates are plain gradient steps as in the reference; their step sizes are folded
    into the gradients handed to one SGD(lr=1) optimizer, so Lightning counts every step.
    """

    def __init__(
        self, model: DiffusionModel, theta_ft: Mapping[str, torch.Tensor], cfg: FreezeAsGuardDefense, seed: int
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.cfg = cfg
        self.names = [name for name, _ in model.unet.named_parameters()]
        self.ft = nn.ParameterList(
            [nn.Parameter(theta_ft[n].detach().clone().float(), requires_grad=False) for n in self.names]
        )
        if cfg.init == "uniform":  # the reference: U[0, 1), so every tensor starts with m >= 0.5
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(len(self.names), generator=g)
        else:  # every tensor at m = rho: the ranking comes from the objective alone
            x = torch.full((len(self.names),), logit(cfg.rho, cfg.temperature))
        self.x = nn.Parameter(x)

    def theta_pre(self) -> list[torch.Tensor]:
        return [p for _, p in self.model.unet.named_parameters()]

    def soft_mask(self) -> torch.Tensor:
        return sigmoid_mask(self.x.detach(), self.cfg.temperature)

    def effective_weights(self) -> dict[str, torch.Tensor]:
        """Leaves for one backward pass: theta_i = m_i theta_pre_i + (1 - m_i) theta_ft_i."""
        m = self.soft_mask()
        return {
            n: (m[i] * p.detach() + (1 - m[i]) * f.detach()).to(p.dtype).requires_grad_(True)
            for i, (n, p, f) in enumerate(zip(self.names, self.theta_pre(), self.ft, strict=True))
        }

    def denoising_loss(self, params: dict[str, torch.Tensor], batch: Mapping[str, Any]) -> torch.Tensor:
        noisy, t, emb, target = self.model.noisy_inputs(batch["image"], batch["caption"])
        pred = functional_call(self.model.unet, params, *self.model.denoiser_inputs(noisy, t, emb)).sample
        return F.mse_loss(pred.float(), target.float())

    def set_gradients(self, batch: Mapping[str, Mapping[str, Any]], publisher: bool) -> dict[str, torch.Tensor]:
        """Put one publisher (``x``) or simulated-user (``theta_ft``) update into ``.grad``; returns the losses."""
        cfg = self.cfg
        eff = self.effective_weights()
        leaves = list(eff.values())
        loss_illegal = self.denoising_loss(eff, batch["illegal"])
        loss_legal = self.denoising_loss(eff, batch["legal"])
        if publisher:
            objective = (-loss_illegal + loss_legal) / 2
            grads = torch.autograd.grad(objective, leaves)
            dj = mask_gradient(grads, self.theta_pre(), list(self.ft), self.x, cfg.temperature)
            ds = sparsity_gradient(self.x, cfg.rho, cfg.temperature)
            self.x.grad = cfg.lr_mask * dj + cfg.c_sparsity * ds
        else:
            grads = torch.autograd.grad((loss_illegal + loss_legal) / 2, leaves)
            keep = 1 - self.soft_mask()
            for i, (f, g) in enumerate(zip(self.ft, grads, strict=True)):
                f.grad = cfg.lr_user * keep[i] * g.to(f.dtype)
        return {"loss_illegal": loss_illegal.detach(), "loss_legal": loss_legal.detach()}

    def training_step(self, batch: Mapping[str, Mapping[str, Any]], batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        terms = self.set_gradients(batch, publisher=self.global_step % self.cfg.publisher_every == 0)
        opt.step()
        m = self.soft_mask()
        terms.update(soft_ratio=m.mean(), hard_ratio=(m > 0.5).float().mean())
        bs = batch["illegal"]["image"].shape[0]
        self.log_dict({f"mask/{k}": v for k, v in terms.items()}, prog_bar=True, batch_size=bs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.x, *self.ft], lr=1.0)

    def scores(self) -> dict[str, float]:
        """Mask scores keyed by the tensor's name in the bundle (``unet.<name>``)."""
        return {f"unet.{n}": float(v) for n, v in zip(self.names, self.x.detach().cpu().tolist(), strict=True)}


@dataclass
class FreezeAsGuardDefense(FreezingDefense):
    # the freezing mask
    rho: float = setting(0.5, ge=0, le=1, doc="freeze ratio: the share of the UNet frozen")
    ratio_by: RatioBy = setting(
        "tensors", doc="what rho counts: exactly round(rho·n) tensors, or the closest share of parameters"
    )
    projection: Literal["topk", "threshold"] = setting(
        "topk", doc="freeze exactly rho (topk), or where m > 0.5 (threshold: the reference; rho only soft)"
    )
    illegal_split: str = setting(
        "illegal", doc="dataset split: the publisher's examples of what must not be learned (`experiment=freeze`)"
    )
    legal_split: str = setting(
        "legal", doc="dataset split: examples of adaptation that must keep working (`experiment=freeze`)"
    )
    # the simulated user theta_ft starts from a full fine-tune on illegal + legal data
    user_steps: int = setting(
        300, ge=1, doc="steps of the simulated user's initial full fine-tune (cached apart from the mask)"
    )
    user_lr: float = setting(1e-4, gt=0, doc="learning rate of that fine-tune")
    user_batch_size: int = setting(32, ge=1, doc="batch of that fine-tune")
    # mask learning
    steps: int = setting(300, ge=1, doc="mask-learning steps (reference: 2000)")
    batch_size: int = setting(
        16, ge=1, doc="per domain: each mask-learning step sees batch_size illegal + batch_size legal images"
    )
    publisher_every: int = setting(5, ge=1, doc="every k-th step updates the mask, the others the simulated user")
    temperature: float = setting(0.2, gt=0, doc="soft mask m = sigmoid(x / temperature)")
    init: Literal["constant", "uniform"] = setting(
        "constant", doc="mask scores start at m = rho (constant) or U[0, 1) (uniform, the reference)"
    )
    lr_mask: float = setting(30.0, gt=0, doc="publisher step size on the mask scores (reference: 10)")
    c_sparsity: float = setting(
        50.0, ge=0, doc="weight of (rho - mean m)²; above ~#tensors/1.6 the ratio oscillates (reference: 5e3)"
    )
    lr_user: float = setting(1e-5, ge=0, doc="the simulated user's step size during mask learning")

    name: str = setting("freezeasguard", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "rho", "user_steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.illegal_split == self.legal_split:
            raise ConfigError(f"defense.illegal_split and defense.legal_split are both {self.illegal_split!r}")

    def check_data(self, data: CaptionedImageDataModule) -> None:
        missing = [s for s in (self.illegal_split, self.legal_split) if s not in data.splits]
        if missing:
            raise ConfigError(
                f"defense=freezeasguard: dataset.splits has no {missing} (defense.illegal_split / defense.legal_split); "
                "use experiment=freeze (defines illegal and legal domains for shapes) or add the splits to your "
                f"dataset config; it defines {sorted(data.splits)}"
            )

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        self.check_data(data)
        theta_ft, user_info = simulated_user(self, model, data, ctx)
        learner_model = model.clone()
        learner_model.requires_grad_(False)
        module = MaskLearning(learner_model, theta_ft, self, ctx.seed)
        loaders = {
            "illegal": data.dataloader(self.illegal_split, self.batch_size),
            "legal": data.dataloader(self.legal_split, self.batch_size),
        }
        trainer = fit(module, loaders, self.steps, ctx, label="mask", lr_key="defense.lr_mask")
        scores = module.scores()
        sizes = candidate_sizes(model)
        if self.projection == "topk":
            frozen = project_to_ratio(scores, sizes, self.rho, self.ratio_by)
        else:
            frozen = {n for n, x in scores.items() if x > 0}  # m = sigmoid(x / T) > 0.5
        soft = module.soft_mask()
        info = {
            "mask": freeze_ratios(frozen, sizes),
            "soft_mask_mean": float(soft.mean()),
            "threshold_ratio_by_tensors": float((soft > 0.5).float().mean()),
            "mask_learning": final_terms(trainer, "mask"),
            "simulated_user": user_info,
        }
        ratios = info["mask"]
        log.info(
            "FreezeAsGuard: froze %d/%d tensors (%.3f), %.3f of UNet parameters",
            ratios["frozen_tensors"],
            ratios["total_tensors"],
            ratios["ratio_by_tensors"],
            ratios["ratio_by_params"],
        )
        return Protected(model=model, key=hard_mask(frozen, scores), info=info)


def simulated_user(
    cfg: FreezeAsGuardDefense, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """theta_ft: the released UNet fully fine-tuned on illegal + legal data (cached apart from the mask)."""
    spec = {
        "unet_sha256": weights_sha256(model.unet),
        "data": data.describe(),
        "splits": [cfg.illegal_split, cfg.legal_split],
        "steps": cfg.user_steps,
        "lr": cfg.user_lr,
        "batch_size": cfg.user_batch_size,
        "seed": ctx.seed,
    }

    def build(work: Path) -> None:
        both = ConcatDataset([data.dataset(cfg.illegal_split), data.dataset(cfg.legal_split)])
        loader = train_loader(both, cfg.user_batch_size, data.num_workers)
        settings = TrainSettings(
            cfg.user_steps, OptimConfig(lr=cfg.user_lr), log_prefix="simulated_user", lr_key="defense.user_lr"
        )
        user = finetune(model, loader, settings, ctx)
        torch.save({k: v.cpu() for k, v in user.model.unet.state_dict().items()}, work / "unet.pt")
        info = {"steps": cfg.user_steps, "images": len(both), **user.losses}
        (work / "info.json").write_text(json.dumps(info))

    folder = ctx.cache.get_or_build("simulated_user", spec, build, private=True, code=(simulated_user, data))
    state = torch.load(folder / "unet.pt", weights_only=True)
    info = json.loads((folder / "info.json").read_text())
    return state, info
