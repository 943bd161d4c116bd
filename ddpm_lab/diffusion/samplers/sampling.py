"""The sampler entry point: `sample` does the set-up (options, time grid, noise, guidance, progress)
and hands over to the named sampler's loop (registry.py); `Sampler` is a sampler config.

Samplers never assume a network, an image shape or a dtype: (N, 2) float64 points work too.
The process is a GaussianDiffusion (DDPM samplers) or a FlowMatching (flow samplers, whose loops
see the flow time s: `sample` gives the network time_scale * s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ddpm_lab.diffusion.flow import FlowMatching, check_shift
from ddpm_lab.diffusion.guidance import Guider
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers.flow_loops import flow_grid, invert_flow_euler
from ddpm_lab.diffusion.samplers.loops import (
    Callback,
    SamplerState,
    Trajectory,
    invert_ddim,
    randn,
    report,
)
from ddpm_lab.diffusion.samplers.registry import check_options
from ddpm_lab.diffusion.samplers.start import grid_from, start_time
from ddpm_lab.diffusion.samplers.timesteps import DATA_T, make_timesteps
from ddpm_lab.errors import UserError

Tensor = torch.Tensor
Process = GaussianDiffusion | FlowMatching


def _in_dtype(model: Callable[[Tensor, Tensor], Tensor], dtype: torch.dtype) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, t: model(x, t).to(dtype)


def _on_network_time(model: Callable[[Tensor, Tensor], Tensor], flow: FlowMatching) -> Callable[[Tensor, Tensor], Tensor]:
    """The flow loops' model(x, s) as the network's model(x, time_scale * s)."""
    return lambda x, s: model(x, flow.network_time(s))


def _fan_out(callbacks: Sequence[Callback | None]) -> Callback:
    active = [c for c in callbacks if c is not None]

    def callback(state: SamplerState) -> None:
        for c in active:
            c(state)

    return callback


def sample(model_fn: Callable, shape: Sequence[int], diffusion: Process, sampler: str | None = None,
           steps: int | None = None, eta: float | None = None, spacing: str = "leading",
           x_T: Tensor | None = None, cond: Any = None, guidance_scale: float = 1.0,
           guidance_rescale: float = 0.0, generator: torch.Generator | None = None,
           variance: str = "fixed_small", clip_x0: bool = False, return_trajectory: bool = False,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
           progress: bool = False, scheduler: str | None = None, shift: float | None = None,
           callback: Callback | None = None, start: float | None = None,
           use_clipped_model_output: bool = False, times: Sequence | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Draw samples of `shape` from the reverse process with the sampler named `sampler`.

    `model_fn(x_t, t, cond)` predicts the diffusion's output type; classifier-free guidance at
    `guidance_scale` (and `guidance_rescale`) goes through a `Guider`. Noise is drawn from
    `generator` (on the generator's device) and moved to `device`, so one seed gives the same
    samples on any device. `callback(SamplerState)` receives every state of the chain in order,
    x_T (i = 0, at the grid's first time) to the result (t = -1; s = 0 for flow). Returns x_0, or
    (x_0, trajectory) with the trajectory a (steps + 1, *shape) CPU tensor from x_T to x_0 when
    `return_trajectory`.
    With sampler="diffusers", `scheduler` names the diffusers scheduler class (its own
    timesteps; `spacing` is passed as its timestep_spacing).

    `sampler` None is the process's default (ddpm; flow_euler), `steps` None its
    `default_sampling_steps` (DDPM: all T; flow: 50). On a FlowMatching process the grid and the
    states' t are flow times s (1 -> 0), `shift` shifts the grid (None: the process's training
    shift), and `model_fn` is called with the network time time_scale * s.

    `use_clipped_model_output` (ddim with clip_x0): eps re-derived from the clipped x0 (steps.py).
    `times` (consistency sampler): the times its steps start from, in place of the grid of `steps`.
    `start` (t0 in (0, 1], start.py) runs only the part of the grid below t0, from `x_T` taken as
    the state at t0 (SDEdit: a noised image); None runs the whole grid from x_T ~ N(0, I).
    """
    flow = isinstance(diffusion, FlowMatching)
    if sampler is None:
        sampler = "flow_euler" if flow else "ddpm"
    steps = diffusion.default_sampling_steps if steps is None else steps
    if isinstance(times, Sequence) and times:
        steps = len(times)
    entry = check_options(sampler, spacing, variance, scheduler, steps, eta=eta, shift=shift, process=diffusion,
                          times=times)
    if flow and shift is None:
        shift = diffusion.shift
    guider = Guider(guidance_scale, guidance_rescale)
    timesteps = entry.grid(diffusion, steps, spacing, scheduler=scheduler, shift=shift, times=times)
    if start is not None:
        if sampler == "diffusers" or x_T is None:
            raise UserError(f"start={start!r} needs x_T (the state at t0) and a sampler that walks our grid, "
                            f"not sampler.name={sampler} (a diffusers scheduler steps on its own timesteps)")
        timesteps = grid_from(timesteps, start_time(diffusion, start))
    if device is None:
        device = x_T.device if x_T is not None else "cpu"
    x = randn(shape, generator, device, dtype) if x_T is None else x_T.to(device=device, dtype=dtype)
    model = _in_dtype(guider.bind(model_fn, cond), dtype)
    if flow:
        model = _on_network_time(model, diffusion)
    trajectory = Trajectory() if return_trajectory else None
    bar = tqdm(total=len(timesteps) - 1, desc=f"sampling ({scheduler or sampler}, {steps} steps)",
               disable=not progress, leave=False)

    def tick(state: SamplerState) -> None:
        if state.i:                                  # the start is not a step
            bar.update()

    report_state = _fan_out([callback, trajectory, tick])
    report(report_state, 0, timesteps[0], x)
    eta = 0.0 if eta is None else float(eta)
    try:
        x = entry.loop(model, x, timesteps, diffusion, generator=generator, callback=report_state,
                       eta=eta, variance=variance, clip_x0=clip_x0, scheduler=scheduler, steps=steps,
                       spacing=spacing, shift=shift, use_clipped_model_output=use_clipped_model_output)
    finally:
        bar.close()
    return (x, trajectory.stack()) if trajectory is not None else x


def steps_drop_times(changes: dict[str, Any]) -> dict[str, Any]:
    """Sampler changes with `steps` but no `times`: their grid, not saved times (times: None)."""
    if changes.get("steps") is not None and "times" not in changes:
        return {**changes, "times": None}
    return changes


@dataclass
class Sampler:
    """A sampler configuration (conf/sampler/*.yaml): the config's keys, checked on creation;
    calling it runs `sample` with these settings."""

    name: str = "ddpm"
    steps: int | None = None
    eta: float | None = None
    spacing: str = "leading"
    variance: str = "fixed_small"
    clip_x0: bool = True
    scheduler: str | None = None
    shift: float | None = None
    use_clipped_model_output: bool = False
    times: list | None = None

    def __post_init__(self):
        if self.times is not None:
            self.times = list(self.times)
        check_options(self.name, self.spacing, self.variance, self.scheduler, eta=self.eta, shift=self.shift,
                      times=self.times)

    def replace(self, **changes: Any) -> Sampler:
        """These settings with `changes` on top (a None value keeps the setting), checked; new
        `steps` without `times` drop the saved times (the steps' own grid)."""
        return dataclasses.replace(self, **steps_drop_times({k: v for k, v in changes.items() if v is not None}))

    def options(self) -> dict[str, Any]:
        """The settings as keyword arguments of `sample` (where `name` is the `sampler` argument)."""
        return {"sampler": self.name, "steps": self.steps, "eta": self.eta, "spacing": self.spacing,
                "variance": self.variance, "clip_x0": self.clip_x0, "scheduler": self.scheduler, "shift": self.shift,
                "use_clipped_model_output": self.use_clipped_model_output, "times": self.times}

    def __call__(self, model_fn: Callable, shape: Sequence[int], diffusion: Process, **kwargs: Any):
        return sample(model_fn, shape, diffusion, **{**self.options(), **steps_drop_times(kwargs)})


@torch.no_grad()
def ddim_invert(model_fn: Callable, x0: Tensor, diffusion: GaussianDiffusion, steps: int = 50,
                spacing: str = "leading", cond: Any = None, guidance_scale: float = 1.0,
                return_trajectory: bool = False, callback: Callback | None = None,
                start: float | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """DDIM inversion (encode): the deterministic eta = 0 ODE run from x_0 up to x_T, or only up to
    t0 = `start` in (0, 1] (start.py; the grid of `sample(..., start=t0)` taken upwards).

    Each step reuses the DDIM update (Song et al. 2021, Eq. 13) in the other direction (loops.py:
    `invert_ddim`), on the timesteps of `sample(..., sampler="ddim")` taken upwards from t = -1.
    Generation with `sample(..., sampler="ddim", eta=0, x_T=...)` on the same steps and spacing
    maps the result back to about x_0 (the error shrinks with steps). DDPM processes only.
    """
    if isinstance(diffusion, FlowMatching):
        raise UserError("ddim_invert needs a DDPM process (diffusion=default); this model is flow matching "
                        "(diffusion=flow): its inversion is the velocity ODE run from s = 0 to 1")
    timesteps = [DATA_T, *make_timesteps(diffusion.num_steps, steps, spacing).flip(0).tolist()]
    if start is not None:
        timesteps = grid_from(timesteps[::-1], start_time(diffusion, start))[::-1]
    model = _in_dtype(Guider(guidance_scale).bind(model_fn, cond), x0.dtype)
    trajectory = Trajectory() if return_trajectory else None
    report_state = _fan_out([callback, trajectory])
    report(report_state, 0, timesteps[0], x0)
    x = invert_ddim(model, x0, timesteps, diffusion, callback=report_state)
    return (x, trajectory.stack()) if trajectory is not None else x


@torch.no_grad()
def flow_invert(model_fn: Callable, x0: Tensor, diffusion: FlowMatching, steps: int = 50,
                shift: float | None = None, cond: Any = None, guidance_scale: float = 1.0,
                return_trajectory: bool = False, callback: Callback | None = None,
                start: float | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Flow ODE inversion (encode): Euler on the velocity ODE from s = 0 (the data) up to s = 1, or
    only up to s0 = `start` (start.py) (flow_loops.py: `invert_flow_euler`), on the grid of
    `sample(..., sampler="flow_euler")` (`steps`, `shift`; None: the process's) taken upwards. Generation with
    `sample(..., sampler="flow_euler", x_T=...)` on the same steps and shift maps the result back to
    about x_0 (the error shrinks with steps). Flow-matching processes only.
    """
    if not isinstance(diffusion, FlowMatching):
        raise UserError("flow_invert needs a flow-matching process (diffusion=flow); this model is DDPM "
                        "(diffusion=default): invert it with ddim_invert")
    check_shift(diffusion.shift if shift is None else shift, "sampler.shift")
    timesteps = flow_grid(diffusion, steps, shift=shift)
    timesteps = (timesteps if start is None else grid_from(timesteps, start_time(diffusion, start)))[::-1]
    model = _on_network_time(_in_dtype(Guider(guidance_scale).bind(model_fn, cond), x0.dtype), diffusion)
    trajectory = Trajectory() if return_trajectory else None
    report_state = _fan_out([callback, trajectory])
    report(report_state, 0, timesteps[0], x0)
    x = invert_flow_euler(model, x0, timesteps, diffusion, callback=report_state)
    return (x, trajectory.stack()) if trajectory is not None else x
