"""IMMA: immunize the model so that adapting it to the illegal concept learns poorly.

Our implementation of Zheng & Yeh, "IMMA: Immunizing Text-to-Image Models against Malicious Adaptation"
(ECCV 2024; spec and what we changed: docs/defenses/imma.md). A bilevel problem: the publisher's weights
theta should maximise the denoising loss on the illegal data of theta *after* an adaptation phi*(theta)
(LoRA) minimised it. The reference solves it first-order by alternating: an inner step trains a LoRA
(the simulated attacker) on the illegal images with theta fixed; an outer step moves theta's
cross-attention weights by gradient *ascent* on the same loss with the LoRA fixed. The LoRA is then
discarded and theta published: a model that constrains nothing and carries no key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
from diffusers.optimization import get_scheduler

from adaptguard.analysis.locations import cross_attention_pattern
from adaptguard.core.config import setting
from adaptguard.core.context import RunContext
from adaptguard.core.errors import ConfigError
from adaptguard.core.keys import Protected
from adaptguard.data.base import CaptionedImageDataModule
from adaptguard.defenses.base import Defense
from adaptguard.models.bundle import DiffusionModel
from adaptguard.models.lora import LoraSettings, add_lora
from adaptguard.training import final_terms, fit


class ImmunizationModule(L.LightningModule):
    """Alternating inner (LoRA descends) and outer (theta ascends) steps on one illegal batch each; manual
    optimization with two AdamW optimizers."""

    def __init__(self, model: DiffusionModel, theta: list[torch.nn.Parameter], defense: IMMADefense) -> None:
        super().__init__()
        self.model = model
        self.theta = theta
        self.lora = [p for n, p in model.unet.named_parameters() if "lora_" in n]
        self.cfg = defense
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inner = self.global_step % (self.cfg.inner_steps + self.cfg.outer_steps) < self.cfg.inner_steps
        for p in self.lora:
            p.requires_grad_(inner)
        for p in self.theta:
            p.requires_grad_(not inner)
        opt_theta, opt_lora = self.optimizers()
        sched_theta, sched_lora = self.lr_schedulers()
        loss = self.model.latent_loss(self.model.batch_latents(batch), list(batch["caption"]))
        opt, sched = (opt_lora, sched_lora) if inner else (opt_theta, sched_theta)
        opt.zero_grad()
        self.manual_backward(loss if inner else -loss)  # the attacker descends, the publisher ascends
        if self.cfg.max_grad_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()
        self.log(f"protect/{'inner' if inner else 'outer'}_loss", loss.detach(), prog_bar=True,
                 batch_size=len(batch["caption"]))  # fmt: skip
        return loss.detach()

    def configure_optimizers(self) -> list[dict[str, Any]]:
        total = self.cfg.steps * (self.cfg.inner_steps + self.cfg.outer_steps)
        out = []
        for params, lr in ((self.theta, self.cfg.lr), (self.lora, self.cfg.lora_lr)):
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            out.append({"optimizer": opt, "lr_scheduler": get_scheduler("constant", opt, num_training_steps=total)})
        return out


@dataclass
class IMMADefense(Defense):
    illegal_split: str = setting("illegal", doc="the concept to immunize against: the publisher's images of it")
    steps: int = setting(200, ge=1, doc="rounds of inner + outer steps (reference: 50 epochs of 20 images, batch 1)")
    inner_steps: int = setting(1, ge=1, doc="LoRA (attacker) steps per round (reference: 1)")
    outer_steps: int = setting(1, ge=1, doc="publisher steps per round (reference: 1)")
    batch_size: int = setting(4, ge=1, doc="batch of both steps (reference: 1)")
    lr: float = setting(1e-5, gt=0, doc="the publisher's learning rate, gradient ascent (reference: 1e-5)")
    lora_lr: float = setting(1e-4, gt=0, doc="the simulated attacker's LoRA learning rate (reference: 1e-4)")
    rank: int = setting(4, ge=1, doc="the simulated attacker's LoRA rank (reference: diffusers' default, 4)")
    max_grad_norm: float | None = setting(1.0, gt=0, doc="gradient clipping of both steps (null: none)")
    name: str = setting("imma", doc="label in results and logs")
    report_options: ClassVar[tuple[str, ...]] = ("steps", "lr", "lora_lr")

    def check_data(self, data: CaptionedImageDataModule) -> None:
        if self.illegal_split not in data.splits:
            raise ConfigError(f"defense=imma: dataset.splits has no {self.illegal_split!r} (defense.illegal_split); "
                              "use experiment=freeze (illegal and legal domains for shapes) or add the split; it "
                              f"defines {sorted(data.splits)}")  # fmt: skip

    def protect(self, model: DiffusionModel, data: CaptionedImageDataModule, ctx: RunContext) -> Protected:
        self.check_data(data)
        immunized = model.clone()
        # the reference's cross-attention ("xatten") projections; a transformer's joint attention
        pattern = re.compile(cross_attention_pattern(immunized.unet))
        names = [n for n, _ in immunized.unet.named_parameters() if pattern.search(n)]
        if not names:
            raise ConfigError(f"defense=imma: no attention weights to immunize in {type(immunized.unet).__name__}")
        add_lora(immunized, LoraSettings(self.rank, float(self.rank)), None, key="defense")  # the attacker's LoRA
        params = dict(immunized.unet.named_parameters())
        theta = [params[n.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")]
                 if n not in params else params[n] for n in names]  # fmt: skip
        module = ImmunizationModule(immunized, theta, self)
        loader = data.dataloader(self.illegal_split, self.batch_size)
        trainer = fit(module, loader, self.steps * (self.inner_steps + self.outer_steps), ctx, label="protect imma",
                      lr_key="defense.lr")  # fmt: skip
        immunized.unet.unload_lora()  # the simulated attacker's adapter is discarded, not merged
        immunized.requires_grad_(False).eval()
        info = {"steps": self.steps, "immunized_tensors": len(names), "final_losses": final_terms(trainer, "protect"),
                "immunized_params": sum(p.numel() for p in theta)}  # fmt: skip
        return Protected(immunized, None, info)

    def summary(self, protected: Protected) -> dict[str, Any]:
        info = protected.info or {}
        return {"immunized_params": info.get("immunized_params"), "immunized_tensors": info.get("immunized_tensors")}
