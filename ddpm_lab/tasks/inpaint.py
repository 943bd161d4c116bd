"""Inpainting with RePaint (Lugmayr et al. 2022): fill the unknown pixels of each image from a
trained, unconditional or conditional DDPM checkpoint, keeping the known pixels exactly.

The math is `ddpm_lab.diffusion.repaint`; this class picks the mask, the schedule (steps, jump
length and count) and the condition, and reports the task's own figures.
RePaint needs a DDPM process in pixel space: it draws the known region from q(x_{t-1} | x_0) of
the pixels themselves. A flow-matching checkpoint (no discrete DDPM chain to resample) and a
latent checkpoint (the known pixels are not coordinates of the latent) are refused with a line
that names the reason; `task=sdedit` works on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.guidance import Guider
from ddpm_lab.diffusion.repaint import repaint, repaint_grid
from ddpm_lab.errors import UserError
from ddpm_lab.tasks.base import (
    TaskInputs,
    TaskResult,
    require_image_checkpoint,
    task_condition,
    task_labels,
)
from ddpm_lab.tasks.masks import make_mask

if TYPE_CHECKING:
    from ddpm_lab.modules import DiffusionModule

FILL = 0.0          # the value the unknown pixels of the shown input get (mid-grey in [-1, 1])


def check_pixel_ddpm(module: DiffusionModule, method: str) -> None:
    """`method` needs an image checkpoint of a DDPM process in pixel space."""
    require_image_checkpoint(module, method)
    if isinstance(module.diffusion, FlowMatching):
        raise UserError(f"task: {method} needs a DDPM checkpoint (diffusion=default): it resamples the discrete "
                        f"DDPM chain q(x_t | x_(t-1)); this one is flow matching - use task=sdedit")
    if module.autoencoder is not None:
        raise UserError(f"task: {method} keeps known pixels, which a latent checkpoint's latents do not hold "
                        f"one by one; use a pixel-space checkpoint, or task=sdedit (it encodes the guide)")


class Inpaint:
    """RePaint with a mask (masks.py: bottom_half, left_half, center, random_pixels or an image file).

    steps: the DDPM steps (stride T // steps; at most T; null: the checkpoint's sampler.steps, or T);
    jump_length / jump_n_sample: the paper's j and r (r = 1: no resampling); eta: the noise of the
    unknown region's step (1 = DDPM, 0 = DDIM); clip_x0: null keeps the checkpoint's sampler
    setting; label / prompt / guidance_scale: a condition for conditional checkpoints.
    """

    def __init__(self, mask: str = "bottom_half", known_fraction: float = 0.5, steps: int | None = 250,
                 jump_length: int = 10, jump_n_sample: int = 10, eta: float = 1.0, clip_x0: bool | None = None,
                 label: int | list[int] | None = None, prompt: str | list[str] | None = None,
                 guidance_scale: float | None = None):
        self.mask, self.known_fraction = str(mask), known_fraction
        self.steps, self.jump_length, self.jump_n_sample = steps, jump_length, jump_n_sample
        self.eta, self.clip_x0 = float(eta), clip_x0
        self.label, self.prompt, self.guidance_scale = label, prompt, guidance_scale

    @torch.no_grad()
    def run(self, module: DiffusionModule, inputs: TaskInputs, generator: torch.Generator) -> TaskResult:
        check_pixel_ddpm(module, "inpainting (RePaint)")
        diffusion = module.diffusion
        x0 = inputs.images.to(module.device, torch.float32)
        known = make_mask(self.mask, tuple(x0.shape[-2:]), generator, self.known_fraction).to(module.device)
        steps = min(self.steps or module.sampler.steps or diffusion.num_steps, diffusion.num_steps)
        grid = repaint_grid(diffusion.num_steps, steps, self.jump_length, self.jump_n_sample)
        cond, guidance = task_condition(module, len(x0), self.label, self.prompt, self.guidance_scale)
        model = Guider(guidance.get("guidance_scale", 1.0), guidance.get("guidance_rescale", 0.0)).bind(
            module.net, None if cond is None else cond.to(module.device))
        clip = module.sampler.clip_x0 if self.clip_x0 is None else self.clip_x0
        results = repaint(model, x0, known, diffusion, grid, generator, self.eta, clip).clamp(-1, 1)
        results = torch.where(known, x0, results)              # clamping must not touch a known pixel
        downs = sum(b < a for a, b in zip(grid, grid[1:]))
        metrics = {"known_fraction": known.float().mean().item(), "model_calls_per_image": float(downs),
                   "max_known_pixel_change": (results - x0)[..., known].abs().max().item() if known.any() else 0.0}
        return TaskResult(inputs=torch.where(known, x0, torch.full_like(x0, FILL)).cpu(), results=results.cpu(),
                          target_labels=task_labels(module, len(x0), self.label), metrics=metrics)
