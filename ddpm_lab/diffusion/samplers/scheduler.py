"""The "diffusers" sampler: any diffusers scheduler class (DDIM, DPMSolverMultistep, EulerDiscrete,
Heun, UniPCMultistep, ...) built from this schedule's betas and prediction type, so the two agree,
run in the scheduler's own loop (scale_model_input, model call, step) on its own timesteps. On a
`FlowMatching` process the same sampler runs diffusers' flow schedulers (flow_scheduler.py).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers.flow_scheduler import (
    FLOW_SCHEDULERS,
    check_flow_scheduler,
    flow_diffusers_grid,
    sample_flow_diffusers,
)
from ddpm_lab.diffusion.samplers.loops import Callback, Denoiser, report
from ddpm_lab.diffusion.samplers.timesteps import DATA_T
from ddpm_lab.errors import choice_error

Tensor = torch.Tensor
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


@functools.lru_cache(maxsize=1)
def diffusers_scheduler_names() -> tuple[str, ...]:
    """The schedulers diffusers exports (`diffusers.schedulers`) that run on our discrete schedule
    (`runs_on_our_schedule`): no flow-matching, inverse, score-SDE or CogVideoX ones. Diffusers'
    KarrasDiffusionSchedulers (the classes it declares interchangeable with DDPMScheduler) is a
    subset that lacks SASolver, TCD, LCM and the Parallel DDIM / DDPM, which run here too. Computed
    once: it imports and inspects every class, and each Sampler and sample call validates with it."""
    import diffusers.schedulers
    from diffusers import SchedulerMixin

    names = []
    for name in dir(diffusers.schedulers):
        if not name.endswith("Scheduler") or name.startswith("Flax") or "Inverse" in name:
            continue
        try:
            cls = getattr(diffusers.schedulers, name)
        except Exception:  # noqa: BLE001 - optional backends that fail to import are skipped
            continue
        if isinstance(cls, type) and issubclass(cls, SchedulerMixin) and runs_on_our_schedule(cls):
            names.append(name)
    return tuple(sorted(names))


def runs_on_our_schedule(cls: type) -> bool:
    """`cls` takes our betas and prediction type as they are and steps as our loop calls it."""
    init = inspect.signature(cls.__init__).parameters
    if "trained_betas" not in init or "prediction_type" not in init or "snr_shift_scale" in init:
        return False
    return list(inspect.signature(cls.step).parameters)[1:4] == ["model_output", "timestep", "sample"]


def check_scheduler(name: object, kind: str | None = "ddpm") -> None:
    """`name` is a diffusers scheduler for the process `kind` ("ddpm", "flow"; None: either)."""
    if kind == "flow":
        check_flow_scheduler(name)
    elif kind == "ddpm":
        if name not in diffusers_scheduler_names():
            raise choice_error("sampler.scheduler", name, diffusers_scheduler_names())
    elif name not in (*diffusers_scheduler_names(), *FLOW_SCHEDULERS):
        raise choice_error("sampler.scheduler", name, dict.fromkeys((*diffusers_scheduler_names(), *FLOW_SCHEDULERS)))


def make_diffusers_scheduler(name: str | None, diffusion: GaussianDiffusion, spacing: str):
    """An instance of diffusers scheduler class `name` on our betas and prediction type.

    A zero-terminal-SNR schedule (abar_T = 0) is handed over as diffusers does it itself: with
    `rescale_betas_zero_snr=True` where the class has it (it then uses abar_T = 2^-24 for its
    sigmas, the identity on our already rescaled betas otherwise), else with abar_T set to 2^-24 -
    sigma-based schedulers divide by abar_T and return NaN at exactly 0.
    """
    import diffusers

    check_scheduler(name)
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


def _ready_scheduler(diffusion: GaussianDiffusion, steps: int, spacing: str, scheduler: str | None,
                     device: torch.device | str | None = None):
    sched = make_diffusers_scheduler(scheduler, diffusion, spacing)
    sched.set_timesteps(steps, device=device)
    return sched


def diffusers_grid(diffusion: GaussianDiffusion | FlowMatching, steps: int, spacing: str,
                   scheduler: str | None = None, **options) -> list[int | float]:
    """The scheduler's own timesteps (Heun's visit most of them twice), then the data end; on a flow
    process its sigmas (`flow_diffusers_grid`)."""
    if isinstance(diffusion, FlowMatching):
        return flow_diffusers_grid(diffusion, steps, spacing, scheduler=scheduler, **options)
    return [*_ready_scheduler(diffusion, steps, spacing, scheduler).timesteps.tolist(), DATA_T]


def sample_diffusers(model: Denoiser, x: Tensor, timesteps: Sequence[int | float],
                     diffusion: GaussianDiffusion | FlowMatching, *, generator: torch.Generator | None = None,
                     callback: Callback | None = None, scheduler: str | None = None, steps: int | None = None,
                     spacing: str = "leading", eta: float | None = None, **options) -> Tensor:
    """The diffusers scheduler `scheduler` with `steps` and `spacing` (its timestep_spacing) from x:
    `timesteps` (diffusers_grid) names the states it reports. The scheduler gets our generator and
    eta where its step takes them. A flow process runs `sample_flow_diffusers`."""
    if isinstance(diffusion, FlowMatching):
        return sample_flow_diffusers(model, x, timesteps, diffusion, generator=generator, callback=callback,
                                     scheduler=scheduler, steps=steps, **options)
    sched = _ready_scheduler(diffusion, steps or diffusion.num_steps, spacing, scheduler, x.device)
    step_args = inspect.signature(sched.step).parameters
    extra = {}
    if "generator" in step_args:
        extra["generator"] = generator
    if "eta" in step_args and eta is not None:
        extra["eta"] = float(eta)
    x = x * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        t_batch = t.reshape(1).expand(x.shape[0]).to(x.device)
        out = model(sched.scale_model_input(x, t), t_batch)
        x = sched.step(out, t, x, **extra).prev_sample
        report(callback, i + 1, timesteps[i + 1], x)
    return x
