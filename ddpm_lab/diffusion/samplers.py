"""Samplers: the reverse process x_T -> x_0 for any `model_fn(x_t, t, cond)`.

- "ddpm": ancestral sampling, Algorithm 2 of DDPM (Ho et al. 2020) written with the posterior of
  Eq. 7, on any decreasing sub-sequence of timesteps (respaced as in improved DDPM, Nichol &
  Dhariwal 2021, App. B: beta_t = 1 - abar_t / abar_prev). Variance "fixed_small" is the posterior
  beta~_t, "fixed_large" is beta_t (DDPM Sec. 3.2: both give similar results).
- "ddim": DDIM (Song et al. 2021, Eq. 12) with eta (0 deterministic, 1 DDPM-like).
- "diffusers": any diffusers scheduler class (DDIM, DPMSolverMultistep, EulerDiscrete, Heun,
  UniPCMultistep, ...) built from this schedule's betas and prediction type, so the two agree.
- "dpmpp_2m": DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2): second-order multistep
  in the data prediction x0 and the log-SNR lambda_t = log(alpha_t / sigma_t); first order on the
  first step and on the last step (to sigma = 0), as diffusers' DPMSolverMultistepScheduler does.
- "dpmpp_2m_sde": the same multistep data prediction in the exponential integrator of the reverse
  SDE instead of the probability-flow ODE (SDE-DPM-Solver++(2M), diffusers' algorithm_type
  "sde-dpmsolver++"): fresh noise at every step, like DDPM, which corrects the model's errors where
  the deterministic solvers carry them along (Karras et al. 2022, Sec. 4).

Samplers never assume a network, an image shape or a dtype: (N, 2) float64 points work too.
Timesteps are 0-based; the step after the last one is t = -1, where abar = 1.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ddpm_lab.diffusion.guidance import guided_model_fn
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.errors import UserError, choice_error

Tensor = torch.Tensor

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "diffusers")
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SPACINGS = ("leading", "trailing", "linspace")
VARIANCES = ("fixed_small", "fixed_large")


def make_timesteps(num_train_steps: int, steps: int, spacing: str = "leading") -> Tensor:
    """The decreasing int64 timesteps a sampler visits (diffusers' `timestep_spacing` names)."""
    if not isinstance(steps, int) or not 1 <= steps <= num_train_steps:
        raise UserError(f"sampler.steps={steps!r} must be an integer in [1, {num_train_steps}] "
                        f"(the schedule's num_steps)")
    if spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64) * (num_train_steps // steps)
    elif spacing == "trailing":
        ts = torch.arange(num_train_steps, 0, -num_train_steps / steps, dtype=torch.float64).round() - 1
        ts = ts.flip(0)
    elif spacing == "linspace":
        ts = torch.linspace(0, num_train_steps - 1, steps, dtype=torch.float64)
    else:
        raise choice_error("sampler.spacing", spacing, SPACINGS)
    return ts.round().long().flip(0)


def dpm_timesteps(num_train_steps: int, steps: int, spacing: str = "linspace") -> Tensor:
    """Timesteps of diffusers' DPMSolverMultistepScheduler: steps + 1 points with the last dropped,
    so the solver ends with a step from the smallest timestep to sigma = 0."""
    if not isinstance(steps, int) or not 1 <= steps <= num_train_steps:
        raise UserError(f"sampler.steps={steps!r} must be an integer in [1, {num_train_steps}] "
                        f"(the schedule's num_steps)")
    if spacing == "linspace":
        ts = torch.linspace(0, num_train_steps - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1]
    elif spacing == "leading":
        ts = (torch.arange(steps + 1, dtype=torch.float64) * (num_train_steps // (steps + 1))).round().flip(0)[:-1]
    elif spacing == "trailing":
        return make_timesteps(num_train_steps, steps, spacing)
    else:
        raise choice_error("sampler.spacing", spacing, SPACINGS)
    return ts.long()


def _abar(diffusion: GaussianDiffusion, t: int) -> float:
    return 1.0 if t < 0 else float(diffusion.alphas_cumprod[t])


def ddpm_step(diffusion: GaussianDiffusion, output: Tensor, x_t: Tensor, t: int, t_prev: int,
              noise: Tensor | None, variance: str = "fixed_small", clip_x0: bool = False) -> Tensor:
    """x_{t_prev} ~ p(x_{t_prev} | x_t): posterior mean (Eq. 7) at x0_hat plus sigma * noise."""
    abar_t, abar_prev = _abar(diffusion, t), _abar(diffusion, t_prev)
    alpha = abar_t / abar_prev           # the respaced alpha_t
    beta = 1.0 - alpha
    x0, _ = diffusion.predict_x0_eps(output, x_t, t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    mean = (abar_prev ** 0.5 * beta / (1 - abar_t)) * x0 + (alpha ** 0.5 * (1 - abar_prev) / (1 - abar_t)) * x_t
    if noise is None or t_prev < 0:
        return mean
    if variance == "fixed_small":
        var = max((1 - abar_prev) / (1 - abar_t) * beta, 1e-20)
    elif variance == "fixed_large":
        var = beta
    else:
        raise choice_error("sampler.variance", variance, VARIANCES)
    return mean + var ** 0.5 * noise


def ddim_step(diffusion: GaussianDiffusion, output: Tensor, x_t: Tensor, t: int, t_prev: int,
              noise: Tensor | None, eta: float = 0.0, clip_x0: bool = False) -> Tensor:
    """DDIM update (Song et al. 2021, Eq. 12), sigma_t(eta) from Eq. 16."""
    abar_t, abar_prev = _abar(diffusion, t), _abar(diffusion, t_prev)
    x0, eps = diffusion.predict_x0_eps(output, x_t, t)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) ** 0.5
    x_prev = abar_prev ** 0.5 * x0 + max(1 - abar_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def _half_log_snr(abar: float) -> float:
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2 (+inf at abar = 1, -inf at 0, where
    the update's limits are the first-order DDIM step)."""
    if abar >= 1.0:
        return math.inf
    return -math.inf if abar <= 0.0 else 0.5 * math.log(abar / (1.0 - abar))


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
    abar_t, abar_prev = _abar(diffusion, t), _abar(diffusion, t_prev)
    if abar_prev >= 1.0:          # the final step to sigma = 0 lands on the data prediction
        return x0, x0
    lam_t, lam_prev = _half_log_snr(abar_t), _half_log_snr(abar_prev)
    h = lam_prev - lam_t
    d = x0
    if last is not None:
        x0_last, t_last = last
        r = (lam_t - _half_log_snr(_abar(diffusion, t_last))) / h
        d = x0 + (x0 - x0_last) / (2 * r)
    ratio = ((1 - abar_prev) / (1 - abar_t)) ** 0.5
    if noise is None:
        return ratio * x_t - abar_prev ** 0.5 * math.expm1(-h) * d, x0
    keep = -math.expm1(-2 * h)                   # 1 - e^{-2h}
    x_prev = ratio * math.exp(-h) * x_t + abar_prev ** 0.5 * keep * d + ((1 - abar_prev) * keep) ** 0.5 * noise
    return x_prev, x0


@functools.lru_cache(maxsize=1)
def diffusers_scheduler_names() -> tuple[str, ...]:
    """The diffusers schedulers that can run on our discrete schedule: those taking `trained_betas`
    and `prediction_type` (not flow-matching, consistency or inverse ones). Computed once: it
    imports and inspects every scheduler class, and each Sampler and sample call validates with it."""
    import inspect

    import diffusers
    from diffusers import SchedulerMixin

    names = []
    for name in dir(diffusers):
        if name.endswith("Scheduler") and not name.startswith("Flax") and "Inverse" not in name:
            try:
                obj = getattr(diffusers, name)
            except Exception:  # noqa: BLE001 - optional backends that fail to import are skipped
                continue
            if isinstance(obj, type) and issubclass(obj, SchedulerMixin):
                params = inspect.signature(obj.__init__).parameters
                if "trained_betas" in params and "prediction_type" in params:
                    names.append(name)
    return tuple(sorted(names))


def make_diffusers_scheduler(name: str | None, diffusion: GaussianDiffusion, spacing: str):
    """An instance of diffusers scheduler class `name` on our betas and prediction type.

    A zero-terminal-SNR schedule (abar_T = 0) is handed over as diffusers does it itself: with
    `rescale_betas_zero_snr=True` where the class has it (it then uses abar_T = 2^-24 for its
    sigmas, the identity on our already rescaled betas otherwise), else with abar_T set to 2^-24 -
    sigma-based schedulers divide by abar_T and return NaN at exactly 0.
    """
    import inspect

    import diffusers

    if name not in diffusers_scheduler_names():
        raise choice_error("sampler.scheduler", name, diffusers_scheduler_names())
    cls = getattr(diffusers, name)
    betas = diffusion.betas.clone()
    config = {"num_train_timesteps": diffusion.num_steps, "prediction_type": DIFFUSERS_PREDICTION[diffusion.prediction],
              "timestep_spacing": spacing, "clip_sample": False}
    if float(diffusion.alphas_cumprod[-1]) <= 0.0:
        if "rescale_betas_zero_snr" in inspect.signature(cls.__init__).parameters:
            config["rescale_betas_zero_snr"] = True
        else:
            betas[-1] = 1.0 - 2.0 ** -24 / float(diffusion.alphas_cumprod[-2])
    config["trained_betas"] = betas.tolist()
    return cls.from_config(config)


def _sample_with_diffusers(fn, x, sched, steps, eta, generator, trajectory, bar):
    """The scheduler's own loop: scale_model_input, model call, step."""
    import inspect

    sched.set_timesteps(steps, device=x.device)
    step_args = inspect.signature(sched.step).parameters
    extra = {}
    if "generator" in step_args:
        extra["generator"] = generator
    if "eta" in step_args and eta is not None:
        extra["eta"] = float(eta)
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        t_batch = t.reshape(1).expand(x.shape[0]).to(x.device)
        out = fn(sched.scale_model_input(x, t), t_batch)
        x = sched.step(out.to(x.dtype), t, x, **extra).prev_sample
        if trajectory is not None:
            trajectory.append(x.detach().cpu())
        bar.update()
    return x


def sample(model_fn, shape, diffusion: GaussianDiffusion, sampler: str = "ddpm",
           steps: int | None = None, eta: float | None = None, spacing: str = "leading",
           x_T: Tensor | None = None, cond=None, guidance_scale: float = 1.0,
           guidance_rescale: float = 0.0,
           generator: torch.Generator | None = None, variance: str = "fixed_small",
           clip_x0: bool = False, return_trajectory: bool = False,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
           progress: bool = False, scheduler: str | None = None):
    """Draw samples of `shape` from the reverse process.

    Noise is drawn from `generator` (on the generator's device) and moved to `device`, so one seed
    gives the same samples on any device. Returns x_0, or (x_0, trajectory) with the trajectory a
    (steps + 1, *shape) CPU tensor from x_T to x_0 when `return_trajectory` is true.
    With sampler="diffusers", `scheduler` names the diffusers scheduler class (its own
    timesteps; `spacing` is passed as its timestep_spacing).
    """
    if sampler not in SAMPLERS:
        raise choice_error("sampler.name", sampler, SAMPLERS)
    if variance not in VARIANCES:
        raise choice_error("sampler.variance", variance, VARIANCES)
    steps = diffusion.num_steps if steps is None else steps
    make = dpm_timesteps if sampler.startswith("dpmpp") else make_timesteps
    timesteps = make(diffusion.num_steps, steps, spacing).tolist()    # validates steps and spacing
    diffusers_sched = make_diffusers_scheduler(scheduler, diffusion, spacing) if sampler == "diffusers" else None
    if device is None:
        device = x_T.device if x_T is not None else "cpu"
    gen_device = generator.device if generator is not None else device

    def noise_like() -> Tensor:
        return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)

    x = noise_like() if x_T is None else x_T.to(device=device, dtype=dtype)
    fn = guided_model_fn(model_fn, cond, guidance_scale, guidance_rescale)
    eta = 0.0 if eta is None else float(eta)
    trajectory = [x.detach().cpu()] if return_trajectory else None
    t_batch = torch.empty(x.shape[0], dtype=torch.long, device=device)
    last = None                               # DPM-Solver++: the previous (x0_hat, t)
    bar = tqdm(total=len(timesteps), desc=f"sampling ({scheduler or sampler}, {steps} steps)",
               disable=not progress, leave=False)
    if diffusers_sched is not None:
        x = _sample_with_diffusers(fn, x, diffusers_sched, steps, eta, generator, trajectory, bar)
    else:
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            output = fn(x, t_batch.fill_(t))
            stochastic = t_prev >= 0 and (sampler in ("ddpm", "dpmpp_2m_sde") or (sampler == "ddim" and eta > 0))
            z = noise_like() if stochastic else None
            if sampler == "ddpm":
                x = ddpm_step(diffusion, output.to(dtype), x, t, t_prev, z, variance, clip_x0)
            elif sampler == "ddim":
                x = ddim_step(diffusion, output.to(dtype), x, t, t_prev, z, eta, clip_x0)
            else:
                x, x0 = dpmpp_2m_step(diffusion, output.to(dtype), x, t, t_prev, last, clip_x0, z)
                last = (x0, t)
            if trajectory is not None:
                trajectory.append(x.detach().cpu())
            bar.update()
    bar.close()
    if return_trajectory:
        return x, torch.stack(trajectory)
    return x


@dataclass
class Sampler:
    """A sampler configuration (conf/sampler/*.yaml); calling it runs `sample` with these defaults."""

    name: str = "ddpm"
    steps: int | None = None
    eta: float | None = None
    spacing: str = "leading"
    variance: str = "fixed_small"
    clip_x0: bool = True
    scheduler: str | None = None

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise choice_error("sampler.name", self.name, SAMPLERS)
        if self.name == "diffusers" and self.scheduler not in diffusers_scheduler_names():
            raise choice_error("sampler.scheduler", self.scheduler, diffusers_scheduler_names())
        if self.spacing not in SPACINGS:
            raise choice_error("sampler.spacing", self.spacing, SPACINGS)
        if self.variance not in VARIANCES:
            raise choice_error("sampler.variance", self.variance, VARIANCES)

    def __call__(self, model_fn, shape, diffusion: GaussianDiffusion, **kwargs):
        opts = dict(sampler=self.name, steps=self.steps, eta=self.eta, spacing=self.spacing,
                    variance=self.variance, clip_x0=self.clip_x0, scheduler=self.scheduler)
        opts.update(kwargs)
        return sample(model_fn, shape, diffusion, **opts)


@torch.no_grad()
def ddim_invert(model_fn, x0: Tensor, diffusion: GaussianDiffusion, steps: int = 50,
                spacing: str = "leading", cond=None, guidance_scale: float = 1.0,
                return_trajectory: bool = False):
    """DDIM inversion (encode): the deterministic eta = 0 ODE run from x_0 up to x_T.

    Each step reuses the DDIM update (Song et al. 2021, Eq. 13) in the other direction, from the
    lower timestep t to the higher t_next, with eps taken at (x_t, t_next) - the usual approximation,
    since x_{t_next} is not known yet. Generation with `sample(..., sampler="ddim", eta=0, x_T=...)`
    on the same steps and spacing maps the result back to about x_0 (the error shrinks with steps).
    """
    timesteps = make_timesteps(diffusion.num_steps, steps, spacing).flip(0).tolist()   # ascending
    fn = guided_model_fn(model_fn, cond, guidance_scale)
    x = x0
    trajectory = [x.detach().cpu()] if return_trajectory else None
    t_batch = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    t_cur = -1
    for t_next in timesteps:
        output = fn(x, t_batch.fill_(t_next)).to(x.dtype)
        _, eps = diffusion.predict_x0_eps(output, x, t_next)     # the identity for eps models
        abar_cur, abar_next = _abar(diffusion, t_cur), _abar(diffusion, t_next)
        x0_hat = (x - (1 - abar_cur) ** 0.5 * eps) / abar_cur ** 0.5
        x = abar_next ** 0.5 * x0_hat + (1 - abar_next) ** 0.5 * eps
        t_cur = t_next
        if trajectory is not None:
            trajectory.append(x.detach().cpu())
    return (x, torch.stack(trajectory)) if return_trajectory else x
