"""Flow-matching samplers: the velocity ODE dx_s/ds = v(x_s, s) from s = 1 (noise) to s = 0 (data).

- `flow_grid`: s from 1 to 0 in `steps` uniform steps, then shifted, s' = k s / (1 + (k - 1) s)
  (SD3 Sec. 5.3.2; k = the sampler's shift, by default the process's training shift);
- "flow_euler": Euler steps x_{s'} = x_s + (s' - s) v (rectified flow, Liu et al. 2023; diffusers'
  FlowMatchEulerDiscreteScheduler);
- "flow_heun": Heun's second-order method, Karras et al. 2022, Algorithm 1 without churn: an Euler
  predictor, then the trapezoid of the two velocities; the last step, to s = 0, stays Euler;
- `invert_flow_euler`: the inversion (encoding), Euler on the same ODE from s = 0 up to s = 1.

The loops have the signature of loops.py with `model(x, s)` taking the flow time s (per sample);
`sample` turns it into the network's time input time_scale * s. The grid and the reported
`SamplerState.t` are s values, the result at s = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch

from ddpm_lab.diffusion.flow import FlowMatching, shift_time
from ddpm_lab.diffusion.samplers.loops import Callback, Denoiser, report

Tensor = torch.Tensor
DATA_S = 0.0                 # the flow time of the sampler's result


def flow_grid(diffusion: FlowMatching, steps: int, spacing: str = "leading", shift: float | None = None,
              **_) -> list[float]:
    """steps + 1 flow times from 1 to 0: uniform, then shifted by `shift` (None: the process's)."""
    shift = diffusion.shift if shift is None else shift
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).tolist()


def time_batch(x: Tensor, s: float) -> Tensor:
    """The flow time s for every sample of the batch x (at least float32: s feeds time_scale * s)."""
    return torch.full((x.shape[0],), s, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)


def flow_velocity(diffusion: FlowMatching, output: Tensor, x: Tensor, s: float, clip_x0: bool = False) -> Tensor:
    """The velocity of a model output at (x, s > 0); with `clip_x0` the velocity of the x0
    prediction clipped to [-1, 1], v = (x - clip(x0)) / s."""
    v = diffusion.velocity(output, x, s)
    if not clip_x0:
        return v
    return (x - (x - s * v).clamp(-1.0, 1.0)) / s


def sample_flow_euler(model: Denoiser, x: Tensor, timesteps: Sequence[float], diffusion: FlowMatching, *,
                      generator: torch.Generator | None = None, callback: Callback | None = None,
                      clip_x0: bool = False, **_) -> Tensor:
    """Euler on dx/ds = v: x_{s'} = x_s + (s' - s) v(x_s, s), one model call per step."""
    for i, (s, s_next) in enumerate(pairwise(timesteps)):
        v = flow_velocity(diffusion, model(x, time_batch(x, s)), x, s, clip_x0)
        x = x + (s_next - s) * v
        report(callback, i + 1, s_next, x)
    return x


def sample_flow_heun(model: Denoiser, x: Tensor, timesteps: Sequence[float], diffusion: FlowMatching, *,
                     generator: torch.Generator | None = None, callback: Callback | None = None,
                     clip_x0: bool = False, **_) -> Tensor:
    """Heun (Karras et al. 2022, Alg. 1, no churn): x' = x + h v(x, s), then x + h (v + v(x', s')) / 2
    when s' > 0; 2 steps - 1 model calls."""
    for i, (s, s_next) in enumerate(pairwise(timesteps)):
        h = s_next - s
        v = flow_velocity(diffusion, model(x, time_batch(x, s)), x, s, clip_x0)
        x_euler = x + h * v
        if s_next > 0:
            v_next = flow_velocity(diffusion, model(x_euler, time_batch(x, s_next)), x_euler, s_next, clip_x0)
            x = x + h * (v + v_next) / 2
        else:
            x = x_euler
        report(callback, i + 1, s_next, x)
    return x


def invert_flow_euler(model: Denoiser, x: Tensor, timesteps: Sequence[float], diffusion: FlowMatching, *,
                      generator: torch.Generator | None = None, callback: Callback | None = None, **_) -> Tensor:
    """Flow ODE inversion on an increasing grid (0, ..., 1): Euler steps x_{s'} = x_s + (s' - s) v, with
    the velocity taken at (x_s, s') - as DDIM inversion takes eps at the next timestep - so that the
    Euler generation step back from s' asks the model at the same time s'; x_{s'} is not known yet,
    and the error of using x_s shrinks with the step."""
    for i, (s, s_next) in enumerate(pairwise(timesteps)):
        v = diffusion.velocity(model(x, time_batch(x, s_next)), x, s_next)
        x = x + (s_next - s) * v
        report(callback, i + 1, s_next, x)
    return x
