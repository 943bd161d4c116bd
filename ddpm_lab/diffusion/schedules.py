"""Variance schedules beta_1..beta_T (lecture: "variance schedule: controls how much noise is
added at any timestep"). Everything is float64; index i holds the lecture's t = i + 1.

- linear:  DDPM (Ho et al. 2020, Sec. 4): beta from 1e-4 to 0.02 over T = 1000 steps.
- cosine:  improved DDPM (Nichol & Dhariwal 2021, Eq. 17): abar(t) = f(t)/f(0),
           f(t) = cos(((t/T + s)/(1 + s)) * pi/2)^2, s = 0.008, beta clipped at 0.999.
- sigmoid: betas = sigmoid(linspace(-6, 6, T)) scaled into [beta_start, beta_end]
           (the "sigmoid" schedule of diffusers' DDPMScheduler).

Ours rather than a diffusers scheduler's betas: float64 (diffusers builds them in float32) and no
scheduler object; tests/test_schedules.py checks them against DDPMScheduler's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm_lab.errors import UserError, choice_error

Tensor = torch.Tensor


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear schedule."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved DDPM's cosine schedule: beta_t = min(1 - abar(t)/abar(t-1), max_beta)."""
    def abar(t: float) -> float:
        return math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - abar(i + 1) / abar(i), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def sigmoid_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Sigmoid schedule (as diffusers' "sigmoid" beta_schedule)."""
    x = torch.linspace(-6, 6, num_steps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Alg. 1:
    shift and scale sqrt(abar) so that sqrt(abar_T) = 0 (zero terminal SNR), keeping sqrt(abar_1)."""
    sqrt_abar = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


class NoiseSchedule:
    """beta_t, alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s, as float64 tensors.

    Timesteps are 0-based: `betas[i]` is the lecture's beta_{i+1}.
    """

    def __init__(self, betas: Tensor, name: str = "custom"):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 1:
            raise UserError(f"schedule: betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()) and not (
                bool(((betas[:-1] > 0) & (betas[:-1] < 1)).all()) and betas[-1] == 1):
            raise UserError("schedule: every beta must lie in (0, 1) (beta_T = 1 only for zero terminal SNR)")
        self.name = name
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    @classmethod
    def from_name(cls, name: str, num_steps: int = 1000, zero_terminal_snr: bool = False,
                  **kwargs) -> NoiseSchedule:
        """Build a named schedule; `kwargs` go to the schedule (e.g. beta_start, beta_end, s).
        `zero_terminal_snr` applies Lin et al.'s rescale (`rescale_zero_terminal_snr`; use it with v
        prediction)."""
        if name not in SCHEDULES:
            raise choice_error("schedule.name", name, SCHEDULES)
        if not isinstance(num_steps, int) or num_steps < 1:
            raise UserError(f"schedule.num_steps must be an integer >= 1, got {num_steps!r}")
        try:
            betas = SCHEDULES[name](num_steps, **kwargs)
        except TypeError as err:
            raise UserError(f"schedule.name={name!r}: bad option ({err})") from None
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
            name = f"{name}+zero_snr"
        return cls(betas, name=name)

    def snr(self) -> Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, num_steps={self.num_steps})"
