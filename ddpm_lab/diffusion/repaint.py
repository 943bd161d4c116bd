"""RePaint inpainting (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion
Probabilistic Models"), in plain PyTorch, for any `model(x_t, t)` of a DDPM process.

Each reverse step (Algorithm 1, lines 4-8) builds x_{t-1} from two parts, joined by the mask m
(True = known):
    known     x_{t-1} ~ q(x_{t-1} | x_0) = N(sqrt(abar_{t-1}) x_0, (1 - abar_{t-1}) I)     (Eq. 8a)
    unknown   x_{t-1} ~ p_theta(x_{t-1} | x_t)                                              (Eq. 8b)
    x_{t-1} = m * known + (1 - m) * unknown                                                 (Eq. 8c)
The unknown part is the DDIM update with eta (Song et al. 2021, Eq. 12; eta = 1 is DDPM's
posterior variance), as diffusers' RePaintScheduler does it; with a binary mask the two parts
may share one noise draw, since every pixel takes only one of them. Resampling (Sec. 4.2) jumps
the chain back up, x_t ~ q(x_t | x_{t-1}) (line 10), so the generated region can harmonise with
the known one; the time schedule of the jumps is `repaint_grid`.

On a respaced schedule (steps < T) a jump from state time a up to b draws from the respaced
chain's q(x_b | x_a) = N(sqrt(abar_b / abar_a) x_a, (1 - abar_b / abar_a) I), as the paper's code
does with its respaced betas. At steps = T this is the single DDPM forward step that diffusers'
`undo_step` takes; at steps < T diffusers applies T // steps single steps with the betas of the
stride above, a slightly different variance (tests/test_repaint.py compares at steps = T).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch

from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers.loops import Callback, randn, randn_like, report, timestep_batch
from ddpm_lab.diffusion.samplers.steps import abar_at, ddim_step
from ddpm_lab.diffusion.samplers.timesteps import DATA_T, check_steps
from ddpm_lab.errors import UserError

Tensor = torch.Tensor


def jump_times(steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The model-input times of RePaint's resampling schedule, in units of the stride (0..steps-1).

    Counting down from steps - 1, at each multiple j of `jump_length` below steps - jump_length the
    chain goes back up `jump_length` times, `jump_n_sample - 1` times in all, before it goes on
    down (RePaint Sec. 4.2, Fig. 3: jump length j, resampling count r = jump_n_sample). A rising
    entry is a forward jump. This is the list of the paper's code (`get_schedule_jump`) and of
    diffusers' `RePaintScheduler.set_timesteps`; jump_n_sample = 1 is plain ancestral sampling.
    """
    for key, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"task.{key}={value!r} must be an integer >= 1")
    remaining = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    times, t = [], steps
    while t >= 1:
        t -= 1
        times.append(t)
        if remaining.get(t, 0) > 0:
            remaining[t] -= 1
            for _ in range(jump_length):
                t += 1
                times.append(t)
    return times


def repaint_timesteps(num_train_steps: int, steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """`jump_times` on the timestep scale (times T // steps): diffusers' `RePaintScheduler.timesteps`."""
    check_steps(steps, num_train_steps)
    return [t * (num_train_steps // steps) for t in jump_times(steps, jump_length, jump_n_sample)]


def repaint_grid(num_train_steps: int, steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The times of the chain's states, x_T first and the data (t = -1) last.

    A reverse step with the model at timestep u lands on u - stride; a forward jump lands one
    stride up. So the states are the first timestep, then each timestep minus the stride (below
    0: the data end, -1). Consecutive states step down (a reverse step) or up (a forward jump).
    """
    timesteps = repaint_timesteps(num_train_steps, steps, jump_length, jump_n_sample)
    stride = num_train_steps // steps
    return [timesteps[0], *(max(u - stride, DATA_T) for u in timesteps)]


def repaint_step(diffusion: GaussianDiffusion, output: Tensor, x_t: Tensor, t: int, t_prev: int, x0: Tensor,
                 known: Tensor, noise: Tensor, eta: float = 1.0, clip_x0: bool = False) -> Tensor:
    """One reverse step x_t -> x_{t_prev} (Eq. 8a-c): the known region from q(x_{t_prev} | x0), the
    unknown one from the model's DDIM(eta) step, both with `noise`; `known` broadcasts against x."""
    unknown = ddim_step(diffusion, output, x_t, t, t_prev, noise, eta, clip_x0)
    abar_prev = abar_at(diffusion, t_prev)
    known_part = abar_prev ** 0.5 * x0 + (1.0 - abar_prev) ** 0.5 * noise
    return torch.where(known, known_part, unknown)


def forward_jump(diffusion: GaussianDiffusion, x: Tensor, t: int, t_next: int, noise: Tensor) -> Tensor:
    """x_{t_next} ~ q(x_{t_next} | x_t) for t < t_next (Algorithm 1, line 10, over a stride):
    sqrt(abar_next / abar_t) x_t + sqrt(1 - abar_next / abar_t) noise."""
    alpha = abar_at(diffusion, t_next) / abar_at(diffusion, t)
    return alpha ** 0.5 * x + (1.0 - alpha) ** 0.5 * noise


@torch.no_grad()
def repaint(model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, known: Tensor, diffusion: GaussianDiffusion,
            grid: Sequence[int], generator: torch.Generator | None = None, eta: float = 1.0,
            clip_x0: bool = False, x_T: Tensor | None = None, callback: Callback | None = None) -> Tensor:
    """Inpaint `x0` where `known` is False by walking `grid` (repaint_grid) from x_T ~ N(0, I).

    `model(x, t)` is the (guided) prediction of the diffusion's type. Noise is drawn from
    `generator` in the order of diffusers' RePaintPipeline: x_T, then one draw per reverse step and
    one per forward jump. The known pixels of the result are x0's exactly.
    """
    x = randn(x0.shape, generator, x0.device, x0.dtype) if x_T is None else x_T.to(x0)
    report(callback, 0, grid[0], x)
    for i, (t, t_next) in enumerate(pairwise(grid)):
        if t_next < t:
            output = model(x, timestep_batch(x, t))
            x = repaint_step(diffusion, output, x, t, t_next, x0, known, randn_like(x, generator), eta, clip_x0)
        else:
            x = forward_jump(diffusion, x, t, t_next, randn_like(x, generator))
        report(callback, i + 1, t_next, x)
    return torch.where(known, x0, x)
