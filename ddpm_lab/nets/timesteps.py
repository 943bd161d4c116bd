"""The networks' time input: a timestep for every sample, and its sinusoidal embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def per_sample(t: Tensor, batch: int) -> Tensor:
    """`t` with one entry per sample: a 0-d tensor (one time for the whole batch) is repeated
    `batch` times; a tensor of per-sample times is returned as it is."""
    return t.expand(batch) if t.ndim == 0 else t


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM's `get_timestep_embedding`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb
