"""A small MLP denoiser for low-dimensional data (the 2-D Gaussian mixture of the guidance figure).

net(x_t, t, cond): the sinusoidal time embedding (as in the UNet) and, with `num_classes`, a
learned class embedding (one extra row: the null class for `cond=None`) are added to the input
projection; residual SiLU blocks follow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lab.nets.conditioning import Conditioned
from ddpm_lab.nets.timesteps import per_sample, timestep_embedding

Tensor = torch.Tensor


class MLPDenoiser(Conditioned):
    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, num_classes: int | None = None):
        super().__init__()
        self.dim, self.hidden, self.num_classes = dim, hidden, num_classes
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                                  nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.inp(x) + self.time(timestep_embedding(per_sample(t, x.shape[0]), self.hidden).to(x.dtype))
        if self.class_emb is not None:
            h = h + self.class_emb(self.null_condition(x.shape[0], x.device) if cond is None else cond)
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.silu(h))
