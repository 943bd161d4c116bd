"""Time grids: the timesteps a sampler visits, from the noise end to the data end.

A grid holds the sampler's states' times, the last one included: a sampler steps from grid[i] to
grid[i + 1]. Timesteps are 0-based (0..T-1, the lecture's t - 1); the state after the last step is
at t = -1, where abar = 1 (the data). Spacings are diffusers' `timestep_spacing` names.
"""

from __future__ import annotations

import torch

from ddpm_lab.errors import UserError, choice_error

Tensor = torch.Tensor

SPACINGS = ("leading", "trailing", "linspace")
DATA_T = -1                  # the time of the sampler's result: abar = 1


def check_steps(steps: object, num_train_steps: int) -> None:
    """`sampler.steps` is an integer in [1, T]."""
    if not isinstance(steps, int) or not 1 <= steps <= num_train_steps:
        raise UserError(f"sampler.steps={steps!r} must be an integer in [1, {num_train_steps}] "
                        f"(the schedule's num_steps)")


def check_spacing(spacing: object) -> None:
    if spacing not in SPACINGS:
        raise choice_error("sampler.spacing", spacing, SPACINGS)


def make_timesteps(num_train_steps: int, steps: int, spacing: str = "leading") -> Tensor:
    """The decreasing int64 timesteps a sampler visits (diffusers' `timestep_spacing` names)."""
    check_steps(steps, num_train_steps)
    check_spacing(spacing)
    if spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64) * (num_train_steps // steps)
    elif spacing == "trailing":
        ts = torch.arange(num_train_steps, 0, -num_train_steps / steps, dtype=torch.float64).round() - 1
        ts = ts.flip(0)
    else:
        ts = torch.linspace(0, num_train_steps - 1, steps, dtype=torch.float64)
    return ts.round().long().flip(0)


def dpm_timesteps(num_train_steps: int, steps: int, spacing: str = "linspace") -> Tensor:
    """Timesteps of diffusers' DPMSolverMultistepScheduler: steps + 1 points with the last dropped,
    so the solver ends with a step from the smallest timestep to sigma = 0."""
    check_steps(steps, num_train_steps)
    check_spacing(spacing)
    if spacing == "linspace":
        ts = torch.linspace(0, num_train_steps - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1]
    elif spacing == "leading":
        ts = (torch.arange(steps + 1, dtype=torch.float64) * (num_train_steps // (steps + 1))).round().flip(0)[:-1]
    else:
        return make_timesteps(num_train_steps, steps, spacing)
    return ts.long()


def ddpm_grid(diffusion, steps: int, spacing: str, **_) -> list[int]:
    """The grid of DDPM and DDIM: `make_timesteps`, then the data end."""
    return [*make_timesteps(diffusion.num_steps, steps, spacing).tolist(), DATA_T]


def dpm_grid(diffusion, steps: int, spacing: str, **_) -> list[int]:
    """The grid of DPM-Solver++: `dpm_timesteps`, then the data end (sigma = 0)."""
    return [*dpm_timesteps(diffusion.num_steps, steps, spacing).tolist(), DATA_T]
