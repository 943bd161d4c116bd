"""Reflow: a flow teacher's (noise, sample) pairs, generated once and cached, and a flow trained on
the straight path between them (`ddpm-train stage=distill distill=reflow teacher=<flow checkpoint>`;
the math is `ddpm_lab.diffusion.reflow`). The new flow starts from the teacher's weights (the
2-rectified flow fine-tuned from the first, as Liu et al. 2022 do) and samples with Euler at
`sampling_steps` (1 by default).

Each step draws its batch of pairs with the global generator (restored on resume); the data
module only paces the epochs.
"""

from __future__ import annotations

from typing import Any

import torch

from ddpm_lab.diffusion.reflow import reflow_losses
from ddpm_lab.modules.distillation import DistillationModule


class Reflow(DistillationModule):
    needs_flow = True
    sampler_name = "flow_euler"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.total_steps = int(self.distill["steps"])
        self.pairs: dict[str, torch.Tensor | None] = {}

    @staticmethod
    def final_steps_of(method: dict) -> int:
        return int(method["sampling_steps"])

    def set_pairs(self, noise: torch.Tensor, x1: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.pairs = {"noise": noise, "x1": x1, "labels": labels}

    def distillation_losses(self, x0: torch.Tensor, cond, generator: torch.Generator | None = None) -> torch.Tensor:
        i = self.draw((len(x0),), generator, "index", len(self.pairs["noise"])).cpu()
        noise, x1 = (self.pairs[k][i].to(self.device, x0.dtype) for k in ("noise", "x1"))
        labels = self.pairs["labels"]
        cond = None if labels is None else labels[i].to(self.device)
        return reflow_losses(self.diffusion, self.net, noise, x1, cond)
