"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; Esser et al. 2024 = SD3).

Path (diffusers' and Wan's convention): x_s = (1 - s) x_0 + s eps, s in [0, 1], s = 1 is pure
noise and s = 0 the data. The network sees the time `time_scale * s` (1000 s, a float) and
predicts one of
    v   = dx_s/ds = eps - x_0          (the velocity, SD3 Eq. 2-3)
    x0  = x_s - s v
    eps = x_s + (1 - s) v
    edm = F in x0 = c_skip x_s + c_out F (EDM's preconditioning, Karras et al. 2022 Table 1, on
          this path: see `edm_scalings`), x0 prediction at high noise and a skip of x_s at low noise
Training times: s ~ U[0, 1) or logit-normal s = sigmoid(n), n ~ N(logit_mean, logit_std^2) (SD3
Sec. 3.1), then the shift s' = k s / (1 + (k - 1) s) (SD3 Sec. 5.3.2; Wan's `shift`), k > 1 moving
time towards the noise.

The map to DDPM: a flow state is a scaled DDPM state with the same (x_0, eps). For DDPM's abar,
    s   = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar)),   abar = (1 - s)^2 / ((1 - s)^2 + s^2),
    x_t = x_s / sqrt((1 - s)^2 + s^2) = (sqrt(abar) + sqrt(1 - abar)) x_s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm_lab.diffusion.process import per_example_mse
from ddpm_lab.errors import UserError, choice_error

Tensor = torch.Tensor
Time = Tensor | float
ModelFn = Callable[[Tensor, Tensor, object], Tensor]

PREDICTIONS = ("v", "x0", "eps", "edm")
TIME_SAMPLINGS = ("uniform", "logit_normal")
LOSS_WEIGHTINGS = ("uniform", "cosmap", "velocity")
WEIGHT_FLOOR = 1e-3     # s (and 1 - s) floor in the x0 / eps loss weights: a drawn s = 0 stays finite
VELOCITY_FLOOR = 0.05   # s (and 1 - s) floor of the "velocity" weighting (JiT's t_eps)


# ----- the map to DDPM ---------------------------------------------------------------------------
def abar_of_s(s: Time) -> Time:
    """DDPM's abar at flow time s: (1 - s)^2 / ((1 - s)^2 + s^2) (the SNR (1 - s)^2 / s^2)."""
    return (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)


def s_of_abar(abar: Time) -> Time:
    """Flow time of DDPM's abar: sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar))."""
    return (1 - abar) ** 0.5 / (abar ** 0.5 + (1 - abar) ** 0.5)


def ddpm_x_scale(s: Time) -> Time:
    """x_t = ddpm_x_scale(s) * x_s, the DDPM state of a flow state: 1 / sqrt((1 - s)^2 + s^2)
    (= sqrt(abar) + sqrt(1 - abar))."""
    return ((1 - s) ** 2 + s ** 2) ** -0.5


# ----- EDM's preconditioning on the flow path ---------------------------------------------------
def edm_scalings(s: Time, sigma_data: float) -> tuple[Time, Time]:
    """(c_skip, c_out) of x0_hat = c_skip x_s + c_out F: EDM's (Karras et al. 2022, Table 1)
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2) for x = x0 + sigma eps,
    which is x_s / (1 - s) with sigma = s / (1 - s). On x_s, with D = s^2 + sd^2 (1 - s)^2 (the variance
    of x_s for data of second moment sd^2):
        c_skip = sd^2 (1 - s) / D,    c_out = s sd / sqrt(D).
    s = 0 gives x0_hat = x_s, s = 1 gives x0_hat = sd F; F's target has unit variance at every s."""
    d = s ** 2 + sigma_data ** 2 * (1 - s) ** 2
    return sigma_data ** 2 * (1 - s) / d, s * sigma_data / d ** 0.5


# ----- time ------------------------------------------------------------------------------------
def shift_time(s: Time, shift: float) -> Time:
    """The time shift k s / (1 + (k - 1) s) (SD3 Sec. 5.3.2's t_m = alpha t_n / (1 + (alpha - 1) t_n);
    Wan's `shift`): k = 1 is the identity, k > 1 spends more time near the noise."""
    return shift * s / (1 + (shift - 1) * s)


def check_shift(shift: object, key: str) -> None:
    """`key` (diffusion.shift, sampler.shift) is a positive number."""
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise UserError(f"{key}={shift!r} must be a positive number (1 = no shift, > 1 = more time near the noise)")


def check_sampleable(prediction: str) -> None:
    """Samplers start at s = 1, where x_s = eps: an eps prediction says nothing about x_0 there
    (v = (eps - x_s) / (1 - s) is 0/0), as DDPM's eps at zero terminal SNR."""
    if prediction == "eps":
        raise UserError("diffusion.prediction=eps cannot be sampled with flow matching: at s = 1 (pure noise) "
                        "an eps prediction says nothing about x_0; use diffusion.prediction=v, x0 or edm")


def per_row(s: Time, like: Tensor) -> Time:
    """s as a Python float, or a 0-d / (B,) tensor shaped to broadcast against `like` (batch
    first) in like's dtype and device."""
    if not isinstance(s, Tensor):
        return float(s)
    s = s.to(device=like.device, dtype=like.dtype)
    return s if s.ndim == 0 else s.reshape(-1, *([1] * (like.ndim - 1)))


class FlowMatching:
    """The flow-matching process: path, prediction conversions, training times and loss."""

    default_sampling_steps: int = 50

    def __init__(self, prediction: str = "v", shift: float = 1.0, time_sampling: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0, loss_weighting: str = "uniform",
                 time_scale: float = 1000.0, sigma_data: float = 0.5):
        if prediction not in PREDICTIONS:
            raise choice_error("diffusion.prediction", prediction, PREDICTIONS)
        if time_sampling not in TIME_SAMPLINGS:
            raise choice_error("diffusion.time_sampling", time_sampling, TIME_SAMPLINGS)
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise choice_error("diffusion.loss_weighting", loss_weighting, LOSS_WEIGHTINGS)
        check_shift(shift, "diffusion.shift")
        if isinstance(logit_std, bool) or not isinstance(logit_std, (int, float)) or not logit_std > 0:
            raise UserError(f"diffusion.logit_std={logit_std!r} must be a positive number")
        if isinstance(logit_mean, bool) or not isinstance(logit_mean, (int, float)) or not math.isfinite(logit_mean):
            raise UserError(f"diffusion.logit_mean={logit_mean!r} must be a number")
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not time_scale > 0:
            raise UserError(f"diffusion.time_scale={time_scale!r} must be a positive number")
        if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not sigma_data > 0 \
                or not math.isfinite(sigma_data):
            raise UserError(f"diffusion.sigma_data={sigma_data!r} must be a positive number (EDM's sigma_data, the data's spread)")
        self.prediction, self.time_sampling, self.loss_weighting = prediction, time_sampling, loss_weighting
        self.shift, self.logit_mean, self.logit_std = float(shift), float(logit_mean), float(logit_std)
        self.time_scale, self.sigma_data = float(time_scale), float(sigma_data)

    def __repr__(self) -> str:
        edm = f", sigma_data={self.sigma_data}" if self.prediction == "edm" else ""
        return (f"FlowMatching(prediction={self.prediction!r}{edm}, shift={self.shift}, time_sampling="
                f"{self.time_sampling!r}, loss_weighting={self.loss_weighting!r})")

    def network_time(self, s: Time) -> Time:
        """The network's time input for flow time s: time_scale * s (1000 s, as diffusers and Wan)."""
        return self.time_scale * s

    # ----- the path ----------------------------------------------------------------------------
    def q_sample(self, x0: Tensor, s: Time, noise: Tensor) -> Tensor:
        """x_s = (1 - s) x_0 + s eps."""
        s = per_row(s, x0)
        return (1 - s) * x0 + s * noise

    def training_target(self, x0: Tensor, noise: Tensor, s: Time) -> Tensor:
        """What the network is trained to output: v = eps - x_0, x_0, eps (s is not needed) or EDM's
        F = (x_0 - c_skip x_s) / c_out = (s x_0 - sd^2 (1 - s) eps) / (sd sqrt(D)), finite at s = 0."""
        if self.prediction == "v":
            return noise - x0
        if self.prediction == "edm":
            s, sd = per_row(s, x0), self.sigma_data
            return (s * x0 - sd ** 2 * (1 - s) * noise) / (sd * (s ** 2 + sd ** 2 * (1 - s) ** 2) ** 0.5)
        return x0 if self.prediction == "x0" else noise

    # ----- conversions (exact inverses; x0 -> v needs s > 0, eps -> v needs s < 1) --------------
    @staticmethod
    def x0_from_v(x_s: Tensor, s: Time, v: Tensor) -> Tensor:
        """x_0 = x_s - s v."""
        return x_s - per_row(s, x_s) * v

    @staticmethod
    def eps_from_v(x_s: Tensor, s: Time, v: Tensor) -> Tensor:
        """eps = x_s + (1 - s) v."""
        return x_s + (1 - per_row(s, x_s)) * v

    @staticmethod
    def v_from_x0(x_s: Tensor, s: Time, x0: Tensor) -> Tensor:
        """v = (x_s - x_0) / s."""
        return (x_s - x0) / per_row(s, x_s)

    @staticmethod
    def v_from_eps(x_s: Tensor, s: Time, eps: Tensor) -> Tensor:
        """v = (eps - x_s) / (1 - s)."""
        return (eps - x_s) / (1 - per_row(s, x_s))

    @staticmethod
    def eps_from_x0(x_s: Tensor, s: Time, x0: Tensor) -> Tensor:
        """eps = (x_s - (1 - s) x_0) / s."""
        s = per_row(s, x_s)
        return (x_s - (1 - s) * x0) / s

    @staticmethod
    def x0_from_eps(x_s: Tensor, s: Time, eps: Tensor) -> Tensor:
        """x_0 = (x_s - s eps) / (1 - s)."""
        s = per_row(s, x_s)
        return (x_s - s * eps) / (1 - s)

    def edm_velocity(self, x_s: Tensor, s: Time, output: Tensor) -> Tensor:
        """v = (x_s - x0_hat) / s for x0_hat = c_skip x_s + c_out F, in the form finite at s = 0:
        v = (s - sd^2 (1 - s)) / D x_s - sd / sqrt(D) F."""
        s, sd = per_row(s, x_s), self.sigma_data
        d = s ** 2 + sd ** 2 * (1 - s) ** 2
        return (s - sd ** 2 * (1 - s)) / d * x_s - sd / d ** 0.5 * output

    def predict_x0_eps(self, output: Tensor, x_s: Tensor, s: Time) -> tuple[Tensor, Tensor]:
        """A model output of this process's prediction type as (x0_hat, eps_hat)."""
        if self.prediction == "edm":
            c_skip, c_out = edm_scalings(per_row(s, x_s), self.sigma_data)
            return c_skip * x_s + c_out * output, self.eps_from_v(x_s, s, self.edm_velocity(x_s, s, output))
        if self.prediction == "v":
            return self.x0_from_v(x_s, s, output), self.eps_from_v(x_s, s, output)
        if self.prediction == "x0":
            return output, self.eps_from_x0(x_s, s, output)
        return self.x0_from_eps(x_s, s, output), output

    def velocity(self, output: Tensor, x_s: Tensor, s: Time) -> Tensor:
        """A model output of this process's prediction type as the velocity v = dx_s/ds."""
        if self.prediction == "v":
            return output
        if self.prediction == "x0":
            return self.v_from_x0(x_s, s, output)
        if self.prediction == "edm":
            return self.edm_velocity(x_s, s, output)
        return self.v_from_eps(x_s, s, output)

    # ----- training ------------------------------------------------------------------------------
    def sample_timesteps(self, batch: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """Training times s (float, (batch,)): uniform or logit-normal (SD3 Sec. 3.1), then shifted."""
        if self.time_sampling == "uniform":
            s = torch.rand(batch, device=device, generator=generator)
        else:
            n = torch.randn(batch, device=device, generator=generator)
            s = torch.sigmoid(self.logit_mean + self.logit_std * n)
        return shift_time(s, self.shift) if self.shift != 1.0 else s

    def loss_weights(self, s: Tensor) -> Tensor:
        """Per-example weight of the squared error in the prediction's own space.

        "cosmap": SD3's cosine-mapped density (Sec. 3.1) as a weight on the velocity error,
        w(s) = 2 / (pi (1 - 2s + 2s^2)) (diffusers' `compute_loss_weighting_for_sd3`); in expectation
        over uniform s the same objective as drawing s from that density. Since
        dv = -dx0 / s = deps / (1 - s), the weight is w for v, w / s^2 for x0 and w / (1 - s)^2 for
        eps, with s and 1 - s floored at WEIGHT_FLOOR.

        "velocity": the squared error of the velocity the output implies, whatever the prediction
        (JiT, Li & He 2025: x0 prediction, v loss): 1 for v, 1 / s^2 for x0, 1 / (1 - s)^2 for eps,
        with s and 1 - s floored at VELOCITY_FLOOR. For an x0 network it weights the error as the
        uniform x0 loss does at high noise and far more at low noise, where that loss barely trains.

        For "edm" (dv = -(c_out / s) dF, c_out / s = sd / sqrt(D), never 0 or infinite) both weights are
        exact, no floor: velocity sd^2 / D, cosmap w sd^2 / D. Its "uniform" is EDM's own weighting
        (the x0 error times 1 / c_out^2).
        """
        if self.loss_weighting == "uniform":
            return torch.ones_like(s)
        if self.prediction == "edm":
            to_v = self.sigma_data ** 2 / (s ** 2 + self.sigma_data ** 2 * (1 - s) ** 2)
            return to_v if self.loss_weighting == "velocity" else to_v * 2 / (math.pi * (1 - 2 * s + 2 * s ** 2))
        if self.loss_weighting == "velocity":
            if self.prediction == "x0":
                return 1 / s.clamp(min=VELOCITY_FLOOR) ** 2
            if self.prediction == "eps":
                return 1 / (1 - s).clamp(min=VELOCITY_FLOOR) ** 2
            return torch.ones_like(s)
        w = 2 / (math.pi * (1 - 2 * s + 2 * s ** 2))
        if self.prediction == "x0":
            return w / s.clamp(min=WEIGHT_FLOOR) ** 2
        if self.prediction == "eps":
            return w / (1 - s).clamp(min=WEIGHT_FLOOR) ** 2
        return w

    def training_losses(self, model_fn: ModelFn, x0: Tensor, t: Tensor | None = None,
                        noise: Tensor | None = None, cond=None) -> Tensor:
        """Per-example loss: mean over dimensions of ||target - model(x_s, time_scale * s, cond)||^2,
        times the loss weight; `t` holds the flow times s (float, (B,); drawn when None)."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], device=x0.device)
        s = t.to(device=x0.device, dtype=torch.promote_types(x0.dtype, torch.float32))
        if noise is None:
            noise = torch.randn_like(x0)
        x_s = self.q_sample(x0, s, noise)
        output = model_fn(x_s, self.network_time(s), cond)
        weights = None if self.loss_weighting == "uniform" else self.loss_weights(s)
        return per_example_mse(output, self.training_target(x0, noise, s), weights)
