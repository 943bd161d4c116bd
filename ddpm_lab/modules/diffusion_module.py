"""DiffusionModule: the Lightning wrapper around the diffusion math (thin by design).

It is built from plain config dicts (net, schedule, diffusion, sampler, optim, data_info) and
saves them as hyper-parameters, so `DiffusionModule.load_from_checkpoint(path)` rebuilds the
network, schedule and sampler defaults with nothing else. With Lightning's EMAWeightAveraging the
checkpoint's `state_dict` holds the EMA weights, which is what sampling should use.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

import ddpm_lab
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers import Sampler
from ddpm_lab.rng import rng_state, set_rng_state

CHECKPOINT_KEY = "ddpm_lab"


def build_diffusion(schedule: dict, diffusion: dict) -> GaussianDiffusion:
    return instantiate(diffusion, schedule=instantiate(schedule), _convert_="all")


class DiffusionModule(L.LightningModule):
    def __init__(self, net: dict, schedule: dict, diffusion: dict, sampler: dict,
                 data_info: dict, optim: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = instantiate(net, _convert_="all")
        self.diffusion = build_diffusion(schedule, diffusion)
        self.sampler: Sampler = instantiate(sampler, _convert_="all")
        self.image_shape = tuple(data_info["image_shape"])
        self.optim = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup_steps": 0,
                      **(optim or {})}
        # Set by train.run: the run's id (= its W&B run id) and folder; saved in every checkpoint.
        self.run_info: dict = {}
        self._rng_to_restore: dict | None = None

    # The network is the math's model_fn: called as net(x_t, t, cond), it may offer `guided(...)`.

    # ----- training -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x0 = batch[0]
        loss = self.diffusion.training_losses(self.net, x0).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x0))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x0 = batch[0]
        # Fixed t and noise per batch, so val/loss is comparable between epochs.
        gen = torch.Generator().manual_seed(1000 + batch_idx)
        t = torch.randint(0, self.diffusion.num_steps, (len(x0),), generator=gen).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device, x0.dtype)
        loss = self.diffusion.training_losses(self.net, x0, t=t, noise=noise).mean()
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(x0), sync_dist=True)

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(self.net.parameters(), lr=o["lr"], weight_decay=o["weight_decay"],
                                betas=tuple(o["betas"]))
        warmup = max(int(o["warmup_steps"]), 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # FSDP shards the gradients: the norm must be taken over all shards, which its own
        # clip_grad_norm_ does (Lightning's precision plugin refuses norm clipping under FSDP).
        from torch.distributed.fsdp import FullyShardedDataParallel
        model = self.trainer.model if self._trainer is not None else None
        if (gradient_clip_val and gradient_clip_algorithm in (None, "norm")
                and isinstance(model, FullyShardedDataParallel)):
            model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ----- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num_samples: int, seed: int = 0, batch_size: int | None = None,
               return_trajectory: bool = False, progress: bool = False, **overrides: Any):
        """Images in [-1, 1] from the configured sampler (overrides: steps, sampler, eta, ...).

        Seeding: batch b uses generator seed (seed, b), so results do not depend on the device.
        """
        was_training = self.training
        self.eval()
        batch_size = batch_size or num_samples
        outs, trajs = [], []
        try:
            for b in range(math.ceil(num_samples / batch_size)):
                n = min(batch_size, num_samples - b * batch_size)
                gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
                out = self.sampler(self.net, (n, *self.image_shape), self.diffusion,
                                   generator=gen, device=self.device, return_trajectory=return_trajectory,
                                   progress=progress, **overrides)
                if return_trajectory:
                    out, traj = out
                    trajs.append(traj)
                outs.append(out.clamp(-1, 1).cpu())
        finally:
            self.train(was_training)
        images = torch.cat(outs)
        return (images, torch.cat(trajs, dim=1)) if return_trajectory else images

    # ----- checkpoints and exact resume ---------------------------------------------------------
    def on_fit_start(self) -> None:
        # seed_everything gives every DDP rank the same seed: offset it so ranks draw independent
        # timesteps and noise (rank 0 keeps the configured seed).
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.trainer.global_rank)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Restored here, right before the first step after a resume, so nothing else (data loader
        # set-up, validation) draws from the generators in between.
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        states = [rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, rng_state())
        checkpoint[CHECKPOINT_KEY] = {"version": ddpm_lab.__version__, "format": 1,
                                      "run": dict(self.run_info), "rng": states}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get(CHECKPOINT_KEY, {}).get("rng") or []
        trainer = self._trainer
        if trainer is None or not states:
            return
        if len(states) == trainer.world_size:
            self._rng_to_restore = states[trainer.global_rank]
        else:
            rank_zero_warn(f"the checkpoint holds random states for {len(states)} processes, this run has "
                           f"{trainer.world_size}: training continues with fresh random streams")
