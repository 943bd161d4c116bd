"""Linear inverse problems with DDNM / DDNM+ (diffusion/ddnm.py): super-resolution by k x k
average pooling, denoising at a known sigma, inpainting as the masked operator.

Each task measures y = A x (+ sigma n) from the input images, shows y as an image (upsampled,
noisy, zero-filled) and restores x from y with the checkpoint's network, unconditionally (a
conditional checkpoint runs on its null condition). Its figures: the largest |A x - y| of the
DDNM output, and after clipping the output to [-1, 1] for the images (noiseless tasks).

DDPM and flow-matching pixel checkpoints (flow through the flow/DDPM correspondence). Latent
checkpoints are refused: A acts on pixels and the decoder is not linear, so the null-space
projection has no meaning on latents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ddpm_lab.diffusion.ddnm import check_ddnm_options, ddnm
from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.operators import AveragePool, Identity, LinearOperator, Masked
from ddpm_lab.errors import UserError
from ddpm_lab.tasks.base import TaskInputs, TaskResult, require_image_checkpoint
from ddpm_lab.tasks.masks import make_mask

if TYPE_CHECKING:
    from ddpm_lab.modules import DiffusionModule

__all__ = ["Denoise", "InpaintDDNM", "Restoration", "SuperResolution", "check_images"]


def check_steps(steps: object, module: DiffusionModule, key: str = "task.steps") -> int:
    """An integer >= 1, and at most T on a DDPM checkpoint."""
    flow = isinstance(module.diffusion, FlowMatching)
    top = None if flow else module.diffusion.num_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (top is not None and steps > top):
        allowed = "an integer >= 1" if top is None else f"an integer in [1, {top}] (the schedule's num_steps)"
        raise UserError(f"{key}={steps!r} must be {allowed}")
    return steps


def check_images(module: DiffusionModule, images: torch.Tensor, task: str) -> None:
    """Images (N, C, H, W) of the checkpoint's own image shape."""
    require_image_checkpoint(module, task)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(module.image_shape):
        raise UserError(f"task={task}: input images of shape {tuple(images.shape[1:])}; this checkpoint's "
                        f"images are {tuple(module.image_shape)} (channels, height, width)")


class Restoration:
    """A linear inverse problem y = A x + sigma n solved by DDNM (sigma = 0) or DDNM+.

    steps: reverse steps (DDIM's grid on DDPM, the flow grid on flow); eta: the share of each
    step's noise that is fresh (0.85 as the official DDNM code; 0 = deterministic DDIM steps,
    noiseless y only);
    clip_x0: clip x0|t to [-1, 1] before the correction (None: the checkpoint's sampler setting).
    """

    name = "restore"
    sigma: float = 0.0

    def __init__(self, steps: int = 100, eta: float = 0.85, clip_x0: bool | None = None):
        check_ddnm_options(eta, self.sigma, prefix="task.")
        self.steps, self.eta, self.clip_x0 = steps, float(eta), clip_x0

    def operator(self, size: tuple[int, int], generator: torch.Generator) -> LinearOperator:
        raise NotImplementedError

    def measure(self, operator: LinearOperator, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """y = A x + sigma n, n ~ N(0, I) drawn from `generator`."""
        y = operator.A(images)
        if self.sigma > 0:
            y = y + self.sigma * torch.randn(y.shape, generator=generator, dtype=y.dtype)
        return y

    @torch.no_grad()
    def run(self, module: DiffusionModule, inputs: TaskInputs, generator: torch.Generator) -> TaskResult:
        if module.autoencoder is not None:
            raise UserError(f"task={self.name}: this is a latent diffusion checkpoint; DDNM's operator A acts "
                            f"on pixels and the decoder is not linear, so the null-space projection does not "
                            f"apply to latents: use a pixel checkpoint")
        check_images(module, inputs.images, self.name)
        steps = check_steps(self.steps, module)
        images = inputs.images.float().cpu()
        operator = self.operator(tuple(images.shape[-2:]), generator)
        y = self.measure(operator, images, generator)
        clip = module.sampler.clip_x0 if self.clip_x0 is None else bool(self.clip_x0)
        x = ddnm(module.net, y, operator, tuple(images.shape), module.diffusion, steps=steps,
                 spacing=module.sampler.spacing, eta=self.eta, sigma_y=self.sigma, clip_x0=clip,
                 shift=module.sampler.shift, generator=generator, device=module.device).cpu()
        results = x.clamp(-1.0, 1.0)
        metrics = {}
        if self.sigma == 0:
            metrics["max_abs_Ax_minus_y"] = (operator.A(x) - y).abs().max().item()
            metrics["max_abs_Ax_minus_y_clipped"] = (operator.A(results) - y).abs().max().item()
        return TaskResult(inputs=operator.shown(y).clamp(-1.0, 1.0), results=results, metrics=metrics)


class SuperResolution(Restoration):
    """x `factor` super-resolution: y is the k x k average-pooled image (k = factor)."""

    name = "superres"

    def __init__(self, factor: int = 4, steps: int = 100, eta: float = 0.85, clip_x0: bool | None = None):
        super().__init__(steps, eta, clip_x0)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise UserError(f"task.factor={factor!r} must be an integer >= 2 (2 and 4: x2 and x4 super-resolution)")
        self.factor = factor

    def operator(self, size: tuple[int, int], generator: torch.Generator) -> LinearOperator:
        pool = AveragePool(self.factor)
        pool.check_size(size, key="task.factor")
        return pool


class Denoise(Restoration):
    """Denoising: A = I, y = x + sigma n with sigma in [-1, 1] units (DDNM+ for sigma > 0)."""

    name = "denoise"

    def __init__(self, sigma: float = 1.0, steps: int = 100, eta: float = 0.85, clip_x0: bool | None = None):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
            raise UserError(f"task.sigma={sigma!r} must be a number >= 0 (the noise std in [-1, 1] units)")
        self.sigma = float(sigma)
        super().__init__(steps, eta, clip_x0)

    def operator(self, size: tuple[int, int], generator: torch.Generator) -> LinearOperator:
        return Identity()


class InpaintDDNM(Restoration):
    """Inpainting as the masked operator: y is the known pixels (tasks/masks.py: `mask`, and
    `known_fraction` for random_pixels, drawn from the run's generator)."""

    name = "inpaint_ddnm"

    def __init__(self, mask: str = "bottom_half", known_fraction: float = 0.5, steps: int = 100,
                 eta: float = 0.85, clip_x0: bool | None = None):
        super().__init__(steps, eta, clip_x0)
        self.mask, self.known_fraction = mask, known_fraction

    def operator(self, size: tuple[int, int], generator: torch.Generator) -> LinearOperator:
        return Masked(make_mask(self.mask, size, generator, self.known_fraction))
