"""Consistency distillation (Song et al. 2023), in plain PyTorch, on a DDPM or a flow process.

A consistency function maps any state of an ODE trajectory to the trajectory's end at the smallest
time eps_min. In the variance-exploding coordinates of z_t = alpha_t x_0 + sigma_t eps,
x~ = z_t / alpha_t and sigma~ = sigma_t / alpha_t, it is parametrised (Sec. 3, Eq. 5) as
    f(x~, sigma~) = c_skip(sigma~) x~ + c_out(sigma~) F(z_t, t),
so that f(x~, sigma~_min) = x~ exactly (the boundary condition: c_skip = 1, c_out = 0 there). Here F
is the network's x0 prediction, and the student starts as a copy of the teacher, so we take
    c_skip = sigma_d^2 / (k^2 (sigma~ - sigma~_min)^2 + sigma_d^2),   c_out = 1 - c_skip,
a blend of the identity and the teacher's denoiser: Song et al.'s c_skip with the time scaled by k
(latent consistency models' `timestep_scaling`, Luo et al. 2023), and c_out = 1 - c_skip because F
is an x0 prediction rather than Song et al.'s preconditioned raw output (their c_skip + c_out
exceeds 1, which makes a copied teacher overshoot x0 by up to 40%). The copied teacher's f is then
its denoiser plus c_skip (x~ - x0_hat) = c_skip sigma~ eps_hat, at most (sigma_d / (2 k) + sigma~_min)
times the predicted noise.
sigma_d = 0.5, k = BOUNDARY_SCALE = 10. eps_min is timestep 0 (DDPM) or flow time S_MIN.

Consistency distillation (Algorithm 2): on a grid t_1 = eps_min < ... < t_N, one teacher ODE step
(DDIM / Euler) from z_{t_{n+1}} gives z^_{t_n}; the loss is d(f_theta(z_{t_{n+1}}), f_theta-(z^_{t_n}))
with theta- an EMA of theta (decay mu) and d the pseudo-Huber metric
d(x, y) = sqrt(|x - y|^2 + c^2) - c (Song & Dhariwal 2023, c = 0.00054 sqrt(dim)).
Sampling (Algorithm 1): x = f(z_T, T); then for each later time tau, z = alpha_tau x + sigma_tau eps,
x = f(z, tau).
"""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ddpm_lab.diffusion.distillation import Process, alpha_sigma, rows
from ddpm_lab.diffusion.flow import FlowMatching

Tensor = torch.Tensor
SIGMA_DATA = 0.5
BOUNDARY_SCALE = 10.0    # k: how fast f leaves the identity above eps_min (in sigma~)
S_MIN = 0.01             # eps_min of a flow process (flow time); DDPM's is timestep 0


def min_time(process: Process) -> float | int:
    """eps_min: the time at which f is the identity."""
    return S_MIN if isinstance(process, FlowMatching) else 0


def skip_out_terms(process: Process, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip x~, c_skip, c_out) at per-sample times t, written with alpha in the numerators so that
    they stay finite at alpha = 0 (zero terminal SNR, flow time 1: sigma~ = inf, c_skip = 0,
    c_out = 1); exactly (x~, 1, 0) at eps_min. With a = alpha_t and n = k (sigma_t - sigma~_min a)
    (= a k (sigma~ - sigma~_min)): c_skip = sigma_d^2 a^2 / (n^2 + sigma_d^2 a^2), c_out = 1 - c_skip."""
    alpha, sigma = alpha_sigma(process, t, z)
    t_min = torch.full_like(t, min_time(process))
    alpha_min, sigma_min = alpha_sigma(process, t_min, z)
    at_min = rows(t == t_min, z).bool()
    n = torch.where(at_min, torch.zeros_like(sigma), BOUNDARY_SCALE * (sigma - (sigma_min / alpha_min) * alpha))
    d2 = n ** 2 + SIGMA_DATA ** 2 * alpha ** 2
    skip_x = torch.where(at_min, z / alpha, SIGMA_DATA ** 2 * alpha * z / d2)
    c_skip = torch.where(at_min, torch.ones_like(d2), SIGMA_DATA ** 2 * alpha ** 2 / d2)
    return skip_x, c_skip, 1 - c_skip


def skip_out(process: Process, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) at per-sample times t: 1 and 0 at eps_min."""
    _, c_skip, c_out = skip_out_terms(process, t, like)
    return c_skip, c_out


def consistency_fn(process: Process, output: Tensor, z: Tensor, t: Tensor) -> Tensor:
    """f(x~, sigma~) = c_skip x~ + c_out x0_hat from a network output of the process's prediction
    type at (z, t), z in the process's own coordinates."""
    tt = rows(t, z) if isinstance(process, FlowMatching) else t
    x0, _ = process.predict_x0_eps(output, z, tt)
    skip_x, _, c_out = skip_out_terms(process, t, z)
    return skip_x + c_out * x0


def training_grid(grid: Tensor, process: Process) -> Tensor:
    """The discretisation t_N > ... > t_1 = eps_min: a sampler grid with its data end moved to eps_min."""
    out = grid.clone()
    out[-1] = min_time(process)
    return out


def pseudo_huber(x: Tensor, y: Tensor, c: float | None = None) -> Tensor:
    """sqrt(|x - y|^2 + c^2) - c per example (|.| over all dimensions); c = 0.00054 sqrt(dim) when None."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    sq = (x.to(dtype) - y.to(dtype)).pow(2).flatten(1).sum(1)
    c = 0.00054 * math.sqrt(x[0].numel()) if c is None else c
    return (sq + c * c).sqrt() - c


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, mu: float) -> None:
    """theta- <- mu theta- + (1 - mu) theta (the target network, Algorithm 2), with torch's foreach
    EMA update (torch.optim.swa_utils.get_ema_multi_avg_fn, as the EMA callback uses)."""
    get_ema_multi_avg_fn(mu)(list(target.parameters()), [p.detach() for p in online.parameters()], None)


def renoise(process: Process, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """z_t = alpha_t x0 + sigma_t eps: the multistep sampler's step back up to time t."""
    alpha, sigma = alpha_sigma(process, t, x0)
    return alpha * x0 + sigma * noise
