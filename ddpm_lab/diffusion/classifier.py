"""The diffusion classifier (Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot
Classifier", Sec. 3 and Algorithm 1).

A conditional model scores class c of an image x_0 by its denoising error
    E_{t, eps} || eps - eps_theta(x_t, t, c) ||^2,   x_t = q_sample(x_0, t, eps),
an estimate of the ELBO of log p(x_0 | c) with the weights set to one; the class with the smallest
error wins (a uniform prior over classes). The K (t, eps) draws of an image are shared by every
class, so the classes differ only in the condition (paired differences, lower variance). A model
that predicts x0 or v is compared in eps-space through the process's conversion
(`predict_x0_eps`). Times: t ~ Uniform{0..T-1} for DDPM, s ~ Uniform(0, 1) for flow matching.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.process import GaussianDiffusion, per_example_mse

Tensor = torch.Tensor
ModelFn = Callable[[Tensor, Tensor, object], Tensor]
Process = GaussianDiffusion | FlowMatching


def draw_times(process: Process, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Uniform times: int64 timesteps 0..T-1 (DDPM) or float s in [0, 1) (flow matching)."""
    if isinstance(process, FlowMatching):
        return torch.rand(shape, generator=generator, dtype=torch.float64)
    return torch.randint(0, process.num_steps, shape, generator=generator)


def network_time(process: Process, t: Tensor) -> Tensor:
    """What the network is given for time t: t itself (DDPM) or time_scale * s (flow)."""
    return process.network_time(t) if isinstance(process, FlowMatching) else t


def class_errors(model_fn: ModelFn, process: Process, x0: Tensor, conds: Tensor, t: Tensor,
                 noise: Tensor, batch_size: int = 512) -> Tensor:
    """The eps-space error mean_d (eps - eps_hat(x_t, t, c))^2 of every image, class and draw:
    (N, C, K) for images x0 (N, ...), one condition per class `conds` (C, ...), times t (N, K) and
    noise (N, K, ...) shared by the classes. N K C network calls, `batch_size` rows at a time."""
    n, k, c = len(x0), t.shape[1], len(conds)
    image = torch.arange(n).repeat_interleave(k * c)          # rows ordered (image, draw, class)
    draw = torch.arange(k).repeat_interleave(c).repeat(n)
    label = torch.arange(c).repeat(n * k)
    out = []
    for start in range(0, len(image), batch_size):
        i, j, y = (v[start:start + batch_size] for v in (image, draw, label))
        x, tt, eps = x0[i], t[i, j].to(x0.device), noise[i, j].to(x0.device, x0.dtype)
        tt = tt.to(x0.dtype) if tt.is_floating_point() else tt
        x_t = process.q_sample(x, tt, eps)
        output = model_fn(x_t, network_time(process, tt), conds[y.to(conds.device)])
        eps_hat = process.predict_x0_eps(output, x_t, tt)[1]
        out.append(per_example_mse(eps_hat, eps).cpu())
    return torch.cat(out).reshape(n, k, c).transpose(1, 2)


def predict(errors: Tensor, draws: int | None = None) -> Tensor:
    """The class of smallest mean error over the first `draws` draws (all when None), (N,)."""
    return errors[..., :draws].mean(-1).argmin(-1)
