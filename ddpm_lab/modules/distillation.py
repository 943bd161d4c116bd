"""Distillation: a trained diffusion checkpoint (the teacher) taught to a few-step student, as a
training stage (`ddpm-train stage=distill distill=progressive teacher=<checkpoint or run folder>`).

The student is a `DiffusionModule` (same network, process and data; its sampler is the few-step
one, its guidance scale fixed at the teacher's), so its checkpoint samples and evaluates as any
other. The teacher is held outside the module tree (`Frozen`): it is not in the checkpoint's
weights, not trained and not averaged by EMA. The math is `ddpm_lab.diffusion.distillation`.

`ProgressiveDistillation` (Salimans & Ho 2022) trains in rounds of `steps_per_round` optimizer
steps; round r's student takes start_steps / 2^(r+1) steps. At the end of a round the student (its
EMA weights when EMA is on) becomes the teacher and the student of the next round starts from it;
the round's checkpoint (`checkpoints/round<r>-<n>steps.ckpt`) and sample grid
(`samples/round<r>-<n>steps.png`) are written. The round, and the teacher of rounds after the
first, live in every checkpoint, so a resume continues in the same round with the same teacher.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging

from ddpm_lab.data.batch import Batch
from ddpm_lab.diffusion.distillation import (
    alpha_sigma,
    check_halving,
    denoise,
    progressive_loss,
    progressive_target,
    round_steps,
    truncated_snr_weight,
)
from ddpm_lab.diffusion.guidance import Guider
from ddpm_lab.diffusion.samplers.registry import SAMPLERS
from ddpm_lab.modules.diffusion_module import DiffusionModule
from ddpm_lab.viz import log_grid, save_grid

STATE_KEY = "distillation"      # the checkpoint entry with the round and the current teacher


class Frozen:
    """A network kept outside the module tree: no gradients, not in state_dict, shared (not copied)
    by deepcopy (EMA's averaged copy of the module)."""

    def __init__(self, net: torch.nn.Module):
        self.net = net.eval().requires_grad_(False)

    def __deepcopy__(self, memo: dict) -> Frozen:
        return self


class DistillationModule(DiffusionModule):
    """What the distillation methods share: the frozen teacher, the guided teacher output, the
    student's batch loss and its validation."""

    kind = "distillation"

    def __init__(self, net: dict, schedule: dict, diffusion: dict, sampler: dict, data_info: dict,
                 optim: dict | None = None, guidance: dict | None = None, latent: dict | None = None,
                 image_to_video: dict | None = None, distill: dict | None = None, teacher: dict | None = None):
        super().__init__(net, schedule, diffusion, sampler, data_info, optim, guidance, latent, image_to_video)
        self.distill = dict(distill or {})
        self.teacher_info = dict(teacher or {})
        self.guidance_scale = float(self.distill.get("guidance_scale") or 1.0)
        self.teacher = Frozen(copy.deepcopy(self.net))
        self._grids: dict[tuple[int | str, str], torch.Tensor] = {}

    def set_teacher(self, net: torch.nn.Module, autoencoder: torch.nn.Module | None = None) -> None:
        """Start from the teacher's weights: the student is a copy of it."""
        self.net.load_state_dict(net.state_dict())
        self.teacher.net.load_state_dict(net.state_dict())
        if autoencoder is not None and self.autoencoder is not None:
            self.autoencoder.load_state_dict(autoencoder.state_dict())

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.teacher.net.to(self.device)

    def teacher_fn(self, cond):
        """The teacher as model(z, t): guided at the distilled scale for a conditional teacher."""
        return Guider(self.guidance_scale).bind(self.teacher.net, cond)

    def student_fn(self, cond):
        return lambda z, t: self.net(z, t, cond)

    @property
    def clip_x0(self) -> bool:
        return bool(self.sampler.clip_x0) and self.autoencoder is None

    def distillation_losses(self, x0: torch.Tensor, cond, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x0 = self.diffusion_input(batch)
        loss = self.distillation_losses(x0, self.condition_of(batch, drop=False)).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x0))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x0 = self.diffusion_input(batch, sample=False)
        gen = torch.Generator().manual_seed(1000 + batch_idx)        # fixed times and noise per batch
        loss = self.distillation_losses(x0, self.condition_of(batch, drop=False), gen).mean()
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(x0), sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[STATE_KEY] = {"teacher": self.teacher_info}

    def draw(self, shape, generator: torch.Generator | None, kind: str = "normal", high: int = 1) -> torch.Tensor:
        """Noise (kind "normal") or indices in [0, high) on the module's device: from `generator` (a
        CPU generator: validation's fixed draws) or, with None, from the device's global generator
        (as the diffusion losses draw theirs)."""
        device = "cpu" if generator is not None else self.device
        if kind == "normal":
            return torch.randn(shape, generator=generator, device=device).to(self.device)
        return torch.randint(0, high, shape, generator=generator, device=device).to(self.device)

    def grid(self, steps: int) -> torch.Tensor:
        """The student sampler's time grid of `steps` steps (the data end included), on the module's
        device; built once per step count (the training step asks for it every batch)."""
        key = (steps, str(self.device))
        if key not in self._grids:
            s = self.sampler
            grid = SAMPLERS[s.name].grid(self.diffusion, steps, s.spacing, shift=s.shift)
            self._grids[key] = torch.tensor(grid, device=self.device)
        return self._grids[key]


class ProgressiveDistillation(DistillationModule):
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2) in rounds that halve the steps."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        d = self.distill
        self.round_steps = round_steps(int(d["start_steps"]), int(d["final_steps"]))
        self.steps_per_round = int(d["steps_per_round"])
        self.round = 0
        for n in self.round_steps:
            check_halving(self.grid(2 * n).tolist(), self.grid(n).tolist())

    @staticmethod
    def final_steps_of(method: dict) -> int:
        """The student's step count at the end (its checkpoints' sampler.steps)."""
        return int(method["final_steps"])

    @property
    def total_steps(self) -> int:
        return len(self.round_steps) * self.steps_per_round

    @property
    def student_steps(self) -> int:
        return self.round_steps[self.round]

    def distillation_losses(self, x0: torch.Tensor, cond, generator: torch.Generator | None = None) -> torch.Tensor:
        n = self.student_steps
        teacher_grid = self.grid(2 * n)
        i = self.draw((len(x0),), generator, "index", n)
        t, t_mid, t_next = teacher_grid[2 * i], teacher_grid[2 * i + 1], teacher_grid[2 * i + 2]
        noise = self.draw(x0.shape, generator).to(x0.dtype)
        alpha, sigma = alpha_sigma(self.diffusion, t, x0)
        z = alpha * x0 + sigma * noise
        with torch.no_grad():
            target = progressive_target(self.teacher_fn(cond), self.diffusion, z, t, t_mid, t_next, self.clip_x0)
        student_x0, _ = denoise(self.student_fn(cond), self.diffusion, z, t)
        return progressive_loss(student_x0, target, truncated_snr_weight(self.diffusion, t, x0))

    # ----- rounds --------------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        while self.round + 1 < len(self.round_steps) and self.global_step >= (self.round + 1) * self.steps_per_round:
            self.finish_round()
        self.log("distill/round", float(self.round), on_step=True, on_epoch=False)
        self.log("distill/student_steps", float(self.student_steps), on_step=True, on_epoch=False)

    def averaged(self) -> WeightAveraging | None:
        found = [c for c in self.trainer.callbacks if isinstance(c, WeightAveraging)]
        return found[0] if found and found[0]._average_model is not None else None

    @torch.no_grad()
    def finish_round(self) -> None:
        """The student (its EMA weights) is written out and becomes the next round's teacher."""
        ema = self.averaged()
        if ema is not None:
            self.net.load_state_dict(ema._average_model.module.net.state_dict())
        self.write_round()
        self.teacher.net.load_state_dict(self.net.state_dict())
        self.round += 1

    def write_round(self) -> None:
        """The finished round's checkpoint and sample grid (in a ddpm-train run folder)."""
        out = self.run_info.get("output_dir")
        if not out or self.trainer.fast_dev_run:
            return
        name = f"round{self.round}-{self.student_steps}steps"
        self.trainer.save_checkpoint(Path(out) / "checkpoints" / f"{name}.ckpt")
        images = self.sample(64, seed=0, steps=self.student_steps)
        if len(self.image_shape) == 3:
            nrow = self.num_classes if self.guidance.conditional else None
            save_grid(images, Path(out) / "samples" / f"{name}.png", nrow=nrow, upscale=4)
            log_grid(self.trainer.loggers, "samples/round", images, self.global_step, nrow=nrow, upscale=4,
                     caption=name)

    # ----- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        hparams = dict(checkpoint.get("hyper_parameters") or self.hparams)
        hparams["sampler"] = {**hparams["sampler"], "steps": self.student_steps}   # this round's student
        checkpoint["hyper_parameters"] = hparams
        checkpoint[STATE_KEY].update(round=self.round, teacher_state=self.teacher.net.state_dict() if self.round else None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(STATE_KEY) or {}
        self.round = int(state.get("round", 0))
        if state.get("teacher_state") is not None:
            self.teacher.net.load_state_dict(state["teacher_state"])

