"""One reverse step x_t -> x_{t_prev} of each sampler, on any decreasing pair of timesteps.

- DDPM (Ho et al. 2020, Algorithm 2) with the posterior of Eq. 7, respaced as in improved DDPM
  (Nichol & Dhariwal 2021, App. B: beta_t = 1 - abar_t / abar_prev). Variance "fixed_small" is the
  posterior beta~_t, "fixed_large" is beta_t (DDPM Sec. 3.2: both give similar results).
- DDIM (Song et al. 2021, Eq. 12) with eta (0 deterministic, 1 DDPM-like), sigma from Eq. 16.
- DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), its ODE and its SDE form.

The step after the last one goes to t = -1, where abar = 1. Ours rather than diffusers' schedulers
(which the "diffusers" sampler runs): each step is a function of (x, prediction, t, t_prev) with no
scheduler state, for any pair of timesteps and any dtype; tests/test_samplers_vs_diffusers.py
matches diffusers' DDIM and DPM-Solver++ trajectories.
"""

from __future__ import annotations

import math

import torch

from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.errors import choice_error

Tensor = torch.Tensor

VARIANCES = ("fixed_small", "fixed_large")


def check_variance(variance: object) -> None:
    if variance not in VARIANCES:
        raise choice_error("sampler.variance", variance, VARIANCES)


def abar_at(diffusion: GaussianDiffusion, t: int) -> float:
    """abar_t, with abar = 1 at t = -1 (the data)."""
    return 1.0 if t < 0 else float(diffusion.alphas_cumprod[t])


def half_log_snr(abar: float) -> float:
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2 (+inf at abar = 1, -inf at 0, where
    the update's limits are the first-order DDIM step)."""
    if abar >= 1.0:
        return math.inf
    return -math.inf if abar <= 0.0 else 0.5 * math.log(abar / (1.0 - abar))


def ddpm_step(diffusion: GaussianDiffusion, output: Tensor, x_t: Tensor, t: int, t_prev: int,
              noise: Tensor | None, variance: str = "fixed_small", clip_x0: bool = False) -> Tensor:
    """x_{t_prev} ~ p(x_{t_prev} | x_t): posterior mean (Eq. 7) at x0_hat plus sigma * noise."""
    check_variance(variance)
    abar_t, abar_prev = abar_at(diffusion, t), abar_at(diffusion, t_prev)
    alpha = abar_t / abar_prev           # the respaced alpha_t
    beta = 1.0 - alpha
    x0, _ = diffusion.predict_x0_eps(output, x_t, t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    mean = (abar_prev ** 0.5 * beta / (1 - abar_t)) * x0 + (alpha ** 0.5 * (1 - abar_prev) / (1 - abar_t)) * x_t
    if noise is None or t_prev < 0:
        return mean
    var = max((1 - abar_prev) / (1 - abar_t) * beta, 1e-20) if variance == "fixed_small" else beta
    return mean + var ** 0.5 * noise


def ddim_step(diffusion: GaussianDiffusion, output: Tensor, x_t: Tensor, t: int, t_prev: int,
              noise: Tensor | None, eta: float = 0.0, clip_x0: bool = False,
              use_clipped_model_output: bool = False) -> Tensor:
    """DDIM update (Song et al. 2021, Eq. 12), sigma_t(eta) from Eq. 16.

    With `clip_x0` the x0 prediction is clipped to [-1, 1]; `use_clipped_model_output` then re-derives
    eps from the clipped x0, eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) (diffusers'
    DDIMScheduler option of that name), so that at eta = 0 x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    still holds and the step stays on the line through x_t and the clipped x0. Without it the
    clipped x0 is paired with the unclipped eps (diffusers' default)."""
    abar_t, abar_prev = abar_at(diffusion, t), abar_at(diffusion, t_prev)
    x0, eps = diffusion.predict_x0_eps(output, x_t, t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        if use_clipped_model_output:
            eps = (x_t - abar_t ** 0.5 * x0) / (1 - abar_t) ** 0.5
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) ** 0.5
    x_prev = abar_prev ** 0.5 * x0 + max(1 - abar_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def dpmpp_2m_step(diffusion: GaussianDiffusion, output: Tensor, x_t: Tensor, t: int, t_prev: int,
                  last: tuple[Tensor, int] | None, clip_x0: bool = False,
                  noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One DPM-Solver++(2M) step t -> t_prev; returns (x_{t_prev}, x0_hat at t).

    `last` is (x0_hat, t) of the previous step, or None for a first-order (DDIM-like) step. With
    h = lambda_prev - lambda_t and D = x0_hat (first order) or x0_hat + (x0_hat - x0_last) / (2 r),
    r = (lambda_t - lambda_last) / h (the midpoint form), the ODE step (noise None) is
        x_{t_prev} = (sigma_prev / sigma_t) x_t - alpha_prev (e^{-h} - 1) D
    and the SDE step (SDE-DPM-Solver++(2M); noise ~ N(0, I)) is
        x_{t_prev} = (sigma_prev / sigma_t) e^{-h} x_t + alpha_prev (1 - e^{-2h}) D
                     + sigma_prev sqrt(1 - e^{-2h}) noise.
    """
    x0, _ = diffusion.predict_x0_eps(output, x_t, t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    abar_t, abar_prev = abar_at(diffusion, t), abar_at(diffusion, t_prev)
    if abar_prev >= 1.0:          # the final step to sigma = 0 lands on the data prediction
        return x0, x0
    lam_t, lam_prev = half_log_snr(abar_t), half_log_snr(abar_prev)
    h = lam_prev - lam_t
    d = x0
    if last is not None:
        x0_last, t_last = last
        r = (lam_t - half_log_snr(abar_at(diffusion, t_last))) / h
        d = x0 + (x0 - x0_last) / (2 * r)
    ratio = ((1 - abar_prev) / (1 - abar_t)) ** 0.5
    if noise is None:
        return ratio * x_t - abar_prev ** 0.5 * math.expm1(-h) * d, x0
    keep = -math.expm1(-2 * h)                   # 1 - e^{-2h}
    x_prev = ratio * math.exp(-h) * x_t + abar_prev ** 0.5 * keep * d + ((1 - abar_prev) * keep) ** 0.5 * noise
    return x_prev, x0
