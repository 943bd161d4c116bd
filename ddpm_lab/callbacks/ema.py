"""Lightning's EMAWeightAveraging with the average updated by torch's foreach EMA.

EMAWeightAveraging hands AveragedModel a per-tensor `avg_fn`, one small kernel per parameter per
step; `get_ema_multi_avg_fn` is the same update (avg <- decay avg + (1 - decay) theta) done with
foreach ops over all parameters at once. Everything else (when to update, the validation swap,
checkpointing, resume) is Lightning's.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn


class ForeachEMA(EMAWeightAveraging):
    def __init__(self, decay: float = 0.999, **kwargs: Any):
        super().__init__(decay=decay, **kwargs)
        self.decay = decay
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)
