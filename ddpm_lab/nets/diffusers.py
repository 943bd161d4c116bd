"""diffusers' UNet2DModel and UNet2DConditionModel behind ddpm_lab's `net(x_t, t, cond)` interface.

UNet2DModel: with `num_classes` set, the class embedding has one extra row, the learned null
class used for `cond=None` and for the unconditional half of classifier-free guidance.
UNet2DConditionModel: text-conditioned through its cross-attention; our TextEncoder (trained with
it) gives `encoder_hidden_states` and the padding mask; the empty prompt is the null condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from ddpm_lab.errors import UserError
from ddpm_lab.nets.conditioning import Conditioned, build_text_encoder
from ddpm_lab.nets.timesteps import per_sample

Tensor = torch.Tensor


def check_levels(image_size: int, block_out_channels: Sequence[int], attention_levels) -> list[bool]:
    levels = len(block_out_channels)
    factor = 2 ** (levels - 1)
    if image_size % factor:
        raise UserError(
            f"data.image_size={image_size} cannot be divided by the UNet: "
            f"net.block_out_channels has {levels} levels, so the size must be a multiple of {factor}")
    attention_levels = list(attention_levels or [False] * levels)
    if len(attention_levels) != levels:
        raise UserError(f"net.attention_levels needs {levels} entries (one per block_out_channels)")
    return attention_levels


class DiffusersUNet2D(Conditioned):
    def __init__(self, image_size: int = 32, in_channels: int = 3, out_channels: int | None = None,
                 block_out_channels: Sequence[int] = (64, 128, 128),
                 layers_per_block: int = 2, attention_levels: Sequence[bool] | None = None,
                 dropout: float = 0.0, norm_num_groups: int = 32, num_classes: int | None = None,
                 config: dict | None = None):
        super().__init__()
        self.num_classes = num_classes
        if config is not None:        # a whole UNet2DModel config (an imported diffusers folder's), as it is
            self.unet = UNet2DModel.from_config(config)
            return
        attention_levels = check_levels(image_size, block_out_channels, attention_levels)
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=in_channels, out_channels=out_channels or in_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
            dropout=dropout, norm_num_groups=norm_num_groups,
            num_class_embeds=(num_classes + 1) if num_classes else None,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        labels = self.null_condition(x.shape[0], x.device) if cond is None else cond
        return self.unet(x, per_sample(t, x.shape[0]), class_labels=labels).sample


class DiffusersUNet2DCondition(Conditioned):
    """Text-conditioned UNet2DConditionModel: cross-attention blocks at the `attention_levels`."""

    def __init__(self, image_size: int = 32, in_channels: int = 3, out_channels: int | None = None,
                 block_out_channels: Sequence[int] = (64, 128, 128), layers_per_block: int = 2,
                 attention_levels: Sequence[bool] | None = None, attention_head_dim: int = 8,
                 norm_num_groups: int = 32, text: dict | None = None):
        super().__init__()
        attention_levels = check_levels(image_size, block_out_channels, attention_levels)
        self.text_encoder = build_text_encoder(text)
        if self.text_encoder is None:
            raise UserError("net=diffusers_unet2d_condition is text-conditioned: train it with guidance=text")
        self.unet = UNet2DConditionModel(
            sample_size=image_size, in_channels=in_channels, out_channels=out_channels or in_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
            norm_num_groups=norm_num_groups, cross_attention_dim=self.text_encoder.dim,
            attention_head_dim=attention_head_dim,
        )

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        states, token_mask, _ = self.text_encoder(self.null_condition(x.shape[0], x.device) if cond is None else cond)
        return self.unet(x, per_sample(t, x.shape[0]), encoder_hidden_states=states, encoder_attention_mask=token_mask).sample
