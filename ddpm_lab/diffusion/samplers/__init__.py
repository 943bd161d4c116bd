"""Samplers: the reverse process x_T -> x_0 for any `model_fn(x_t, t, cond)`.

`sample(model_fn, shape, diffusion, sampler="ddim", ...)` (sampling.py) sets up and runs one of
the registered samplers (registry.py), each one loop function (loops.py, scheduler.py):

- "ddpm": ancestral sampling, DDPM Algorithm 2 (Ho et al. 2020) on any timestep sub-sequence;
- "ddim": DDIM (Song et al. 2021, Eq. 12) with eta (0 deterministic, 1 DDPM-like);
- "dpmpp_2m" / "dpmpp_2m_sde": DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) on the probability-flow
  ODE / on the reverse SDE, as diffusers' DPMSolverMultistepScheduler;
- "diffusers": any diffusers scheduler class built from this schedule (scheduler=...), or on a
  flow-matching process one of diffusers' flow schedulers on flow sigmas (flow_scheduler.py);
- "flow_euler" / "flow_heun": Euler and Heun on the flow-matching velocity ODE (flow_loops.py).

Inversion (image -> noise): `ddim_invert` (DDPM processes) and `flow_invert` (flow matching).

Classifier-free guidance is one `Guider` (ddpm_lab.diffusion.guidance) for all of them;
intermediate states go out through `callback` (a `Trajectory` keeps them all).
"""

from ddpm_lab.diffusion.samplers.flow_loops import (
    flow_grid,
    invert_flow_euler,
    sample_flow_euler,
    sample_flow_heun,
)
from ddpm_lab.diffusion.samplers.flow_scheduler import FLOW_SCHEDULERS, make_flow_scheduler
from ddpm_lab.diffusion.samplers.loops import (
    Callback,
    SamplerState,
    Trajectory,
    invert_ddim,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
)
from ddpm_lab.diffusion.samplers.registry import SAMPLERS, SamplerDef, check_options, process_kind
from ddpm_lab.diffusion.samplers.sampling import Sampler, ddim_invert, flow_invert, sample
from ddpm_lab.diffusion.samplers.scheduler import (
    DIFFUSERS_PREDICTION,
    diffusers_grid,
    diffusers_scheduler_names,
    make_diffusers_scheduler,
    sample_diffusers,
)
from ddpm_lab.diffusion.samplers.steps import VARIANCES, ddim_step, ddpm_step, dpmpp_2m_step
from ddpm_lab.diffusion.samplers.timesteps import (
    SPACINGS,
    ddpm_grid,
    dpm_grid,
    dpm_timesteps,
    make_timesteps,
)

__all__ = [
    "DIFFUSERS_PREDICTION", "FLOW_SCHEDULERS", "SAMPLERS", "SPACINGS", "VARIANCES", "Callback", "Sampler", "SamplerDef",
    "SamplerState", "Trajectory", "check_options", "ddim_invert", "ddim_step", "ddpm_grid", "ddpm_step",
    "diffusers_grid", "diffusers_scheduler_names", "dpm_grid", "dpm_timesteps", "dpmpp_2m_step",
    "flow_grid", "flow_invert", "invert_ddim", "invert_flow_euler", "make_diffusers_scheduler",
    "make_flow_scheduler", "make_timesteps",
    "process_kind", "sample", "sample_ddim", "sample_ddpm", "sample_diffusers", "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde", "sample_flow_euler", "sample_flow_heun",
]
