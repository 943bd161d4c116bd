"""The consistency sampler (Song et al. 2023, Algorithm 1): one step x = f(z_T, T), and for each
later time tau of the grid z = alpha_tau x + sigma_tau eps, x = f(z, tau) (diffusion/consistency.py).

Its grid is the DDIM grid (DDPM: `ddpm_grid` with the sampler's spacing; flow: `flow_grid`); the
states reported are the re-noised z at each time and the result x at the data end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm_lab.diffusion.consistency import consistency_fn, renoise
from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.samplers.flow_loops import flow_grid
from ddpm_lab.diffusion.samplers.loops import Callback, Denoiser, randn, report
from ddpm_lab.diffusion.samplers.timesteps import ddpm_grid

Tensor = torch.Tensor


def consistency_grid(diffusion, steps: int, spacing: str = "trailing", shift: float | None = None, **_) -> list:
    """The times f is applied at, then the data end: the DDIM grid (DDPM) or the flow grid."""
    if isinstance(diffusion, FlowMatching):
        return flow_grid(diffusion, steps, shift=shift)
    return ddpm_grid(diffusion, steps, spacing)


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
