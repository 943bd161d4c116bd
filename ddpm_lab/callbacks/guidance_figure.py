"""The lecture's guidance figure for 2-D data (after Ho & Salimans 2022, Figure 2): samples of
each class at increasing guidance scales, beside the training data, drawn when training ends.
Guidance pulls each class's samples together and away from the other classes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.viz import log_images, save_guidance_figure


class GuidanceFigure(L.Callback):
    def __init__(self, path: str, scales: tuple = (0.0, 1.0, 2.0, 4.0, 8.0), per_class: int = 500,
                 seed: int = 0, steps: int | None = None):
        self.path = Path(path)
        self.scales, self.per_class, self.seed, self.steps = list(scales), per_class, seed, steps

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        k = pl_module.net.num_classes
        labels = torch.arange(k).repeat_interleave(self.per_class)
        extra = {"steps": self.steps} if self.steps else {}
        panels = [(f"w = {w:g}", pl_module.sample(len(labels), seed=self.seed, labels=labels,
                                                  guidance_scale=w, **extra)) for w in self.scales]
        data = stack_dataset(trainer.datamodule.train_set)
        save_guidance_figure((data.image, data.label), panels, labels, self.path)
        log_images(trainer.loggers, "guidance_figure", [str(self.path)], step=trainer.global_step)
