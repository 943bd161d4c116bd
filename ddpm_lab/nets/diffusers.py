"""diffusers' UNet2DModel behind ddpm_lab's `net(x_t, t, cond)` interface.

With `num_classes` set, the class embedding has one extra row, the learned null class used for
`cond=None` and for the unconditional half of classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DModel
from torch import nn

from ddpm_lab.diffusion.guidance import batched_guidance
from ddpm_lab.errors import UserError

Tensor = torch.Tensor


class DiffusersUNet2D(nn.Module):
    def __init__(self, image_size: int = 32, in_channels: int = 3, out_channels: int | None = None,
                 block_out_channels: Sequence[int] = (64, 128, 128),
                 layers_per_block: int = 2, attention_levels: Sequence[bool] | None = None,
                 dropout: float = 0.0, norm_num_groups: int = 32, num_classes: int | None = None):
        super().__init__()
        levels = len(block_out_channels)
        factor = 2 ** (levels - 1)
        if image_size % factor:
            raise UserError(
                f"data.image_size={image_size} cannot be divided by the UNet: "
                f"net.block_out_channels has {levels} levels, so the size must be a multiple of {factor}")
        attention_levels = list(attention_levels or [False] * levels)
        if len(attention_levels) != levels:
            raise UserError(f"net.attention_levels needs {levels} entries (one per block_out_channels)")
        self.num_classes = num_classes
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=in_channels, out_channels=out_channels or in_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
            dropout=dropout, norm_num_groups=norm_num_groups,
            num_class_embeds=(num_classes + 1) if num_classes else None,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        labels = None
        if self.num_classes:
            labels = cond if cond is not None else torch.full(
                (x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return self.unet(x, t, class_labels=labels).sample

    def guided(self, x: Tensor, t: Tensor, cond: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
        """Classifier-free guidance with both passes in one batched forward."""
        return batched_guidance(self, x, t, cond, torch.full_like(cond, self.num_classes), scale, rescale)
