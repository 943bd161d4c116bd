"""The contract every downstream task follows: inputs in, results and figures out.

`ddpm-edit` builds a task from its config (`_target_`), hands it a trained `DiffusionModule`
(EMA weights, eval mode) and a batch of `TaskInputs`, and writes what `run` returns: the images
the method was given, its results beside the truth, and the task's own figures in
`metrics.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from ddpm_lab.errors import UserError

if TYPE_CHECKING:
    from ddpm_lab.modules import DiffusionModule


@dataclass
class TaskInputs:
    """Images to work on, in pixel space: (N, C, H, W) in [-1, 1].

    `labels` (N,) int64 and `captions` are the images' own class and text when the input has
    them (the held-out split does; a plain image folder may not).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    captions: list[str] | None = None


@dataclass
class TaskResult:
    """What a task returns.

    `inputs`: what the method saw, as images (N, C, H, W) in [-1, 1] (the masked image, the
    upsampled low-resolution image, the noisy image, the guide), shown first in the figure.
    `results`: the method's output, (N, C, H, W) in [-1, 1].
    `target_labels`: the class each result should read as, when a task changes it (editing).
    `metrics`: the task's own figures (e.g. the largest |A x - y|), written to metrics.json.
    """

    inputs: torch.Tensor
    results: torch.Tensor
    target_labels: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Task(Protocol):
    """A downstream task: configured once, run on a trained module and a batch of inputs."""

    def run(self, module: DiffusionModule, inputs: TaskInputs,
            generator: torch.Generator) -> TaskResult: ...


def task_condition(module: DiffusionModule, num: int, label=None, prompt=None,
                   guidance_scale: float | None = None) -> tuple[torch.Tensor | None, dict]:
    """(cond, guidance options) of a task's `label` / `prompt` options for `num` images.

    Neither given: None and no guidance (a conditional network then runs its learned null
    condition: the unconditional model). Given: the module's conditions (`sampling_conditions`:
    a class-conditional model takes labels, a text model prompts or its class prompts) with
    classifier-free guidance at `guidance_scale` (None: the checkpoint's scale).
    """
    if label is None and prompt is None:
        if guidance_scale is not None:
            raise UserError(f"task.guidance_scale={guidance_scale}: guidance needs a condition; give task.label "
                            f"or task.prompt (a conditional checkpoint)")
        return None, {}
    cond = module.sampling_conditions(num, label, prompt)
    return cond, module.guidance_options(guidance_scale, None)


def require_image_checkpoint(module: DiffusionModule, task: str) -> None:
    """One error for the image tasks run on a checkpoint of clips or 2-D points."""
    if module.is_video or len(module.image_shape) != 3:
        raise UserError(f"task={task}: works on image checkpoints; this one makes "
                        f"{'video clips' if module.is_video else 'points'}")


def task_labels(module: DiffusionModule, num: int, label=None) -> torch.Tensor | None:
    """The class each result should read as when the task conditions on `label` (else None)."""
    return None if label is None else module.sampling_labels(num, label)
