"""The "diffusers" sampler on a flow-matching process: diffusers' flow schedulers on their own
flow sigmas (sigma = s), run in the scheduler's loop (model call, step).

- FlowMatchEulerDiscreteScheduler(shift=k): SD3's Euler sampler;
- DPMSolverMultistepScheduler (DPM-Solver++(2M)) and UniPCMultistepScheduler (as in Wan) with
  `prediction_type="flow_prediction"`, `use_flow_sigmas=True`, `flow_shift=k`.
k is the sampler's shift (None: the process's training shift). The scheduler is given the velocity
(our output converted by `FlowMatching.velocity`) and its sigma as s; `sample` hands the network
time_scale * sigma (diffusers' pipelines hand it the scheduler's timestep, sigma * 1000, which the
multistep schedulers round down to an integer).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.samplers.flow_loops import time_batch
from ddpm_lab.diffusion.samplers.loops import Callback, Denoiser, report
from ddpm_lab.errors import choice_error

Tensor = torch.Tensor
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


def check_flow_scheduler(name: object) -> None:
    if name not in FLOW_SCHEDULERS:
        raise choice_error("sampler.scheduler", name, FLOW_SCHEDULERS, "this model is flow matching")


def make_flow_scheduler(name: str | None, diffusion: FlowMatching, shift: float | None = None):
    """An instance of diffusers scheduler class `name` on flow sigmas shifted by `shift`."""
    import diffusers

    check_flow_scheduler(name)
    shift = diffusion.shift if shift is None else float(shift)
    cls = getattr(diffusers, name)
    if "use_flow_sigmas" in inspect.signature(cls.__init__).parameters:
        return cls.from_config({"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift,
                                "final_sigmas_type": "zero"})
    return cls.from_config({"shift": shift})


def ready_flow_scheduler(name: str | None, diffusion: FlowMatching, steps: int, shift: float | None,
                         device: torch.device | str | None = None):
    sched = make_flow_scheduler(name, diffusion, shift)
    sched.set_timesteps(steps, device=device)
    return sched


def flow_diffusers_grid(diffusion: FlowMatching, steps: int, spacing: str = "leading", scheduler: str | None = None,
                        shift: float | None = None, **_) -> list[float]:
    """The scheduler's own sigmas (its flow times s), the data end s = 0 included."""
    return ready_flow_scheduler(scheduler, diffusion, steps, shift).sigmas.tolist()


def sample_flow_diffusers(model: Denoiser, x: Tensor, timesteps: Sequence[float], diffusion: FlowMatching, *,
                          generator: torch.Generator | None = None, callback: Callback | None = None,
                          scheduler: str | None = None, steps: int | None = None, shift: float | None = None,
                          **_) -> Tensor:
    """The flow scheduler `scheduler` with `steps` from x (pure noise at its first sigma);
    `timesteps` (flow_diffusers_grid) names the states it reports."""
    sched = ready_flow_scheduler(scheduler, diffusion, steps or diffusion.default_sampling_steps, shift, x.device)
    sigmas = sched.sigmas.tolist()
    extra = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    for i, t in enumerate(sched.timesteps):
        v = diffusion.velocity(model(x, time_batch(x, sigmas[i])), x, sigmas[i])
        x = sched.step(v, t, x, **extra).prev_sample
        report(callback, i + 1, timesteps[i + 1], x)
    return x
