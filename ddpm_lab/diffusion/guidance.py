"""Classifier-free guidance (Ho & Salimans 2022) with the diffusers convention:

    out = out_uncond + w * (out_cond - out_uncond)

w = 1 is the plain conditional model, w = 0 the unconditional one (the paper's w is ours - 1).
The combination is linear in the model output, so it is the same for eps, x0 and v outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lab.errors import UserError

Tensor = torch.Tensor


def check_guidance_scale(scale: float) -> None:
    if scale < 0:
        raise UserError(f"guidance.scale={scale} must be >= 0 (0 = unconditional, 1 = conditional)")


def combine(out_cond: Tensor, out_uncond: Tensor, scale: float) -> Tensor:
    """out_u + w (out_c - out_u)."""
    return out_uncond + scale * (out_cond - out_uncond)


def guided_model_fn(model_fn: Callable, cond, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """A function (x_t, t) -> output with guidance applied.

    If `model_fn` has a `guided(x_t, t, cond, scale)` method (the library's network adapters do)
    it is used: one batched forward for both passes. A plain callable is asked twice, the
    unconditional pass as `model_fn(x_t, t, None)`.
    """
    check_guidance_scale(scale)
    if cond is None or scale == 1.0:
        return lambda x, t: model_fn(x, t, cond)
    if scale == 0.0:
        return lambda x, t: model_fn(x, t, None)
    batched = getattr(model_fn, "guided", None)
    if batched is not None:
        return lambda x, t: batched(x, t, cond, scale)
    return lambda x, t: combine(model_fn(x, t, cond), model_fn(x, t, None), scale)


def batched_guidance(net: Callable, x: Tensor, t: Tensor, cond: Tensor, null_cond: Tensor,
                     scale: float) -> Tensor:
    """Conditional and unconditional passes of `net` as one forward on a doubled batch."""
    t2 = t.repeat(2) if t.ndim else t
    out_c, out_u = net(torch.cat([x, x]), t2, torch.cat([cond, null_cond])).chunk(2)
    return combine(out_c, out_u, scale)
