"""SDEdit (Meng et al. 2022): image-to-image from a guide at strength t0 (ddpm_lab.diffusion.sdedit),
on any image checkpoint: DDPM or flow matching (s0 = t0), pixel or latent (the guide is encoded
first, the result decoded), unconditional or with a label / prompt and guidance.

The guide is the input image itself or a corruption of it:
- `stroke`: a stroke painting, the paper's guide (Sec. 4.1): the image average-pooled to
  `stroke_size` x `stroke_size` blocks, upsampled with nearest neighbours, each channel quantised
  to `stroke_levels` flat colours;
- `noise`: the image plus Gaussian noise of std `noise_sigma`, clipped to [-1, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ddpm_lab.diffusion.samplers.start import check_t0
from ddpm_lab.diffusion.sdedit import sdedit
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.tasks.base import (
    TaskInputs,
    TaskResult,
    require_image_checkpoint,
    task_condition,
    task_labels,
)

if TYPE_CHECKING:
    from ddpm_lab.modules import DiffusionModule

CORRUPTIONS = ("none", "stroke", "noise")


def stroke_painting(images: torch.Tensor, size: int, levels: int) -> torch.Tensor:
    """A coarse flat-colour version of [-1, 1] images: mean over size x size blocks (adaptive
    average pooling), nearest upsampling, then each value rounded to one of `levels` evenly spaced
    colours in [-1, 1]."""
    height, width = images.shape[-2:]
    coarse = F.interpolate(F.adaptive_avg_pool2d(images, size), size=(height, width), mode="nearest")
    steps = levels - 1
    return (((coarse.clamp(-1, 1) + 1) / 2 * steps).round() / steps) * 2 - 1


def make_guide(images: torch.Tensor, corrupt: str, generator: torch.Generator, stroke_size: int = 4,
               stroke_levels: int = 4, noise_sigma: float = 0.5) -> torch.Tensor:
    """The guide of `images` for the corruption `corrupt` (CORRUPTIONS)."""
    if corrupt == "none":
        return images.clone()
    if corrupt == "stroke":
        return stroke_painting(images, stroke_size, stroke_levels)
    if corrupt == "noise":
        noise = torch.randn(images.shape, generator=generator, device=generator.device).to(images)
        return (images + noise_sigma * noise).clamp(-1, 1)
    raise choice_error("task.corrupt", corrupt, CORRUPTIONS)


class SDEdit:
    """SDEdit at strength `t0` in (0, 1] from the guide of `corrupt` (module doc).

    sampler / steps / eta: the sampler run from t0 (null: the checkpoint's; t0 * steps of its
    steps are run); label / prompt / guidance_scale: the condition of a conditional checkpoint
    (the results' target class is `label`).
    """

    def __init__(self, t0: float = 0.5, corrupt: str = "none", stroke_size: int = 4, stroke_levels: int = 4,
                 noise_sigma: float = 0.5, sampler: str | None = None, steps: int | None = None,
                 eta: float | None = None, label: int | list[int] | None = None,
                 prompt: str | list[str] | None = None, guidance_scale: float | None = None):
        self.t0 = check_t0(t0, "task.t0")
        if corrupt not in CORRUPTIONS:
            raise choice_error("task.corrupt", corrupt, CORRUPTIONS)
        if not isinstance(stroke_size, int) or stroke_size < 1 or not isinstance(stroke_levels, int) \
                or stroke_levels < 2:
            raise UserError(f"task.stroke_size={stroke_size!r} / task.stroke_levels={stroke_levels!r}: "
                            f"need an integer >= 1 and an integer >= 2")
        self.corrupt, self.stroke_size, self.stroke_levels = corrupt, stroke_size, stroke_levels
        self.noise_sigma = float(noise_sigma)
        self.sampler_changes = {"name": sampler, "steps": steps, "eta": eta}
        self.label, self.prompt, self.guidance_scale = label, prompt, guidance_scale

    @torch.no_grad()
    def run(self, module: DiffusionModule, inputs: TaskInputs, generator: torch.Generator) -> TaskResult:
        require_image_checkpoint(module, "sdedit")
        images = inputs.images.to(torch.float32)
        guide = make_guide(images, self.corrupt, generator, self.stroke_size, self.stroke_levels, self.noise_sigma)
        options = module.sampler.replace(**self.sampler_changes).options()
        x = guide.to(module.device)
        if module.autoencoder is not None:
            x = module.autoencoder.encode(x, sample=False)
            options["clip_x0"] = False                  # latents are not bounded like pixels
        cond, guidance = task_condition(module, len(x), self.label, self.prompt, self.guidance_scale)
        out = sdedit(module.net, x, module.diffusion, self.t0, generator, cond=None if cond is None else
                     cond.to(module.device), device=module.device, **guidance, **options)
        if module.autoencoder is not None:
            out = module.autoencoder.decode(out)
        results = out.clamp(-1, 1).cpu()
        distance = (results - guide).flatten(1).pow(2).mean(1).sqrt().mean().item()
        return TaskResult(inputs=guide, results=results, target_labels=task_labels(module, len(x), self.label),
                          metrics={"t0": self.t0, "rms_distance_to_guide": distance})
