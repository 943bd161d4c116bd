"""Zero-shot classification with a conditional checkpoint: the diffusion classifier of Li et al.
2023 (`ddpm_lab.diffusion.classifier`), the Python API behind `ddpm-eval metrics=[classify]`.

A class-conditional checkpoint is asked with each label, a text checkpoint with each of its data
set's class prompts ("a red circle", ...), without guidance (w = 1: the plain conditional
prediction). A latent checkpoint classifies the posterior mean of each image's latent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ddpm_lab.diffusion.classifier import class_errors, draw_times, predict
from ddpm_lab.errors import UserError

if TYPE_CHECKING:
    from ddpm_lab.modules import DiffusionModule


def class_conditions(module: DiffusionModule) -> torch.Tensor:
    """One condition per class: the labels 0..C-1, or the token ids of the C class prompts."""
    if not module.guidance.conditional:
        raise UserError("metrics: 'classify' needs a class-conditional or text checkpoint; this one is "
                        "unconditional (trained with guidance=none)")
    if not module.num_classes:
        raise UserError("metrics: 'classify' needs classes; this text checkpoint's data set has no class prompts")
    return module.sampling_conditions(module.num_classes, labels=torch.arange(module.num_classes))


@torch.no_grad()
def classify(module: DiffusionModule, images: torch.Tensor, draws: int = 32, seed: int = 0,
             batch_size: int = 512) -> dict:
    """{"predicted" (N,), "errors" (N, C, K)} for images (N, C, H, W) in [-1, 1]: K = `draws`
    (t, eps) draws per image, shared by the C classes; N C K network calls."""
    if draws < 1:
        raise UserError(f"classify.draws={draws} must be >= 1")
    conds = class_conditions(module).to(module.device)
    x0 = images.float().to(module.device)
    if module.autoencoder is not None:
        x0 = module.autoencoder.encode(x0, sample=False)
    generator = torch.Generator().manual_seed(seed)
    t = draw_times(module.diffusion, (len(x0), draws), generator)
    noise = torch.randn((len(x0), draws, *x0.shape[1:]), generator=generator)
    errors = class_errors(module.net, module.diffusion, x0, conds, t, noise, batch_size)
    return {"predicted": predict(errors), "errors": errors}


def accuracy_by_draws(errors: torch.Tensor, labels: torch.Tensor, draws: list[int]) -> dict[int, float]:
    """Accuracy when only the first k draws of each image are used, for each k in `draws`."""
    return {k: float((predict(errors, k) == labels.to(errors.device)).double().mean()) for k in draws}
