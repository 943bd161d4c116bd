import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_lab.diffusion import NoiseSchedule
from ddpm_lab.errors import UserError

# diffusers builds its schedule in float32; a float32 cumulative product over 1000 factors carries
# a relative round-off of about 1000 * 6e-8 = 6e-5 at worst, so we compare at rtol 1e-4.
DIFFUSERS_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("num_steps", [1000, 50])
def test_alphas_cumprod_match_diffusers(name, num_steps):
    ours = NoiseSchedule.from_name(name, num_steps=num_steps)
    ref = DDPMScheduler(num_train_timesteps=num_steps, beta_schedule=DIFFUSERS_NAMES[name])
    assert ours.betas.dtype == torch.float64
    torch.testing.assert_close(ours.betas, ref.betas.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-4, atol=1e-8)


def test_linear_is_ddpm_paper_schedule():
    s = NoiseSchedule.from_name("linear")
    assert s.num_steps == 1000
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    torch.testing.assert_close(s.alphas_cumprod[3], s.alphas[:4].prod())


def test_cosine_clips_beta_and_follows_formula():
    import math

    s = NoiseSchedule.from_name("cosine", num_steps=1000)
    assert s.betas.max().item() == pytest.approx(0.999)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # Away from the clipped end, abar_t = f(t) / f(0) (improved DDPM, Eq. 17), 1-based t.
    for t in (1, 10, 500, 900):
        assert s.alphas_cumprod[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)


def test_bad_schedule_names_and_steps():
    with pytest.raises(UserError, match="schedule.name='quadratic'.*linear, cosine, sigmoid"):
        NoiseSchedule.from_name("quadratic")
    with pytest.raises(UserError, match="schedule.num_steps must be an integer >= 1"):
        NoiseSchedule.from_name("linear", num_steps=0)
    with pytest.raises(UserError, match="beta"):
        NoiseSchedule(torch.tensor([0.1, 1.5]))
