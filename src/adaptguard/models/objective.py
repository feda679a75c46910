"""The training objective, read off the model's scheduler: one place for every fine-tuning path.

A DDPM-family scheduler (``DDPMScheduler`` and its kin) trains epsilon or v prediction on
``alphas_cumprod`` with uniform timesteps; ``FlowMatchEulerDiscreteScheduler`` trains rectified flow
(x_t = (1 - s) x + s e, target e - x, s = t / num_train_timesteps) with logit-normal timesteps through
its shifted schedule, as diffusers' SD3 scripts do. Pretraining, the protect stages, the attacks and
the defenses' probes all go through :class:`~adaptguard.models.bundle.DiffusionModel`, which calls
these; none of them asks which backbone it has.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin

from adaptguard.core.errors import ConfigError


def is_flow(scheduler: ConfigMixin) -> bool:
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


def _steps(scheduler: ConfigMixin) -> int:
    return int(scheduler.config.num_train_timesteps)


def sample_timesteps(scheduler: ConfigMixin, n: int, device: torch.device) -> torch.Tensor:
    """Training timesteps: uniform integers (DDPM family) or logit-normal through the flow schedule."""
    steps = _steps(scheduler)
    if not is_flow(scheduler):
        return torch.randint(0, steps, (n,), device=device)
    u = torch.sigmoid(torch.randn(n, device=device))
    index = (u * steps).long().clamp_max(steps - 1)
    return scheduler.timesteps.to(device)[index]


def timesteps_at(scheduler: ConfigMixin, positions: torch.Tensor) -> torch.Tensor:
    """The timesteps at ``positions`` in [0, num_train_timesteps) along the noise schedule.

    A DDPM-family schedule is indexed by t itself. A flow schedule with SD3's shift spends most of its
    sampling steps at high noise: position p (u = p / n) sits at s = shift u / (1 + (shift - 1) u), t = s n.
    Methods that weight timesteps (SleeperMark's w1 / w2 around tau) weight positions, so tau = 250 is the
    last quarter of the trajectory on both families: t = 250 on a DDPM schedule, t = 500 at shift 3.
    """
    if not is_flow(scheduler):
        return positions
    u = positions.float() / _steps(scheduler)
    shift = float(scheduler.config.shift)
    return shift * u / (1 + (shift - 1) * u) * _steps(scheduler)


def _sigmas(scheduler: ConfigMixin, timesteps: torch.Tensor) -> torch.Tensor:
    return timesteps.float() / _steps(scheduler)


def add_noise(scheduler: ConfigMixin, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The forward process at ``t`` (DDPM family: integers in [0, num_train_timesteps); flow: any t there)."""
    if not is_flow(scheduler):
        return scheduler.add_noise(latents, noise, t)
    s = _sigmas(scheduler, t).view(-1, *[1] * (latents.ndim - 1))
    return ((1 - s) * latents + s * noise).to(latents.dtype)


def target(scheduler: ConfigMixin, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the denoiser regresses onto."""
    if is_flow(scheduler):
        return noise - latents
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ConfigError(f"model.scheduler.prediction_type: {kind!r} is not supported (epsilon, v_prediction)")


def x0_gain(scheduler: ConfigMixin, t: torch.Tensor) -> torch.Tensor:
    """k(t): moving the prediction by -k(t) d moves its one-step clean-latent estimate by +d.

    epsilon: x0 = (z - sqrt(1-a) e) / sqrt(a), k = sqrt(a / (1-a)); v: x0 = sqrt(a) z - sqrt(1-a) v,
    k = 1 / sqrt(1-a); flow: x0 = z - s v, k = 1 / s (s floored at one step). Output watermarks
    (SleeperMark's stage 2) build their targets from it.
    """
    if is_flow(scheduler):
        return 1 / _sigmas(scheduler, t).clamp_min(1.0 / _steps(scheduler))
    a = scheduler.alphas_cumprod.to(t.device)[t.long()].float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (a / (1 - a)).sqrt()
    if kind == "v_prediction":
        return 1 / (1 - a).sqrt()
    raise ConfigError(f"model.scheduler.prediction_type: {kind!r} is not supported (epsilon, v_prediction)")
