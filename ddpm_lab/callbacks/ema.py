"""Lightning's EMAWeightAveraging with the average updated by torch's foreach EMA, over the
trainable weights only.

EMAWeightAveraging hands AveragedModel a per-tensor `avg_fn`, one small kernel per parameter per
step; `get_ema_multi_avg_fn` is the same update (avg <- decay avg + (1 - decay) theta) done with
foreach ops over all parameters at once. Frozen parameters (requires_grad False at set-up: the VAE
of latent diffusion) never change, so their average is their first copy: `SkipFrozen` leaves them
out of every update. Everything else (when to update, the validation swap, checkpointing,
resume) is Lightning's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

MultiAvgFn = Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]


class SkipFrozen:
    """A `multi_avg_fn` (torch.optim.swa_utils.AveragedModel) that runs `update` on the tensors
    whose storage is not in `frozen`. AveragedModel.update_parameters passes detached views of the
    averaged tensors, grouped by device and dtype, so they are told apart by storage address."""

    def __init__(self, update: MultiAvgFn):
        self.update = update
        self.frozen: frozenset[int] = frozenset()

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        keep = [i for i, p in enumerate(averaged) if p.data_ptr() not in self.frozen]
        if keep:
            self.update([averaged[i] for i in keep], [current[i] for i in keep], n_averaged)


def frozen_addresses(average: nn.Module, model: nn.Module) -> frozenset[int]:
    """Storage addresses of `average`'s copies of the parameters of `model` that take no gradient
    (parameters pair up in order, as AveragedModel.update_parameters pairs them)."""
    return frozenset(a.data_ptr() for a, p in zip(average.parameters(), model.parameters(), strict=True)
                     if not p.requires_grad)


class ForeachEMA(EMAWeightAveraging):
    """EMAWeightAveraging with a foreach update that skips frozen parameters."""

    def __init__(self, decay: float = 0.999, **kwargs: Any):
        super().__init__(decay=decay, **kwargs)
        self.decay = decay
        self.average_fn = SkipFrozen(get_ema_multi_avg_fn(decay))
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = self.average_fn

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None:
            self.average_fn.frozen = frozen_addresses(self._average_model.module, pl_module)
