"""The samplers by name, and the one check of a sampler's options.

Adding a sampler is one loop function (the signature of loops.py) and one line here naming it and
its time grid (timesteps.py: a function (diffusion, steps, spacing, **options) -> the grid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from ddpm_lab.diffusion.samplers.loops import (
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
)
from ddpm_lab.diffusion.samplers.scheduler import check_scheduler, diffusers_grid, sample_diffusers
from ddpm_lab.diffusion.samplers.steps import check_variance
from ddpm_lab.diffusion.samplers.timesteps import check_spacing, check_steps, ddpm_grid, dpm_grid
from ddpm_lab.errors import choice_error


class SamplerDef(NamedTuple):
    """A registered sampler: its loop and the function giving its time grid."""

    loop: Callable
    grid: Callable[..., Sequence[int | float]]


SAMPLERS: dict[str, SamplerDef] = {
    "ddpm": SamplerDef(sample_ddpm, ddpm_grid),
    "ddim": SamplerDef(sample_ddim, ddpm_grid),
    "dpmpp_2m": SamplerDef(sample_dpmpp_2m, dpm_grid),
    "dpmpp_2m_sde": SamplerDef(sample_dpmpp_2m_sde, dpm_grid),
    "diffusers": SamplerDef(sample_diffusers, diffusers_grid),
}


def check_options(name: object, spacing: object = "leading", variance: object = "fixed_small",
                  scheduler: object = None, steps: object = None, num_train_steps: int | None = None) -> SamplerDef:
    """Every sampler option a user can set, checked here (for a `Sampler` config and for `sample`);
    returns the sampler's registry entry. `steps` is checked when the schedule's length is given."""
    if name not in SAMPLERS:
        raise choice_error("sampler.name", name, tuple(SAMPLERS))
    check_variance(variance)
    if num_train_steps is not None:
        check_steps(steps, num_train_steps)
    check_spacing(spacing)
    if name == "diffusers":
        check_scheduler(scheduler)
    return SAMPLERS[name]
