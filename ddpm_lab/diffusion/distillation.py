"""Progressive distillation (Salimans & Ho 2022), in plain PyTorch, on a DDPM or a flow process.

Both processes are written z_t = alpha_t x_0 + sigma_t eps: DDPM's (sqrt(abar_t), sqrt(1 - abar_t)),
with (1, 0) at t = -1 (the data), and flow matching's (1 - s, s). A deterministic DDIM step
(Song et al. 2021, Eq. 12 with eta = 0) is then
    z_{t'} = alpha_{t'} x0_hat(z_t) + sigma_{t'} eps_hat(z_t),
which on the flow path is exactly the Euler step of the velocity ODE. One round of progressive
distillation (Salimans & Ho 2022, Algorithm 2) trains a student to take one DDIM step where the
teacher takes two on a grid with twice the points: with z' and z'' the teacher's two steps from z_t,
    x~ = (z'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t)
is the x0 that makes one student DDIM step from z_t land on z''. The loss is the x0 error weighted
by the truncated SNR, max(SNR_t, 1) ("truncated SNR weighting", Sec. 4). Each round halves the
student's step count: the student's grid is every other point of the teacher's.

Times are per sample: int64 timesteps (DDPM, -1 = data) or float flow times s (0 = data).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.errors import UserError

Tensor = torch.Tensor
Process = GaussianDiffusion | FlowMatching
Model = Callable[[Tensor, Tensor], Tensor]      # (z, network time) -> the process's prediction


def rows(values: Tensor, like: Tensor) -> Tensor:
    """(B,) values shaped to broadcast against `like` (batch first), in like's dtype."""
    return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def alpha_sigma(process: Process, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t) of z_t = alpha_t x_0 + sigma_t eps for per-sample times `t`, shaped like `like`."""
    if isinstance(process, FlowMatching):
        s = rows(t, like)
        return 1 - s, s
    abar = torch.cat([process.alphas_cumprod.new_ones(1), process.alphas_cumprod])   # index t + 1: t = -1 is 1
    abar = rows(abar.to(t.device)[t.long() + 1], like)
    return abar.sqrt(), (1 - abar).sqrt()


def network_time(process: Process, t: Tensor) -> Tensor:
    """What the network is called with: the timestep (DDPM) or time_scale * s (flow)."""
    return process.network_time(t) if isinstance(process, FlowMatching) else t


def denoise(model: Model, process: Process, z: Tensor, t: Tensor, clip_x0: bool = False) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) of the model at (z, t); with `clip_x0`, x0 clipped to [-1, 1] as the
    process's samplers clip: DDPM's DDIM keeps the network's eps (samplers/steps.py `ddim_step`),
    flow's Euler steps with the velocity of the clipped x0 (flow_loops.py `flow_velocity`), i.e. eps
    recomputed from it."""
    output = model(z, network_time(process, t))
    tt = rows(t, z) if isinstance(process, FlowMatching) else t
    x0, eps = process.predict_x0_eps(output, z, tt)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        if isinstance(process, FlowMatching):
            alpha, sigma = alpha_sigma(process, t, z)
            eps = (z - alpha * x0) / sigma
    return x0, eps


def ddim_to(process: Process, x0: Tensor, eps: Tensor, t_next: Tensor) -> Tensor:
    """The deterministic DDIM step's result z_{t'} = alpha_{t'} x0 + sigma_{t'} eps (Eq. 12, eta = 0)."""
    alpha, sigma = alpha_sigma(process, t_next, x0)
    return alpha * x0 + sigma * eps


def ddim_step(model: Model, process: Process, z: Tensor, t: Tensor, t_next: Tensor,
              clip_x0: bool = False) -> Tensor:
    """One deterministic DDIM step of `model` from z_t to z_{t_next}."""
    x0, eps = denoise(model, process, z, t, clip_x0)
    return ddim_to(process, x0, eps, t_next)


def progressive_target(teacher: Model, process: Process, z: Tensor, t: Tensor, t_mid: Tensor,
                       t_next: Tensor, clip_x0: bool = False) -> Tensor:
    """x~ of Algorithm 2: the x0 for which one DDIM step z_t -> z_{t_next} equals the teacher's two
    DDIM steps z_t -> z_{t_mid} -> z_{t_next}, the steps in their data-prediction form
    z' = (sigma'/sigma) z + (alpha' - (sigma'/sigma) alpha) x0_hat (DPM-Solver++'s first order;
    the flow Euler step). x~ is then the weighted mean of the teacher's two x0 predictions,
        x~ = (w x0_hat(z_t) + w' x0_hat(z_{t_mid})) / (w + w'),
        w = (sigma''/sigma') (alpha' - (sigma'/sigma) alpha),  w' = alpha'' - (sigma''/sigma') alpha',
    so with `clip_x0` (both x0s clipped to [-1, 1]) x~ lies in [-1, 1] too."""
    alpha, sigma = alpha_sigma(process, t, z)
    alpha_mid, sigma_mid = alpha_sigma(process, t_mid, z)
    alpha_next, sigma_next = alpha_sigma(process, t_next, z)
    x0, _ = denoise(teacher, process, z, t, clip_x0)
    ratio, ratio_mid = sigma_mid / sigma, sigma_next / sigma_mid
    z_mid = ratio * z + (alpha_mid - ratio * alpha) * x0
    x0_mid, _ = denoise(teacher, process, z_mid, t_mid, clip_x0)
    w, w_mid = ratio_mid * (alpha_mid - ratio * alpha), alpha_next - ratio_mid * alpha_mid
    return (w * x0 + w_mid * x0_mid) / (w + w_mid)


def truncated_snr_weight(process: Process, t: Tensor, like: Tensor) -> Tensor:
    """max(SNR_t, 1) per sample, SNR = alpha^2 / sigma^2 (Salimans & Ho 2022, Sec. 4)."""
    alpha, sigma = alpha_sigma(process, t, like)
    return (alpha ** 2 / sigma ** 2).clamp(min=1.0).reshape(-1)


def progressive_loss(student_x0: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Per-example loss: weight * mean over dimensions of (x0_student - x~)^2, in float32 at least."""
    dtype = torch.promote_types(student_x0.dtype, torch.float32)
    return (student_x0.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(1) * weight.to(dtype)


def check_power_of_two(steps: object, key: str) -> int:
    """`steps` is a power of two (1, 2, 4, ...): progressive rounds halve it down to 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or steps & (steps - 1):
        raise UserError(f"{key}={steps!r} must be a power of two (1, 2, 4, 8, ...): each progressive "
                        f"round halves the student's step count")
    return steps


def round_steps(start_steps: int, final_steps: int) -> list[int]:
    """The student's step count in each round: start/2, start/4, ..., final (one round per halving)."""
    check_power_of_two(start_steps, "distill.start_steps")
    check_power_of_two(final_steps, "distill.final_steps")
    if final_steps >= start_steps:
        raise UserError(f"distill.final_steps={final_steps} must be below distill.start_steps={start_steps} "
                        f"(each round halves the step count)")
    return [start_steps >> k for k in range(1, int(math.log2(start_steps // final_steps)) + 1)]


def check_halving(teacher_grid: list, student_grid: list) -> None:
    """The student's grid is every other point of the teacher's (else two teacher steps do not span
    one student step)."""
    if list(teacher_grid[::2]) != list(student_grid):
        raise UserError(f"the sampler's grid of {len(student_grid) - 1} steps is not every other point of its "
                        f"grid of {len(teacher_grid) - 1}: use sampler spacing 'trailing' with a number of "
                        f"training steps divisible by distill.start_steps")
