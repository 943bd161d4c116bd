"""One function per sampler: the loop from x at grid[0] to the result at grid[-1].

Every loop has the signature (as the samplers of k-diffusion's `sampling.py`)

    loop(model, x, timesteps, diffusion, *, generator=None, callback=None, **options) -> x

- `model(x, t)`: the prediction of the diffusion's type at a batch of times `t`, guidance already
  applied (a `Guider` bound to the condition) and in x's dtype;
- `timesteps`: the sampler's own time grid, the data end included (timesteps.py);
- `diffusion`: the process (schedule and prediction type);
- `generator`: the source of fresh noise; `callback(SamplerState)`: called after every step with the
  new state (the start state is reported by the caller, `sample`);
- `options`: the sampler settings (eta, variance, clip_x0, ...): a loop takes the ones it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch

from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers.steps import abar_at, ddim_step, ddpm_step, dpmpp_2m_step

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SamplerState:
    """One state of a sampler's chain: `x` at grid time `t` (a timestep, -1 = the data; on a flow
    process the flow time s, 0 = the data), the i-th of the grid (0 = the start x_T,
    len(grid) - 1 = the result)."""

    i: int
    t: int | float
    x: Tensor


Callback = Callable[[SamplerState], None]


class Trajectory:
    """A callback that keeps every state (on the CPU): `stack()` is (steps + 1, *shape), x_T to x_0."""

    def __init__(self) -> None:
        self.states: list[Tensor] = []
        self.times: list[int | float] = []

    def __call__(self, state: SamplerState) -> None:
        self.states.append(state.x.detach().cpu())
        self.times.append(state.t)

    def stack(self) -> Tensor:
        return torch.stack(self.states)


def report(callback: Callback | None, i: int, t: int | float, x: Tensor) -> None:
    if callback is not None:
        callback(SamplerState(i, t, x))


def randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str,
          dtype: torch.dtype) -> Tensor:
    """N(0, I) drawn on the generator's device, then moved: one seed, the same noise on any device."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return randn(x.shape, generator, x.device, x.dtype)


def timestep_batch(x: Tensor, t: int) -> Tensor:
    """The int64 timestep t for every sample of the batch x."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def sample_ddpm(model: Denoiser, x: Tensor, timesteps: Sequence[int], diffusion: GaussianDiffusion, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                variance: str = "fixed_small", clip_x0: bool = False, **_) -> Tensor:
    """Ancestral sampling, DDPM Algorithm 2 (Ho et al. 2020) on the respaced posterior (steps.py);
    no noise on the last step."""
    for i, (t, t_prev) in enumerate(pairwise(timesteps)):
        output = model(x, timestep_batch(x, t))
        z = randn_like(x, generator) if t_prev >= 0 else None
        x = ddpm_step(diffusion, output, x, t, t_prev, z, variance, clip_x0)
        report(callback, i + 1, t_prev, x)
    return x


def sample_ddim(model: Denoiser, x: Tensor, timesteps: Sequence[int], diffusion: GaussianDiffusion, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                eta: float = 0.0, clip_x0: bool = False, use_clipped_model_output: bool = False, **_) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12): deterministic at eta = 0, fresh noise per step when eta > 0;
    with clip_x0, `use_clipped_model_output` re-derives eps from the clipped x0 (steps.py)."""
    for i, (t, t_prev) in enumerate(pairwise(timesteps)):
        output = model(x, timestep_batch(x, t))
        z = randn_like(x, generator) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(diffusion, output, x, t, t_prev, z, eta, clip_x0, use_clipped_model_output)
        report(callback, i + 1, t_prev, x)
    return x


def _dpmpp_2m(model: Denoiser, x: Tensor, timesteps: Sequence[int], diffusion: GaussianDiffusion,
              generator: torch.Generator | None, callback: Callback | None, clip_x0: bool, sde: bool) -> Tensor:
    last = None                               # the previous step's (x0_hat, t)
    for i, (t, t_prev) in enumerate(pairwise(timesteps)):
        output = model(x, timestep_batch(x, t))
        z = randn_like(x, generator) if sde and t_prev >= 0 else None
        x, x0 = dpmpp_2m_step(diffusion, output, x, t, t_prev, last, clip_x0, z)
        last = (x0, t)
        report(callback, i + 1, t_prev, x)
    return x


def sample_dpmpp_2m(model: Denoiser, x: Tensor, timesteps: Sequence[int], diffusion: GaussianDiffusion, *,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    clip_x0: bool = False, **_) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): second-order multistep in the data prediction and
    the log-SNR, first order on the first step and on the last one (to sigma = 0), as diffusers'
    DPMSolverMultistepScheduler; use it on `dpm_grid`."""
    return _dpmpp_2m(model, x, timesteps, diffusion, generator, callback, clip_x0, sde=False)


def sample_dpmpp_2m_sde(model: Denoiser, x: Tensor, timesteps: Sequence[int], diffusion: GaussianDiffusion, *,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        clip_x0: bool = False, **_) -> Tensor:
    """SDE-DPM-Solver++(2M) (diffusers' "sde-dpmsolver++"): the same multistep data prediction in the
    exponential integrator of the reverse SDE, fresh noise at every step, like DDPM, which corrects
    the model's errors where the deterministic solvers carry them along (Karras et al. 2022, Sec. 4)."""
    return _dpmpp_2m(model, x, timesteps, diffusion, generator, callback, clip_x0, sde=True)


def invert_ddim(model: Denoiser, x: Tensor, timesteps: Sequence[int], diffusion: GaussianDiffusion, *,
                generator: torch.Generator | None = None, callback: Callback | None = None, **_) -> Tensor:
    """DDIM inversion on an increasing grid (-1, t_1, ..., t_n): the eta = 0 update (Song et al. 2021,
    Eq. 13) from t_cur up to t_next, with eps taken at (x_{t_cur}, t_next) - the usual
    approximation, since x_{t_next} is not known yet."""
    for i, (t_cur, t_next) in enumerate(pairwise(timesteps)):
        output = model(x, timestep_batch(x, t_next))
        _, eps = diffusion.predict_x0_eps(output, x, t_next)     # the identity for eps models
        abar_cur, abar_next = abar_at(diffusion, t_cur), abar_at(diffusion, t_next)
        x0_hat = (x - (1 - abar_cur) ** 0.5 * eps) / abar_cur ** 0.5
        x = abar_next ** 0.5 * x0_hat + (1 - abar_next) ** 0.5 * eps
        report(callback, i + 1, t_next, x)
    return x
