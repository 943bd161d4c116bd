"""Editing by inversion: an image is run up the deterministic ODE to noise under its own condition,
then down again under another label or prompt.

- DDPM checkpoints: DDIM inversion (Song et al. 2021, Sec. 4.3; `ddim_invert`) and DDIM (eta = 0)
  generation on the same timesteps;
- flow-matching checkpoints: Euler on the velocity ODE from s = 0 to 1 (`flow_invert`) and the
  flow Euler sampler back on the same grid;
- latent checkpoints: the same on the VAE latents (the posterior mean of the image), decoded.

The inversion runs under the source condition without guidance (w = 1: the image's label or
caption, or the null condition when the input has neither); the regeneration runs at
`guidance_scale` (None: the checkpoint's trained guidance.scale). With the same condition and
w = 1 the round trip returns the image, up to the ODE's discretisation error.

`t0` in (0, 1] is how far up the inversion goes (start.py: the timestep round(t0 T) - 1, or the
flow time s0 = t0); the regeneration starts there. t0 = 1 inverts all the way to noise; a smaller
t0 leaves the coarse layout of the image in the state, so the edit stays nearer the source and
changes its class less often (the encoding ratio of DiffEdit, Couairon et al. 2023, and the
intermediate time of SDEdit, here reached deterministically).

`clip_x0` (None: the checkpoint's sampler setting; never on latents) clips the regeneration's x0
prediction to [-1, 1] and re-derives eps from it (DDIM with use_clipped_model_output, steps.py), so
each step stays on the line through x_t and the clipped x0; pairing the clipped x0 with the
network's eps instead throws guided samples off the data (results.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.samplers import ddim_invert, flow_invert, sample
from ddpm_lab.diffusion.samplers.start import check_t0
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.tasks.base import TaskInputs, TaskResult
from ddpm_lab.tasks.restore import check_images, check_steps

if TYPE_CHECKING:
    from ddpm_lab.modules import DiffusionModule

__all__ = ["TARGETS", "EditByInversion"]

# target: a mapping from the source label to the new one
TARGETS = ("next", "same")


class EditByInversion:
    """Regenerate each input under a new condition: `label` (one class for all), `prompt` (text
    checkpoints), or `target` ("next": (label + 1) mod classes; "same": the image's own label or
    caption, the round trip). Exactly one of the three. `steps`: ODE steps over the whole way (about
    t0 * steps of them run each way); `guidance_scale`: the regeneration's (None: the checkpoint's);
    `t0`: how far up the inversion goes (1: to noise); `clip_x0`: clip the regeneration's x0 (None:
    the checkpoint's sampler setting)."""

    name = "edit"

    def __init__(self, label: int | None = None, prompt: str | None = None, target: str | None = None,
                 guidance_scale: float | None = None, steps: int = 50, t0: float = 0.5,
                 clip_x0: bool | None = None):
        given = [k for k, v in (("label", label), ("prompt", prompt), ("target", target)) if v is not None]
        if len(given) != 1:
            raise UserError(f"task=edit: give exactly one of task.label, task.prompt or task.target "
                            f"({', '.join(TARGETS)}); got {', '.join(given) or 'none'}")
        if target is not None and target not in TARGETS:
            raise choice_error("task.target", target, TARGETS)
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise UserError(f"task.label={label!r} must be a class index (an integer >= 0)")
        if guidance_scale is not None and (isinstance(guidance_scale, bool) or
                                           not isinstance(guidance_scale, (int, float)) or guidance_scale < 0):
            raise UserError(f"task.guidance_scale={guidance_scale!r} must be a number >= 0 or null")
        self.label, self.prompt, self.target = label, prompt, target
        self.guidance_scale, self.steps, self.t0 = guidance_scale, steps, check_t0(t0, "task.t0")
        if clip_x0 is not None and not isinstance(clip_x0, bool):
            raise UserError(f"task.clip_x0={clip_x0!r} must be true, false or null")
        self.clip_x0 = clip_x0

    # ----- conditions --------------------------------------------------------------------------
    def source_condition(self, module: DiffusionModule, inputs: TaskInputs) -> torch.Tensor | None:
        """The images' own condition: their labels, or captions for a text checkpoint; None (the
        null condition) when the input has neither."""
        n = len(inputs.images)
        if module.guidance.condition == "text" and inputs.captions is not None:
            return module.sampling_conditions(n, prompts=list(inputs.captions))
        if inputs.labels is not None and (module.guidance.condition != "text" or module.num_classes):
            return module.sampling_conditions(n, labels=inputs.labels)
        return None

    def target_condition(self, module: DiffusionModule, inputs: TaskInputs,
                         source: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The regeneration's condition and the class each result should read as (None: unknown)."""
        n = len(inputs.images)
        if self.prompt is not None:
            return module.sampling_conditions(n, prompts=self.prompt), None
        if self.label is not None:
            labels = module.sampling_labels(n, [self.label])
            return module.sampling_conditions(n, labels=labels), labels
        if self.target == "same":
            if source is None:
                raise UserError("task.target=same: the input has no labels or captions to regenerate under")
            return source, inputs.labels
        if inputs.labels is None or not module.num_classes:
            raise UserError("task.target=next maps each image's label to the next class: the input needs "
                            "labels (the held-out split has them) and the checkpoint classes")
        labels = (inputs.labels.long() + 1) % module.num_classes
        return module.sampling_conditions(n, labels=labels), labels

    # ----- the task ----------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, module: DiffusionModule, inputs: TaskInputs, generator: torch.Generator) -> TaskResult:
        if not module.guidance.conditional:
            raise UserError("task=edit: this checkpoint is unconditional (trained with guidance=none); editing "
                            "regenerates under another label or prompt: use a checkpoint trained with "
                            "guidance=classifier_free or guidance=text")
        check_images(module, inputs.images, self.name)
        steps = check_steps(self.steps, module)
        source = self.source_condition(module, inputs)
        cond, target_labels = self.target_condition(module, inputs, source)
        device = module.device
        images = inputs.images.float().to(device)
        x0 = images if module.autoencoder is None else module.autoencoder.encode(images, sample=False)
        source = None if source is None else source.to(device)
        scale = module.guidance.scale if self.guidance_scale is None else float(self.guidance_scale)
        start = None if self.t0 == 1.0 else self.t0          # t0 = 1: the sampler's whole grid
        clip = (module.sampler.clip_x0 if self.clip_x0 is None else self.clip_x0) and module.autoencoder is None
        if isinstance(module.diffusion, FlowMatching):
            noise = flow_invert(module.net, x0, module.diffusion, steps, shift=module.sampler.shift, cond=source,
                                start=start)
            options = {"sampler": "flow_euler", "shift": module.sampler.shift}
        else:
            noise = ddim_invert(module.net, x0, module.diffusion, steps, spacing=module.sampler.spacing, cond=source,
                                start=start)
            options = {"sampler": "ddim", "eta": 0.0, "spacing": module.sampler.spacing,
                       "use_clipped_model_output": True}
        out = sample(module.net, tuple(x0.shape), module.diffusion, steps=steps, x_T=noise, cond=cond.to(device),
                     guidance_scale=scale, clip_x0=clip, device=device, generator=generator, start=start,
                     **options)
        if module.autoencoder is not None:
            out = module.autoencoder.decode(out)
        results = out.clamp(-1.0, 1.0).cpu()
        distance = (results - inputs.images.cpu()).flatten(1).norm(dim=1)
        return TaskResult(inputs=inputs.images.cpu(), results=results, target_labels=target_labels,
                          metrics={"mean_l2_to_source": distance.mean().item(), "guidance_scale": scale,
                                   "t0": self.t0, "clip_x0": clip})
