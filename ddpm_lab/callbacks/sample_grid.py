"""Writes a grid of samples (PNG) into the run folder and to the logger every N epochs, and a
final grid when training ends (however it ends: max_epochs, max_time or max_steps).

Samples come from the EMA weights: periodic grids are drawn at validation end, while
EMAWeightAveraging's validation swap is in place (train.py orders the callbacks so); the final grid
is drawn at fit end, after EMAWeightAveraging has copied the average into the model.
Video clips are written as a GIF of the clips tiled (one row per class or prompt round) and go to
W&B as a `wandb.Video`. Data that is not images (2-D points) gets no grid.
Periodic grids may use fewer sampler `steps` (cheaper); the final grid uses the configured sampler.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from ddpm_lab.video_files import log_clips, save_clip
from ddpm_lab.viz import log_grid, save_grid


class SampleGrid(L.Callback):
    def __init__(self, dirpath: str, every_n_epochs: int = 5, num_samples: int = 64, seed: int = 0,
                 steps: int | None = None, upscale: int = 4):
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.seed = seed
        self.steps = steps
        self.upscale = upscale
        self.saved: list[Path] = []

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or self.every_n_epochs <= 0 or trainer.fast_dev_run:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._due(trainer):
            overrides = {"steps": self.steps} if self.steps else {}
            self._write(trainer, pl_module, f"epoch{trainer.current_epoch:04d}.png", overrides)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "final.png", {})

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str, overrides: dict) -> None:
        if len(pl_module.image_shape) < 3 or not hasattr(pl_module, "sample"):
            return       # points, not images (data=gmm), or a stage-1 autoencoder (it logs reconstructions)
        images = pl_module.sample(self.num_samples, seed=self.seed, progress=True, **overrides)
        # a class-conditional model samples the classes in turn: one row per round of classes
        nrow = pl_module.num_classes if pl_module.guidance.conditional else None
        if pl_module.is_video:
            fps = pl_module.fps
            path = save_clip(images, (self.dirpath / name).with_suffix(".gif"), fps, nrow=nrow, upscale=self.upscale)
            self.saved.append(path)
            log_clips(trainer.loggers, "samples", path, trainer.global_step, fps, caption=name)
            return
        self.saved.append(save_grid(images, self.dirpath / name, nrow=nrow, upscale=self.upscale))
        log_grid(trainer.loggers, "samples", images, trainer.global_step, nrow=nrow, upscale=self.upscale, caption=name)
