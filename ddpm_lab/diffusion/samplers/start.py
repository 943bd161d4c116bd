"""Sampling from an intermediate time t0 instead of pure noise (SDEdit, Meng et al. 2022, Sec. 3;
diffusers' image-to-image `strength`).

t0 in (0, 1] is the fraction of the way from the data to the noise:
- DDPM: the timestep k = round(t0 T) - 1 (the lecture's t = t0 T; 0-based, -1 = the data);
- flow matching: the flow time s0 = t0 on the path x_s = (1 - s) x_0 + s eps (before any sampling
  shift: the shift respaces the grid, not the path).
`grid_from` keeps the sampler's own grid below that time, with the start in front, so a sampler
of `steps` steps takes about t0 * steps of them; `noise_to` draws the start state from
q(x_t0 | x_0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers.steps import abar_at
from ddpm_lab.diffusion.samplers.timesteps import DATA_T
from ddpm_lab.errors import UserError

Tensor = torch.Tensor
FLOW_TIME_TOL = 1e-9        # a flow grid time this close below s0 is s0 itself (no zero-length step)


def check_t0(t0: object, key: str = "t0") -> float:
    """t0 is a number in (0, 1]."""
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not 0.0 < t0 <= 1.0:
        raise UserError(f"{key}={t0!r} must lie in (0, 1] (the fraction of the way from the data to the noise)")
    return float(t0)


def start_time(diffusion: GaussianDiffusion | FlowMatching, t0: float) -> int | float:
    """The grid time of t0: DDPM's timestep round(t0 T) - 1 (-1: the data), or the flow time t0."""
    t0 = check_t0(t0)
    if isinstance(diffusion, FlowMatching):
        return t0
    return max(round(t0 * diffusion.num_steps) - 1, DATA_T)


def grid_from(grid: Sequence[int | float], start: int | float) -> list[int | float]:
    """The sampler's `grid` (decreasing, data end last) started at `start`: `start`, then the grid's
    times below it. A start at the data end is the grid [data end]: no step."""
    data_end = grid[-1]
    if start <= data_end:
        return [data_end]
    below = [t for t in grid if t < start - (FLOW_TIME_TOL if isinstance(start, float) else 0)]
    return [start, *below]


def noise_to(diffusion: GaussianDiffusion | FlowMatching, x0: Tensor, start: int | float, noise: Tensor) -> Tensor:
    """A draw from q(x_start | x_0): sqrt(abar) x_0 + sqrt(1 - abar) noise (DDPM Eq. 4; x_0 itself at
    t = -1), or (1 - s) x_0 + s noise on the flow path."""
    if isinstance(diffusion, FlowMatching):
        return (1.0 - start) * x0 + start * noise
    abar = abar_at(diffusion, int(start))
    return abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * noise if abar < 1.0 else x0.clone()
