"""The DDPM UNet (Ho et al. 2020, App. B), written to be read against the paper (diffusers'
UNet2DModel is there as net=diffusers_unet2d; this one is the readable reference).

PixelCNN++-style UNet: a sinusoidal time embedding (Transformer positional encoding) fed through
an MLP into every residual block; residual blocks with GroupNorm, SiLU and dropout; single-head
self-attention at chosen resolutions; `channel_mult` per resolution level; `num_res_blocks` per
level going down and `num_res_blocks + 1` going up (with skip connections). With ch=128,
mult (1, 2, 2, 2), 2 blocks, attention at 16x16 and dropout 0.1 it is the paper's CIFAR-10
network (35.7M parameters).

Conditioning: with `num_classes` set, a learned class embedding (one extra row: the null class
used when `cond is None`) is added to the time embedding. With a `text` encoder (token ids as
`cond`), its pooled embedding is added to the time embedding and cross-attention blocks (queries
from the image, keys and values from the token states; Rombach et al. 2022, Sec. 3.3) follow the
self-attention at `cross_attention_resolutions` and in the middle block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.nets.conditioning import Conditioned, build_text_encoder
from ddpm_lab.nets.timesteps import per_sample, timestep_embedding

Tensor = torch.Tensor


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the spatial positions (single head in DDPM)."""

    def __init__(self, ch: int, groups: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        # contiguous: the reshape is a channels-last view, which gives the 1x1 conv's weight
        # gradient strides DDP's gradient buckets do not expect (a warning and a copy per step)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w).contiguous())


class CrossAttentionBlock(nn.Module):
    """Attention from the spatial positions (queries) to the prompt's token states (keys, values)."""

    def __init__(self, ch: int, context_dim: int, groups: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(ch, groups)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor, context: Tensor, token_mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        q = self.q(self.norm(x)).reshape(b, heads, c // heads, h * w).transpose(-1, -2)
        k, v = self.kv(context).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask[:, None, None, :])
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w).contiguous())


DOWNSAMPLE_PADDINGS = ("same", "symmetric")


class Downsample(nn.Module):
    """A stride-2 3x3 convolution. Padding "same" is TensorFlow's SAME on even sizes (one zero row and
    column after the image, none before), as the DDPM authors' code (diffusers' downsample_padding=0);
    "symmetric" pads one on every side (diffusers' downsample_padding=1)."""

    def __init__(self, ch: int, padding: str = "symmetric"):
        super().__init__()
        if padding not in DOWNSAMPLE_PADDINGS:
            raise choice_error("net.downsample_padding", padding, DOWNSAMPLE_PADDINGS)
        self.same = padding == "same"
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0 if self.same else 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.same else x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(Conditioned):
    """eps/x0/v network `net(x_t, t, cond)` of the DDPM paper's shape."""

    def __init__(self, image_size: int = 32, in_channels: int = 3, out_channels: int | None = None,
                 base_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.1, num_heads: int = 1, norm_groups: int = 32,
                 num_classes: int | None = None, text: dict | None = None,
                 cross_attention_resolutions: Sequence[int] | None = None,
                 downsample_padding: str = "symmetric"):
        super().__init__()
        channel_mult = tuple(channel_mult)
        # the structure, for the diffusers weight map (nets/unet_diffusers_map.py)
        self.architecture = {
            "image_size": image_size, "in_channels": in_channels, "out_channels": out_channels or in_channels,
            "base_channels": base_channels, "channel_mult": channel_mult, "num_res_blocks": num_res_blocks,
            "attention_resolutions": tuple(attention_resolutions), "dropout": dropout, "num_heads": num_heads,
            "norm_groups": norm_groups, "num_classes": num_classes, "text": text,
            "cross_attention_resolutions": cross_attention_resolutions, "downsample_padding": downsample_padding}
        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise UserError(
                f"data.image_size={image_size} cannot be divided by the UNet: net.channel_mult has "
                f"{len(channel_mult)} levels, so the image size must be a multiple of {factor}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.num_classes = num_classes
        ch, emb_ch = base_channels, 4 * base_channels
        self.base_channels = ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.class_emb = nn.Embedding(num_classes + 1, emb_ch) if num_classes else None
        self.text_encoder = build_text_encoder(text)
        context_dim = self.text_encoder.dim if self.text_encoder is not None else None
        self.text_proj = nn.Linear(context_dim, emb_ch) if context_dim else None
        cross_res = tuple(attention_resolutions if cross_attention_resolutions is None
                          else cross_attention_resolutions)
        blk = lambda i, o, r, mid=False: self._block(  # noqa: E731
            i, o, emb_ch, dropout, norm_groups, mid or r in attention_resolutions, num_heads,
            context_dim if (mid or r in cross_res) else None)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs, cur, res = [ch], ch, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(blk(cur, ch * mult, res))
                cur = ch * mult
                skip_chs.append(cur)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(cur, downsample_padding))
                skip_chs.append(cur)
                res //= 2
        self.mid = blk(cur, cur, res, mid=True)
        self.mid_res = ResBlock(cur, cur, emb_ch, dropout, norm_groups)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(blk(cur + skip_chs.pop(), ch * mult, res))
                cur = ch * mult
            if level != 0:
                self.up.append(Upsample(cur))
                res *= 2
        self.norm_out = group_norm(cur, norm_groups)
        self.conv_out = nn.Conv2d(cur, self.out_channels, 3, padding=1)

    @staticmethod
    def _block(in_ch, out_ch, emb_ch, dropout, groups, attention, num_heads,
               context_dim: int | None = None) -> nn.ModuleList:
        layers = [ResBlock(in_ch, out_ch, emb_ch, dropout, groups)]
        if attention:
            layers.append(AttentionBlock(out_ch, groups, num_heads))
        if context_dim:
            layers.append(CrossAttentionBlock(out_ch, context_dim, groups, num_heads))
        return nn.ModuleList(layers)

    def embed(self, t: Tensor, cond: Tensor | None, batch: int, device) -> tuple[Tensor, tuple | None]:
        """The time (+ class or pooled text) embedding, and (token states, mask) for cross-attention."""
        emb = self.time_mlp(timestep_embedding(per_sample(t, batch), self.base_channels))
        if cond is None:
            cond = self.null_condition(batch, device)
        context = None
        if self.class_emb is not None:
            emb = emb + self.class_emb(cond)
        elif self.text_encoder is not None:
            states, token_mask, pooled = self.text_encoder(cond)
            emb = emb + self.text_proj(pooled)
            context = (states, token_mask)
        return emb, context

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        emb, context = self.embed(t, cond, x.shape[0], x.device)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = self._run_layer(layer, h, emb, context)
            skips.append(h)
        h = self._run_layer(self.mid, h, emb, context)
        h = self.mid_res(h, emb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = self._run_layer(layer, torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.conv_out(F.silu(self.norm_out(h)))

    @staticmethod
    def _run_layer(layer: nn.Module, h: Tensor, emb: Tensor, context: tuple | None) -> Tensor:
        if not isinstance(layer, nn.ModuleList):
            return layer(h)
        h = layer[0](h, emb)
        for attn in layer[1:]:
            h = attn(h, *context) if isinstance(attn, CrossAttentionBlock) else attn(h)
        return h
