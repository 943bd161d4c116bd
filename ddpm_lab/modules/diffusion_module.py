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
from ddpm_lab.diffusion.guidance import Guidance, drop_condition
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers import Sampler
from ddpm_lab.errors import UserError
from ddpm_lab.rng import rng_state, set_rng_state

CHECKPOINT_KEY = "ddpm_lab"


def build_diffusion(schedule: dict, diffusion: dict) -> GaussianDiffusion:
    return instantiate(diffusion, schedule=instantiate(schedule), _convert_="all")


class DiffusionModule(L.LightningModule):
    def __init__(self, net: dict, schedule: dict, diffusion: dict, sampler: dict,
                 data_info: dict, optim: dict | None = None, guidance: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = instantiate(net, _convert_="all")
        self.diffusion = build_diffusion(schedule, diffusion)
        self.sampler: Sampler = instantiate(sampler, _convert_="all")
        self.image_shape = tuple(data_info["image_shape"])
        self.guidance: Guidance = instantiate(guidance, _convert_="all") if guidance else Guidance()
        self.optim = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup_steps": 0,
                      **(optim or {})}
        # Set by train.run: the run's id (= its W&B run id) and folder; saved in every checkpoint.
        self.run_info: dict = {}
        self._rng_to_restore: dict | None = None

    # The network is the math's model_fn: called as net(x_t, t, cond), it may offer `guided(...)`.

    # ----- training -----------------------------------------------------------------------------
    def condition_of(self, batch, drop: bool) -> torch.Tensor | None:
        """The batch's labels for a conditional model (dropped to the null class with probability
        p_uncond when `drop`), None for an unconditional one."""
        if not self.guidance.conditional:
            return None
        labels = batch[1]
        return drop_condition(labels, self.net.num_classes, self.guidance.p_uncond) if drop else labels

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x0 = batch[0]
        loss = self.diffusion.training_losses(self.net, x0, cond=self.condition_of(batch, drop=True)).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x0))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x0 = batch[0]
        # Fixed t and noise per batch, so val/loss is comparable between epochs.
        gen = torch.Generator().manual_seed(1000 + batch_idx)
        t = torch.randint(0, self.diffusion.num_steps, (len(x0),), generator=gen).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device, x0.dtype)
        loss = self.diffusion.training_losses(self.net, x0, t=t, noise=noise,
                                              cond=self.condition_of(batch, drop=False)).mean()
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
    def sampling_labels(self, num_samples: int, labels=None) -> torch.Tensor | None:
        """Labels for `num_samples` samples: None (unconditional model), the given label(s), or
        0, 1, ..., K-1 repeated (every class in turn) when none are given."""
        if not self.guidance.conditional:
            if labels is not None:
                raise UserError(f"label={labels}: this checkpoint is unconditional (trained with "
                                f"guidance=none); train with guidance=classifier_free to condition")
            return None
        k = self.net.num_classes
        if labels is None:
            return torch.arange(num_samples) % k
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        bad = labels[(labels < 0) | (labels >= k)]
        if len(bad):
            raise UserError(f"label={bad[0].item()} is outside the {k} classes of "
                            f"{self.hparams['data_info'].get('name')} (0..{k - 1})")
        if len(labels) not in (1, num_samples):
            raise UserError(f"label: {len(labels)} labels for {num_samples} samples; give one label or one per sample")
        return labels.expand(num_samples) if len(labels) == 1 else labels

    def guidance_options(self, scale: float | None, rescale: float | None) -> dict:
        """guidance_scale / guidance_rescale for the sampler: the trained defaults unless given."""
        if not self.guidance.conditional:
            if (scale is not None and scale != 1.0) or rescale:
                raise UserError(f"guidance.scale={scale}: this checkpoint is unconditional (trained "
                                f"with guidance=none), there is nothing to guide")
            return {}
        return {"guidance_scale": self.guidance.scale if scale is None else float(scale),
                "guidance_rescale": self.guidance.rescale if rescale is None else float(rescale)}

    @torch.no_grad()
    def sample(self, num_samples: int, seed: int = 0, batch_size: int | None = None,
               return_trajectory: bool = False, progress: bool = False, labels=None,
               guidance_scale: float | None = None, guidance_rescale: float | None = None,
               **overrides: Any):
        """Images in [-1, 1] (or points, for vector data) from the configured sampler (overrides:
        steps, sampler, eta, ...).

        A class-conditional model samples `labels` (default: every class in turn) with classifier-
        free guidance at `guidance_scale` (default: the trained guidance.scale).
        Seeding: batch b uses generator seed (seed, b), so results do not depend on the device.
        """
        labels = self.sampling_labels(num_samples, labels)
        overrides = {**self.guidance_options(guidance_scale, guidance_rescale), **overrides}
        was_training = self.training
        self.eval()
        batch_size = batch_size or num_samples
        outs, trajs = [], []
        try:
            for b in range(math.ceil(num_samples / batch_size)):
                n = min(batch_size, num_samples - b * batch_size)
                gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
                cond = None if labels is None else labels[b * batch_size: b * batch_size + n].to(self.device)
                out = self.sampler(self.net, (n, *self.image_shape), self.diffusion, cond=cond,
                                   generator=gen, device=self.device, return_trajectory=return_trajectory,
                                   progress=progress, **overrides)
                if return_trajectory:
                    out, traj = out
                    trajs.append(traj)
                outs.append((out.clamp(-1, 1) if len(self.image_shape) == 3 else out).cpu())   # images: [-1, 1]
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
