"""The consistency sampler (Song et al. 2023, Algorithm 1): one step x = f(z_T, T), and for each
later time tau of the grid z = alpha_tau x + sigma_tau eps, x = f(z, tau) (diffusion/consistency.py).

Its grid is the DDIM grid (DDPM: `ddpm_grid` with the sampler's spacing; flow: `flow_grid`), or the
times tau_1 > tau_2 > ... given as `times` (Algorithm 1 takes them as its input; Song et al. pick
them by a search on FID); the states reported are the re-noised z at each time and the result x at
the data end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm_lab.diffusion.consistency import consistency_fn, renoise
from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.samplers.flow_loops import flow_grid
from ddpm_lab.diffusion.samplers.loops import Callback, Denoiser, randn, report
from ddpm_lab.diffusion.samplers.timesteps import DATA_T, ddpm_grid
from ddpm_lab.errors import UserError

Tensor = torch.Tensor


def consistency_grid(diffusion, steps: int, spacing: str = "trailing", shift: float | None = None,
                     times: Sequence | None = None, **_) -> list:
    """The times f is applied at, then the data end: `times` when given (`check_times`), else the
    DDIM grid of `steps` (DDPM) or the flow grid."""
    flow = isinstance(diffusion, FlowMatching)
    if times is not None:
        return [*check_times(diffusion, times), 0.0 if flow else DATA_T]
    if flow:
        return flow_grid(diffusion, steps, shift=shift)
    return ddpm_grid(diffusion, steps, spacing)


def check_times(diffusion, times: Sequence) -> list:
    """`sampler.times`: strictly decreasing timesteps in [1, T - 1] (DDPM) or flow times in (0, 1]."""
    flow = isinstance(diffusion, FlowMatching)
    allowed = "flow times in (0, 1]" if flow else f"integer timesteps in [1, {diffusion.num_steps - 1}]"

    def valid(v) -> bool:
        if isinstance(v, bool):
            return False
        return isinstance(v, (int, float)) and 0 < v <= 1 if flow else isinstance(v, int) and 1 <= v < diffusion.num_steps

    values = list(times) if isinstance(times, Sequence) and not isinstance(times, str) else []
    if not values or not all(map(valid, values)) or any(a <= b for a, b in zip(values, values[1:])):
        raise UserError(f"sampler.times={times!r} must be a non-empty list of strictly decreasing {allowed}")
    return [float(v) for v in values] if flow else values


def sample_consistency(model: Denoiser, x: Tensor, timesteps: Sequence, diffusion, *,
                       generator: torch.Generator | None = None, callback: Callback | None = None,
                       clip_x0: bool = False, **_) -> Tensor:
    """Multistep consistency sampling: len(timesteps) - 1 network calls."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    z, out = x, x
    for i, t in enumerate(timesteps[:-1]):
        tt = torch.full((x.shape[0],), t, device=x.device,
                        dtype=dtype if isinstance(diffusion, FlowMatching) else torch.long)
        if i:
            z = renoise(diffusion, out, tt, randn(x.shape, generator, x.device, x.dtype))
        out = consistency_fn(diffusion, model(z, tt), z, tt)
        if clip_x0:
            out = out.clamp(-1.0, 1.0)
        report(callback, i + 1, timesteps[i + 1], out)
    return out
