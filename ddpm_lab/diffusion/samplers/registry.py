"""The samplers by name, and the one check of a sampler's options.

Adding a sampler is one loop function (the signature of loops.py) and one line here naming it,
its time grid (timesteps.py: a function (diffusion, steps, spacing, **options) -> the grid) and the
processes it runs on ("ddpm": GaussianDiffusion, "flow": FlowMatching).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from ddpm_lab.diffusion.flow import FlowMatching, check_sampleable, check_shift
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers.consistency_loop import consistency_grid, sample_consistency
from ddpm_lab.diffusion.samplers.flow_loops import flow_grid, sample_flow_euler, sample_flow_heun
from ddpm_lab.diffusion.samplers.loops import (
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
)
from ddpm_lab.diffusion.samplers.scheduler import check_scheduler, diffusers_grid, sample_diffusers
from ddpm_lab.diffusion.samplers.steps import check_variance
from ddpm_lab.diffusion.samplers.timesteps import check_spacing, check_steps, ddpm_grid, dpm_grid
from ddpm_lab.errors import UserError, choice_error

PROCESSES = {"ddpm": "DDPM (diffusion=default)", "flow": "flow matching (diffusion=flow)"}


class SamplerDef(NamedTuple):
    """A registered sampler: its loop, the function giving its time grid, the processes it runs on."""

    loop: Callable
    grid: Callable[..., Sequence[int | float]]
    processes: tuple[str, ...] = ("ddpm",)


SAMPLERS: dict[str, SamplerDef] = {
    "ddpm": SamplerDef(sample_ddpm, ddpm_grid),
    "ddim": SamplerDef(sample_ddim, ddpm_grid),
    "dpmpp_2m": SamplerDef(sample_dpmpp_2m, dpm_grid),
    "dpmpp_2m_sde": SamplerDef(sample_dpmpp_2m_sde, dpm_grid),
    "diffusers": SamplerDef(sample_diffusers, diffusers_grid, ("ddpm", "flow")),
    "flow_euler": SamplerDef(sample_flow_euler, flow_grid, ("flow",)),
    "flow_heun": SamplerDef(sample_flow_heun, flow_grid, ("flow",)),
    "consistency": SamplerDef(sample_consistency, consistency_grid, ("ddpm", "flow")),
}


def process_kind(process: object) -> str:
    """"flow" for a FlowMatching process, "ddpm" for a GaussianDiffusion."""
    return "flow" if isinstance(process, FlowMatching) else "ddpm"


def samplers_for(kind: str) -> tuple[str, ...]:
    """The samplers that run on a process of `kind`: its own first, then those of every process."""
    names = [name for name, entry in SAMPLERS.items() if kind in entry.processes]
    return tuple(sorted(names, key=lambda name: len(SAMPLERS[name].processes) > 1))


def check_process_options(name: str, kind: str, eta: object = None, spacing: object = "leading",
                          variance: object = "fixed_small", shift: object = None) -> None:
    """The sampler `name` and its options fit a process of `kind` ("ddpm" or "flow").

    eta, spacing and variance are DDPM options (flow samplers are deterministic ODE solvers on
    their own grid); shift is a flow option. clip_x0 is both: on flow it clips the x0 prediction.
    """
    if kind not in SAMPLERS[name].processes:
        sampler_kind = "flow-matching" if SAMPLERS[name].processes == ("flow",) else "DDPM"
        raise UserError(f"sampler.name={name} is a {sampler_kind} sampler; this model is {PROCESSES[kind]}: "
                        f"choose one of {', '.join(samplers_for(kind))}")
    if kind == "ddpm":
        if shift is not None:
            raise UserError(f"sampler.shift={shift!r} is a flow-matching option; this model is {PROCESSES[kind]}: "
                            f"leave it null")
        return
    if eta not in (None, 0, 0.0):
        raise UserError(f"sampler.eta={eta!r} is a DDPM option; flow-matching samplers are deterministic: "
                        f"leave it null or 0")
    for key, value, default in (("spacing", spacing, "leading"), ("variance", variance, "fixed_small")):
        if value != default:
            raise UserError(f"sampler.{key}={value!r} is a DDPM option; flow-matching samplers step s from 1 "
                            f"to 0 (shifted by sampler.shift): leave it at {default}")


def check_options(name: object, spacing: object = "leading", variance: object = "fixed_small",
                  scheduler: object = None, steps: object = None, num_train_steps: int | None = None, *,
                  eta: object = None, shift: object = None, process: object = None,
                  times: object = None) -> SamplerDef:
    """Every sampler option a user can set, checked here (for a `Sampler` config and for `sample`);
    returns the sampler's registry entry. `process` (a GaussianDiffusion or FlowMatching, or its
    kind "ddpm" / "flow"; None: not known) adds the checks that depend on it, `steps` among them
    (DDPM: in [1, T], T = `num_train_steps` or the process's; flow: >= 1)."""
    if name not in SAMPLERS:
        raise choice_error("sampler.name", name, tuple(SAMPLERS))
    check_variance(variance)
    check_spacing(spacing)
    if shift is not None:
        check_shift(shift, "sampler.shift")
    kind = process if process is None or isinstance(process, str) else process_kind(process)
    if kind is not None:
        check_process_options(name, kind, eta, spacing, variance, shift)
    if kind == "flow":
        if isinstance(process, FlowMatching):
            check_sampleable(process.prediction)
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise UserError(f"sampler.steps={steps!r} must be an integer >= 1")
    else:
        if num_train_steps is None and isinstance(process, GaussianDiffusion):
            num_train_steps = process.num_steps
        if num_train_steps is not None:
            check_steps(steps, num_train_steps)
    if name == "diffusers":
        check_scheduler(scheduler, kind)
    if times is not None and name != "consistency":
        raise UserError(f"sampler.times={times!r} is for the consistency sampler (a consistency-distilled "
                        f"student); sampler.name={name} walks the grid of sampler.steps: leave times null")
    return SAMPLERS[name]
