"""RunModule: what every ddpm_lab LightningModule shares - the configured optimizer (AdamW by
default) with linear warm-up and an optional cosine decay, gradient clipping under FSDP, and the
checkpoint entries that make a resume exact (the run's id and every random generator's state, per
rank)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

import ddpm_lab
from ddpm_lab.checkpoint_io import CHECKPOINT_KEY, FORMAT, read_checkpoint, upgrade_checkpoint
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.rng import rng_state, set_rng_state

LR_DECAYS = ("constant", "cosine")


@dataclass
class LRMultiplier:
    """The learning rate's factor at optimizer step `step`: linear warm-up over `warmup` steps, then
    constant or a half-cosine from 1 down to `final_ratio` at step `total` (SGDR, Loshchilov & Hutter
    2017, without restarts). `total` is set when training starts (see RunModule.on_train_start)."""

    warmup: int
    decay: str = "constant"
    total: int = 0
    final_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.decay == "constant":
            return 1.0
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class RunModule(L.LightningModule):
    """Subclasses pass `optim` (lr, weight_decay, betas, warmup_steps, decay, final_lr_ratio,
    decay_steps, optimizer) and define `trainable()`."""

    kind = "run"

    def __init__(self, optim: dict | None = None):
        super().__init__()
        self.optim = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup_steps": 0,
                      "decay": "constant", "final_lr_ratio": 0.0, **(optim or {})}
        if self.optim["decay"] not in LR_DECAYS:
            raise choice_error("optim.decay", self.optim["decay"], LR_DECAYS)
        if not 0.0 <= float(self.optim["final_lr_ratio"]) <= 1.0:
            raise UserError(f"optim.final_lr_ratio={self.optim['final_lr_ratio']} must lie in [0, 1]")
        steps = self.optim.get("decay_steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise UserError(f"optim.decay_steps={steps!r} must be a positive integer (optimizer steps) or null")
        # Set by train.run: the run's id (= its W&B run id) and folder; saved in every checkpoint.
        self.run_info: dict = {}
        self._rng_to_restore: dict | None = None

    def trainable(self) -> torch.nn.Module:
        raise NotImplementedError

    def optimizer_config(self) -> dict:
        """`optim.optimizer`: a `_partial_` Hydra config of a torch.optim class (conf/train.yaml
        fills its lr, weight_decay and betas from optim's keys). An optim without it (a Python
        caller, a checkpoint's hyper-parameters) gets AdamW on those keys."""
        o = self.optim
        return o.get("optimizer") or {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": o["lr"],
                                      "weight_decay": o["weight_decay"], "betas": list(o["betas"])}

    def configure_optimizers(self):
        o = self.optim
        opt = instantiate(self.optimizer_config(), _convert_="all")(self.trainable().parameters())
        multiplier = LRMultiplier(max(int(o["warmup_steps"]), 0), o["decay"], 0, float(o["final_lr_ratio"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
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
        # A fused optimizer (AdamW(fused=True)) unscales fp16 gradients inside its step, so
        # Lightning's AMP plugin refuses any clipping with one. bf16 has no loss scaler: the
        # gradients are already true, and are clipped as in fp32 training.
        unscaled = self._trainer is not None and getattr(self.trainer.precision_plugin, "scaler", 0) is None
        if gradient_clip_val and unscaled and getattr(optimizer, "_step_supports_amp_scaling", False):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ----- checkpoints and exact resume ---------------------------------------------------------
    def on_fit_start(self) -> None:
        # seed_everything gives every DDP rank the same seed: offset it so ranks draw independent
        # timesteps and noise (rank 0 keeps the configured seed).
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.trainer.global_rank)

    def on_train_start(self) -> None:
        # The decay's length: optim.decay_steps, else this fit's training length (max_steps, or
        # max_epochs x batches). Not read in configure_optimizers: estimated_stepping_batches loads
        # the train loader there, before a resume restores it, and Lightning then drops the loader's
        # saved position (the resumed run would see other batches). A run resumed with a new limit
        # and no decay_steps follows the cosine of the new length from its current step on.
        if self.optim["decay"] == "constant":
            return
        total = self.optim.get("decay_steps") or self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise UserError(f"optim.decay={self.optim['decay']} needs a training length: set optim.decay_steps, "
                            "trainer.max_steps or trainer.max_epochs (trainer.max_time alone does not fix it)")
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            for group, base_lr, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                                  getattr(scheduler, "lr_lambdas", [])):
                if isinstance(multiplier, LRMultiplier):
                    multiplier.total = int(total)
                    group["lr"] = base_lr * multiplier(scheduler.last_epoch)   # the next step's, on this curve

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
        checkpoint[CHECKPOINT_KEY] = {"version": ddpm_lab.__version__, "format": FORMAT, "kind": self.kind,
                                      "run": dict(self.run_info), "rng": states}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path | IO, map_location=None, hparams_file=None,
                             strict: bool | None = None, weights_only: bool | None = None, **kwargs):
        """Lightning's load_from_checkpoint, for checkpoints with older key names too: the module is
        built from the upgraded hyper-parameters (`upgrade_checkpoint`); `on_load_checkpoint`
        upgrades the weights' names."""
        if hparams_file is None and isinstance(checkpoint_path, (str, Path)) and "://" not in str(checkpoint_path):
            hparams = read_checkpoint(checkpoint_path)["hyper_parameters"]
            return cls.load_with_hparams(checkpoint_path, hparams, map_location, strict, weights_only, **kwargs)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only,
                                            **kwargs)

    @classmethod
    def load_with_hparams(cls, checkpoint_path: str | Path, hparams: dict, map_location=None,
                          strict: bool | None = None, weights_only: bool | None = None, **kwargs):
        """Lightning's load_from_checkpoint of `checkpoint_path`, the module built from `hparams`: the
        file's hyper-parameters as `read_checkpoint` gave them (upgraded), so they are not read again."""
        kwargs = {**hparams, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, map_location, None, strict, weights_only, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before loading the weights (resume and load_from_checkpoint alike)
        upgrade_checkpoint(checkpoint)
        states = checkpoint.get(CHECKPOINT_KEY, {}).get("rng") or []
        trainer = self._trainer
        if trainer is None or not states:
            return
        if len(states) == trainer.world_size:
            self._rng_to_restore = states[trainer.global_rank]
        else:
            rank_zero_warn(f"the checkpoint holds random states for {len(states)} processes, this run has "
                           f"{trainer.world_size}: training continues with fresh random streams")
