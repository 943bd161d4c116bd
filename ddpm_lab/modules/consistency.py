"""ConsistencyDistillation: consistency distillation (Song et al. 2023, Algorithm 2) of a teacher
checkpoint (`ddpm-train stage=distill distill=consistency teacher=...`); the math is
`ddpm_lab.diffusion.consistency`.

The student starts as a copy of the teacher; the target network theta- (an EMA of the student with
decay `target_decay`, updated after every optimizer step) is held outside the module tree and saved
in the checkpoint's `distillation` entry, so a resume continues with it. The student samples with
the "consistency" sampler (one step, or several with `sampler.steps`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ddpm_lab.diffusion.consistency import consistency_fn, ema_update, pseudo_huber, training_grid
from ddpm_lab.diffusion.distillation import alpha_sigma, ddim_step, network_time
from ddpm_lab.modules.distillation import STATE_KEY, DistillationModule, Frozen


class ConsistencyDistillation(DistillationModule):
    """The student f_theta trained to agree with theta- one teacher ODE step closer to the data."""

    sampler_name = "consistency"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        d = self.distill
        self.num_points = int(d["num_points"])
        self.target_decay = float(d["target_decay"])
        self.total_steps = int(d["steps"])
        self.target = Frozen(copy.deepcopy(self.net))

    @staticmethod
    def final_steps_of(method: dict) -> int:
        times = method.get("sampling_times")
        return len(times) if times else int(method["sampling_steps"])

    def set_teacher(self, net: torch.nn.Module, autoencoder: torch.nn.Module | None = None) -> None:
        super().set_teacher(net, autoencoder)
        self.target.net.load_state_dict(net.state_dict())

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.target.net.to(self.device)

    def training_times(self) -> torch.Tensor:
        """t_N > ... > t_1 = eps_min (`training_grid` of the `num_points` grid), built once per device."""
        key = ("training", str(self.device))
        if key not in self._grids:
            self._grids[key] = training_grid(self.grid(self.num_points), self.diffusion)
        return self._grids[key]

    def consistency(self, net: torch.nn.Module, z: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """f of `net` at (z, t)."""
        return consistency_fn(self.diffusion, net(z, network_time(self.diffusion, t), cond), z, t)

    def distillation_losses(self, x0: torch.Tensor, cond, generator: torch.Generator | None = None) -> torch.Tensor:
        grid = self.training_times()
        i = self.draw((len(x0),), generator, "index", self.num_points)
        t, t_next = grid[i], grid[i + 1]
        noise = self.draw(x0.shape, generator).to(x0.dtype)
        alpha, sigma = alpha_sigma(self.diffusion, t, x0)
        z = alpha * x0 + sigma * noise
        with torch.no_grad():
            z_next = ddim_step(self.teacher_fn(cond), self.diffusion, z, t, t_next, self.clip_x0)
            target = self.consistency(self.target.net, z_next, t_next, cond)
        return pseudo_huber(self.consistency(self.net, z, t, cond), target)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        ema_update(self.target.net, self.net, self.target_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[STATE_KEY]["target_state"] = self.target.net.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = (checkpoint.get(STATE_KEY) or {}).get("target_state")
        if state is not None:
            self.target.net.load_state_dict(state)
