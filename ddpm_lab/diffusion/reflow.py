"""Reflow (Liu et al. 2022, "Flow straight and fast", Sec. 2.2-2.3), in plain PyTorch.

A flow teacher's ODE couples each noise eps with the sample x_1 it carries it to. Reflow draws
these pairs once (deterministically from a seed) and trains a flow on the straight path between
them, x_s = (1 - s) x_1 + s eps with target velocity eps - x_1: the new flow's paths are straighter,
so few Euler steps (one, at the end) follow them. (Here x_1 is the data end: our flow time runs
from s = 1, noise, to s = 0.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.samplers.sampling import sample

Tensor = torch.Tensor


@torch.no_grad()
def generate_pairs(model_fn: Callable, flow: FlowMatching, shape: Sequence[int], num: int, seed: int,
                   sampler: str = "flow_euler", steps: int = 32, batch_size: int = 250, cond: Tensor | None = None,
                   guidance_scale: float = 1.0, clip_x0: bool = False,
                   device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(noise, x_1): `num` noises drawn from `seed` and the teacher's ODE samples from them (CPU)."""
    noise = torch.randn((num, *shape), generator=torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, num, batch_size):
        rows = slice(start, min(start + batch_size, num))
        c = None if cond is None else cond[rows].to(device)
        out.append(sample(model_fn, noise[rows].shape, flow, sampler=sampler, steps=steps, x_T=noise[rows],
                          cond=c, guidance_scale=guidance_scale, clip_x0=clip_x0, device=device).cpu())
    return noise, torch.cat(out)


def reflow_losses(flow: FlowMatching, model_fn: Callable, noise: Tensor, x1: Tensor, cond=None) -> Tensor:
    """Per-example flow-matching loss on the straight path between the pair (noise, x_1)."""
    return flow.training_losses(model_fn, x1, noise=noise, cond=cond)
