"""Writes a grid of samples (PNG) into the run folder and to the logger every N epochs.

Samples come from the EMA weights: list this callback before EMAWeightAveraging (train.py orders
them so), whose validation swap is still in place when this runs.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ddpm_lab.viz import image_grid, save_grid


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
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return False
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last or bool(trainer.fast_dev_run)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        overrides = {"steps": self.steps} if self.steps else {}
        images = pl_module.sample(self.num_samples, seed=self.seed, **overrides)
        path = save_grid(images, self.dirpath / f"epoch{trainer.current_epoch:04d}.png",
                         upscale=self.upscale)
        self.saved.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                grid = image_grid(images, upscale=self.upscale)
                logger.log_image("samples", [grid], step=trainer.global_step)
