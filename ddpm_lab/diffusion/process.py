"""The Gaussian diffusion process of DDPM (Ho et al. 2020), in plain PyTorch.

Timesteps are 0-based int64 tensors: index t here is the lecture's t + 1. Schedule buffers are
float64 and are cast to the data's dtype and device when gathered.

Equations (DDPM paper numbering):
- forward step   q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)          (Eq. 2)
- closed form    q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I)            (Eq. 4)
- posterior      q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)                       (Eq. 6-7)
- loss           || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2 (Eq. 14)
The network may predict eps, x0 or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(Salimans & Ho 2022); the conversions below are exact inverses of each other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lab.diffusion.schedules import NoiseSchedule
from ddpm_lab.errors import UserError, choice_error

Tensor = torch.Tensor
ModelFn = Callable[[Tensor, Tensor, object], Tensor]

PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("uniform", "min_snr")


def gather(values: Tensor, t: Tensor | int, like: Tensor) -> Tensor | float:
    """values[t] reshaped to broadcast against `like` (batch first), in like's dtype/device.

    A Python int t (one timestep for the whole batch, as in the samplers) gives a Python float:
    no device copy or gather in the sampling loop.
    """
    if isinstance(t, int):
        return float(values[t])
    values, t = values.to(like.device), t.to(like.device)
    if t.is_floating_point():     # fractional timesteps (e.g. diffusers' Euler): linear interpolation
        lo = t.floor().long().clamp(0, len(values) - 1)
        hi = (lo + 1).clamp(max=len(values) - 1)
        w = (t - lo).to(values.dtype)
        out = values[lo] * (1 - w) + values[hi] * w
    else:
        out = values[t]
    return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def per_example_mse(output: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over dimensions of (output - target)^2 for each example, times its weight (None: 1);
    in float32 at least, so bf16/fp16 outputs give an fp32 loss."""
    dtype = torch.promote_types(output.dtype, torch.float32)
    loss = (output.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(dim=1)
    return loss if weights is None else loss * weights.to(dtype)


class GaussianDiffusion:
    """Forward process, posterior, parameterisation conversions and the training loss."""

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps",
                 loss_weighting: str = "uniform", min_snr_gamma: float = 5.0):
        if prediction not in PREDICTIONS:
            raise choice_error("diffusion.prediction", prediction, PREDICTIONS)
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise choice_error("diffusion.loss_weighting", loss_weighting, LOSS_WEIGHTINGS)
        if prediction == "eps" and float(schedule.alphas_cumprod[-1]) == 0.0:
            raise UserError("schedule.zero_terminal_snr=true needs diffusion.prediction=v (or x0): "
                            "at zero SNR an eps prediction says nothing about x_0")
        self.schedule = schedule
        self.prediction = prediction
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        s = schedule
        self.betas = s.betas
        self.alphas_cumprod = s.alphas_cumprod
        self.alphas_cumprod_prev = torch.cat([s.alphas_cumprod.new_ones(1), s.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = s.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - s.alphas_cumprod).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0), Eq. 7: beta~_t and the two mean coefficients.
        self.posterior_variance = s.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - s.alphas_cumprod)
        self.posterior_mean_coef_x0 = s.betas * self.alphas_cumprod_prev.sqrt() / (1.0 - s.alphas_cumprod)
        self.posterior_mean_coef_xt = (1.0 - self.alphas_cumprod_prev) * s.alphas.sqrt() / (1.0 - s.alphas_cumprod)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def default_sampling_steps(self) -> int:
        """`sample`'s steps when none are given: all T (DDPM Algorithm 2)."""
        return self.schedule.num_steps

    # ----- forward process -------------------------------------------------------------------
    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One forward step x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (Eq. 2)."""
        beta = gather(self.betas, t, x_prev)
        return (1.0 - beta) ** 0.5 * x_prev + beta ** 0.5 * noise

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean sqrt(abar_t) x_0 and variance (1 - abar_t) of q(x_t | x_0) (Eq. 4)."""
        mean = gather(self.sqrt_alphas_cumprod, t, x0) * x0
        var = gather(1.0 - self.alphas_cumprod, t, x0).expand_as(x0)
        return mean, var

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Eq. 4)."""
        return gather(self.sqrt_alphas_cumprod, t, x0) * x0 + gather(
            self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean mu~_t(x_t, x_0) and variance beta~_t of q(x_{t-1} | x_t, x_0) (Eq. 6-7)."""
        mean = gather(self.posterior_mean_coef_x0, t, x_t) * x0 + gather(
            self.posterior_mean_coef_xt, t, x_t) * x_t
        return mean, gather(self.posterior_variance, t, x_t).expand_as(x_t)

    # ----- parameterisations -------------------------------------------------------------------
    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Invert Eq. 4: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (x_t - gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / gather(
            self.sqrt_alphas_cumprod, t, x_t)

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return (x_t - gather(self.sqrt_alphas_cumprod, t, x_t) * x0) / gather(
            self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def v_from_x0_eps(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, Sec. 4)."""
        return gather(self.sqrt_alphas_cumprod, t, x0) * eps - gather(
            self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return gather(self.sqrt_alphas_cumprod, t, x_t) * x_t - gather(
            self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def predict_x0_eps(self, output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Turn a model output of this diffusion's prediction type into (x0_hat, eps_hat)."""
        if self.prediction == "eps":
            return self.x0_from_eps(x_t, t, output), output
        if self.prediction == "x0":
            return output, self.eps_from_x0(x_t, t, output)
        x0 = self.x0_from_v(x_t, t, output)
        return x0, self.eps_from_x0(x_t, t, x0)

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network is trained to output for (x0, noise, t)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.v_from_x0_eps(x0, noise, t)

    # ----- training ---------------------------------------------------------------------------
    def loss_weights(self, t: Tensor) -> Tensor:
        """Per-example weight of the squared error in the prediction's own space.

        min_snr (Hang et al. 2023): weight min(SNR, gamma) on the x_0 error, which in the space of
        each prediction is min(SNR, gamma)/SNR for eps, min(SNR, gamma) for x0 and
        min(SNR, gamma)/(SNR + 1) for v (at SNR = 0 the eps weight is its limit, 1).
        """
        if self.loss_weighting == "uniform":
            return torch.ones(t.shape, dtype=torch.float64, device=t.device)
        snr = self.schedule.snr().to(t.device)[t]
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "eps":
            return torch.where(snr > 0, clipped / snr.clamp(min=1e-20), torch.ones_like(snr))
        if self.prediction == "x0":
            return clipped
        return clipped / (snr + 1)

    def sample_timesteps(self, batch: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """t ~ Uniform({0, ..., T-1}) (Algorithm 1, line 3, 0-based)."""
        return torch.randint(0, self.num_steps, (batch,), device=device, generator=generator)

    def training_losses(self, model_fn: ModelFn, x0: Tensor, t: Tensor | None = None,
                        noise: Tensor | None = None, cond=None) -> Tensor:
        """Per-example loss of Algorithm 1: mean over dimensions of ||target - model(x_t, t)||^2,
        times the loss weight of t (1 for "uniform")."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        output = model_fn(x_t, t, cond)
        weights = None if self.loss_weighting == "uniform" else self.loss_weights(t)
        return per_example_mse(output, self.training_target(x0, noise, t), weights)
