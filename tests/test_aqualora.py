"""AquaLoRA's prior-preserving target on every objective the models use. End to end it runs in the micro
diagonal (tests/test_latent.py) and, stacked, in the micro_dit one (tests/test_dit_runs.py)."""

import pytest
import torch


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "flow"])
def test_aqualoras_target_moves_the_clean_estimate_by_delta_on_the_watermarked_input(prediction_type):
    """PPFT: at noise(z + delta, n, t) the target must decompose into (the teacher's clean estimate + delta, the
    teacher's noise estimate), so sampling from the student lands delta away from the teacher's sample."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from adaptguard.models import objective

    g = torch.Generator().manual_seed(0)
    z, noise, teacher, delta = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(4))
    t = torch.tensor([1, 50, 300, 900])
    if prediction_type == "flow":  # x_t = (1 - s) x + s e, v = e - x: x0 = x_t - s v
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        s = (t.float() / 1000).view(-1, 1, 1, 1)

        def x0(x_t, pred):
            return x_t - s * pred
    else:
        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)

        def x0(x_t, pred):
            if prediction_type == "epsilon":
                return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
            return a.sqrt() * x_t - (1 - a).sqrt() * pred

    clean, marked = objective.add_noise(sched, z, noise, t), objective.add_noise(sched, z + delta, noise, t)
    target = teacher + objective.target(sched, delta, torch.zeros_like(z), t)  # what PriorPreserving regresses onto
    torch.testing.assert_close(x0(marked, target) - x0(clean, teacher), delta, atol=1e-3, rtol=1e-3)
