"""SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
Differential Equations"), Algorithm 1 in plain PyTorch:

    x(t0) ~ q(x_t0 | guide)             perturb the guide to the intermediate time t0 in (0, 1]
    x(0)  = reverse process from t0      any of our samplers, on the part of its grid below t0

Small t0 keeps the guide (faithfulness), t0 = 1 ignores it (realism); the paper's trade-off lies
in between (Sec. 4, Fig. 3). On a DDPM process t0 is the timestep fraction (VP-SDE time), on a
flow-matching process the flow time s0 = t0 (samplers/start.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers.loops import randn
from ddpm_lab.diffusion.samplers.sampling import sample
from ddpm_lab.diffusion.samplers.start import noise_to, start_time

Tensor = torch.Tensor


@torch.no_grad()
def sdedit(model_fn: Callable, guide: Tensor, diffusion: GaussianDiffusion | FlowMatching, t0: float,
           generator: torch.Generator | None = None, noise: Tensor | None = None, **sample_options: Any) -> Tensor:
    """Edit `guide` (a batch in the model's space) at strength `t0`: noise it to t0 with `noise`
    (None: drawn from `generator`), then run `sample(model_fn, ..., start=t0)` with
    `sample_options` (sampler, steps, eta, cond, guidance_scale, ...). At a t0 below the first
    timestep (DDPM) the guide comes back unchanged."""
    if noise is None:
        noise = randn(guide.shape, generator, guide.device, guide.dtype)
    x_start = noise_to(diffusion, guide, start_time(diffusion, t0), noise.to(guide))
    sample_options.setdefault("dtype", guide.dtype)
    return sample(model_fn, guide.shape, diffusion, x_T=x_start, start=t0, generator=generator, **sample_options)
