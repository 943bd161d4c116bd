"""Classifier-free guidance (Ho & Salimans 2022) with the diffusers convention:

    out = out_uncond + w * (out_cond - out_uncond)

w = 1 is the plain conditional model, w = 0 the unconditional one (the paper's w is ours - 1).
The combination is linear in the model output, so it is the same for eps, x0 and v outputs.
Guidance rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
Eq. 15-16) pulls the guided output's per-sample std back towards the conditional one's:
out = phi * out * std(out_c) / std(out) + (1 - phi) * out.

`Guider` is the one implementation the samplers use (as the guiders of Stability-AI's
generative-models): it builds the doubled batch, combines and rescales.
Training drops the condition with probability `p_uncond` (Ho & Salimans, Algorithm 1), so one
network learns both the conditional and the unconditional model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ddpm_lab.errors import UserError, choice_error

Tensor = torch.Tensor
CONDITIONS = (None, "label", "text")


@dataclass
class Guidance:
    """What the model is conditioned on and how guidance is applied (conf/guidance/*.yaml).

    condition: None (unconditional model), "label" (class labels of the data set) or "text" (the
    data set's captions, through a text encoder trained with the network);
    p_uncond: probability of dropping the condition in training; scale: the default w at sampling;
    rescale: the default phi of guidance rescale (0 = off).
    """

    condition: str | None = None
    p_uncond: float = 0.1
    scale: float = 1.0
    rescale: float = 0.0

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise choice_error("guidance.condition", self.condition, CONDITIONS)
        if not 0.0 <= self.p_uncond <= 1.0:
            raise UserError(f"guidance.p_uncond={self.p_uncond} must lie in [0, 1]")
        check_guidance_scale(self.scale)
        check_guidance_rescale(self.rescale)

    @property
    def conditional(self) -> bool:
        return self.condition is not None


def check_guidance_scale(scale: float) -> None:
    if scale < 0:
        raise UserError(f"guidance.scale={scale} must be >= 0 (0 = unconditional, 1 = conditional)")


def check_guidance_rescale(rescale: float) -> None:
    if not 0.0 <= rescale <= 1.0:
        raise UserError(f"guidance.rescale={rescale} must lie in [0, 1] (0 = off)")


def drop_condition(cond: Tensor, null_value: int | Tensor, p_uncond: float,
                   generator: torch.Generator | None = None) -> Tensor:
    """Replace each row of `cond` (a label, or a prompt's token ids) by the null condition (the
    null class, or the empty prompt's ids) with probability p_uncond (classifier-free training)."""
    if p_uncond <= 0:
        return cond
    drop = torch.rand(cond.shape[0], device=cond.device, generator=generator) < p_uncond
    null = torch.as_tensor(null_value, dtype=cond.dtype, device=cond.device).expand_as(cond)
    return torch.where(drop.reshape(-1, *[1] * (cond.ndim - 1)), null, cond)


def combine(out_cond: Tensor, out_uncond: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """out_u + w (out_c - out_u), then guidance rescale with factor phi = `rescale` (Lin et al. 2024,
    Eq. 15-16: the per-sample std over all but the batch dimension)."""
    out = out_uncond + scale * (out_cond - out_uncond)
    if rescale > 0:
        dims = tuple(range(1, out.ndim))
        ratio = out_cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True).clamp_min(1e-12)
        out = rescale * out * ratio + (1 - rescale) * out
    return out


@runtime_checkable
class NullConditioned(Protocol):
    """A model that names its learned null condition (the library's networks, through
    `nets.conditioning.Conditioned`): the Guider batches it with the condition in one forward."""

    def null_condition(self, batch: int, device: torch.device | str) -> Tensor | None: ...


class Guider:
    """Classifier-free guidance as one object, used by every sampler: out_u + w (out_c - out_u),
    then guidance rescale (phi = `rescale`, 0 = off).

    The two passes: a model that is `NullConditioned` (with a null condition) gets one forward on
    the doubled batch (x, t, cond) + (x, t, null); a plain callable is asked twice, the
    unconditional pass as `model_fn(x_t, t, None)`. w = 1 (without rescale) and a missing
    condition need only the conditional pass, w = 0 only the unconditional one.
    """

    def __init__(self, scale: float = 1.0, rescale: float = 0.0):
        check_guidance_scale(scale)
        check_guidance_rescale(rescale)
        self.scale, self.rescale = scale, rescale

    def __repr__(self) -> str:
        return f"Guider(scale={self.scale}, rescale={self.rescale})"

    def combine(self, out_cond: Tensor, out_uncond: Tensor) -> Tensor:
        """The guided output from the conditional and the unconditional one."""
        return combine(out_cond, out_uncond, self.scale, self.rescale)

    @staticmethod
    def doubled(x: Tensor, t: Tensor, cond: Tensor, null_cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The doubled batch: conditional rows first, then the same rows with the null condition
        (a 0-dim t is shared)."""
        t2 = t.repeat(2) if t.ndim else t
        return torch.cat([x, x]), t2, torch.cat([cond, null_cond])

    def bind(self, model_fn: Callable, cond) -> Callable[[Tensor, Tensor], Tensor]:
        """The guided model (x_t, t) -> output for the condition `cond` (None: unconditional)."""
        if cond is None or (self.scale == 1.0 and self.rescale == 0.0):
            return lambda x, t: model_fn(x, t, cond)
        if self.scale == 0.0:
            return lambda x, t: model_fn(x, t, None)
        null = model_fn.null_condition(len(cond), cond.device) if isinstance(model_fn, NullConditioned) else None
        if null is None:
            return lambda x, t: self.combine(model_fn(x, t, cond), model_fn(x, t, None))

        def batched(x: Tensor, t: Tensor) -> Tensor:
            out_c, out_u = model_fn(*self.doubled(x, t, cond, null)).chunk(2)
            return self.combine(out_c, out_u)

        return batched

    def __call__(self, model_fn: Callable, x_t: Tensor, t: Tensor, cond) -> Tensor:
        """One guided prediction of `model_fn` at (x_t, t) for `cond`."""
        return self.bind(model_fn, cond)(x_t, t)
