"""A diffusion transformer (DiT; Peebles & Xie 2023) in the layout of Wan 2.1's blocks, on images
(N, C, H, W) and video clips (N, C, F, H, W).

The input is cut into p x p patches by a convolution (a (1, p, p) Conv3d over (frames, height,
width): an image is a one-frame video); with `frame_embedding` each token's absolute frame index is
added (`ddpm_lab.nets.rope.frame_positions`: relative rotations alone cannot tell the frames of pure
noise apart), with `position_embedding` its absolute (t, h, w) (`absolute_positions`). The tokens go through `depth` blocks of
- self-attention with rotary position embeddings over (t, h, w) (`ddpm_lab.nets.rope`) and optional
  RMS QK-norm across heads (Wan 2.1); over the whole clip (`attention="full"`) or, with
  `attention="factorised"`, within each frame in even blocks and along time in odd blocks
  (Latte's interleaved space-time blocks; `ddpm_lab.nets.video_attention`), with the same parameters,
- cross-attention to the text encoder's token states (with the padding mask), when text-conditioned,
- an MLP (GELU, tanh approximation),
each modulated by adaLN-Zero (Peebles & Xie 2023, Sec. 3.2): the attention and the MLP read a
LayerNorm scaled and shifted, and add their output times a gate. As in Wan 2.1, one MLP shared by
all blocks projects the time embedding to the six vectors (shift, scale, gate for attention and
MLP), and every block adds its own learned table of six (Wan's `scale_shift_table`). The final
layer is an adaLN (shift, scale) and a linear map back to patches.

Initialisation (Wan 2.1's `init_weights`, made adaLN-Zero): linear layers xavier-uniform with zero
bias, the time MLP normal(std 0.02), the tables randn / sqrt(dim) except their gate rows, which
start at zero like the shared projection, so every block is the identity; the cross-attention's
output is zero (PixArt-alpha) and the output layer is zero, so the network outputs zeros at init.

Conditioning as in our UNet: a class embedding (one extra row, the null class for `cond=None`) or
the text encoder's pooled embedding is added to the time embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lab.errors import UserError
from ddpm_lab.nets.conditioning import Conditioned, build_text_encoder
from ddpm_lab.nets.rope import (
    Grid,
    absolute_positions,
    check_head_dim,
    frame_positions,
    rope_freqs,
    rotate,
    token_grid,
)
from ddpm_lab.nets.timesteps import per_sample, timestep_embedding
from ddpm_lab.nets.video_attention import block_axes, grouped_self_attention

Tensor = torch.Tensor
FREQ_DIM = 256      # sinusoidal time features (Wan 2.1, DiT)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (N, L, dim) * (1 + scale) + shift, per sample."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class Attention(nn.Module):
    """Multi-head attention: self-attention with rotary positions (within each group of tokens), or
    cross-attention to `context`."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.norm_q = nn.RMSNorm(dim, eps=1e-6) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=1e-6) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Tensor | None = None, context: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """x (N, L, dim), or (N, G, L, dim): G groups attending each within itself; rope (L, 1, hd / 2)
        or (G, L, 1, hd / 2) rotations; context (N, S, context_dim), mask (N, 1, 1, S)."""
        k, v = self.kv(x if context is None else context).chunk(2, dim=-1)
        q, k, v = (y.unflatten(-1, (self.heads, -1)) for y in (self.norm_q(self.q(x)), self.norm_k(k), v))
        if rope is not None:
            q, k = rotate(q, rope), rotate(k, rope)
        q, k, v = (y.flatten(0, -4).transpose(1, 2) for y in (q, k, v))     # (N * G, heads, L, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).flatten(2).unflatten(0, x.shape[:-2]))


class DiTBlock(nn.Module):
    """Self-attention (over the clip, or within frames / along time: `axis`), cross-attention (with a
    text context) and MLP, adaLN-Zero modulated."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, context_dim: int | None, qk_norm: bool,
                 axis: str = "full"):
        super().__init__()
        self.axis = axis
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if context_dim else None
        self.cross = Attention(dim, heads, context_dim, qk_norm) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)   # Wan's scale_shift_table

    def forward(self, x: Tensor, mod: Tensor, rope: Tensor, context: tuple[Tensor, Tensor] | None = None,
                grid: Grid | None = None) -> Tensor:
        """x (N, L, dim) on the token `grid` (needed unless the axis is full); mod (N, 6, dim) from the
        shared time projection; rope (L, 1, head_dim // 2); context (states, token_mask)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + mod).unbind(1)
        y = modulate(self.norm1(x), shift1, scale1)
        if self.axis == "full":
            y = self.attn(y, rope=rope)
        else:
            y = grouped_self_attention(self.attn, y, rope, grid, self.axis)
        x = torch.addcmul(x, gate1[:, None], y)
        if self.cross is not None:
            states, token_mask = context
            x = x + self.cross(self.norm_cross(x), context=states, mask=token_mask[:, None, None, :])
        return torch.addcmul(x, gate2[:, None], self.mlp(modulate(self.norm2(x), shift2, scale2)))


class DiT(Conditioned):
    """eps / x0 / v (or flow velocity) network `net(x, t, cond)` on images (N, C, H, W) or clips
    (N, C, F, H, W); `t` may be fractional (flow matching's 1000 * s). `attention`: "full" or
    "factorised" space-time self-attention (see the module docstring)."""

    def __init__(self, image_size: int = 16, in_channels: int = 1, out_channels: int | None = None,
                 patch_size: int = 2, dim: int = 128, depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0,
                 num_classes: int | None = None, text: dict | None = None, qk_norm: bool = True,
                 rope_theta: float = 10000.0, attention: str = "full", frame_embedding: bool = False,
                 position_embedding: bool = False):
        super().__init__()
        axes = block_axes(attention, depth)
        if dim % heads:
            raise UserError(f"net.dim={dim} must be a multiple of net.heads={heads}")
        check_head_dim(dim // heads, f"net.dim={dim} / net.heads={heads}")
        self.patch: Grid = (1, patch_size, patch_size)
        token_grid(1, image_size, image_size, self.patch)
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = out_channels or in_channels
        self.dim, self.heads, self.rope_theta, self.num_classes = dim, heads, rope_theta, num_classes
        self.attention, self.frame_embedding, self.position_embedding = attention, frame_embedding, position_embedding
        self.patch_embed = nn.Conv3d(in_channels, dim, self.patch, stride=self.patch)
        self.time_mlp = nn.Sequential(nn.Linear(FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))    # shared by all blocks
        self.class_emb = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.text_encoder = build_text_encoder(text)
        context_dim = self.text_encoder.dim if self.text_encoder is not None else None
        self.text_proj = nn.Linear(context_dim, dim) if context_dim else None
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio, context_dim, qk_norm, axis) for axis in axes)
        self.norm_out = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.out_modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)    # (shift, scale)
        self.proj_out = nn.Linear(dim, self.out_channels * math.prod(self.patch))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan 2.1's initialisation with adaLN-Zero gates (see the module docstring)."""
        own = [self.time_mlp, self.time_proj, self.blocks, self.proj_out] + ([self.text_proj] if self.text_proj else [])
        for m in (m for part in own for m in part.modules()):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.flatten(1))
        for m in self.time_mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if self.class_emb is not None:
            nn.init.normal_(self.class_emb.weight, std=0.02)
        nn.init.zeros_(self.time_proj[1].weight)
        for block in self.blocks:
            block.modulation[:, 2::3] = 0          # the gates: gate1 and gate2
            if block.cross is not None:
                nn.init.zeros_(block.cross.out.weight)
        nn.init.zeros_(self.proj_out.weight)

    def embed(self, t: Tensor, cond: Tensor | None, batch: int, device, dtype) -> tuple[Tensor, tuple | None]:
        """The time (+ class or pooled text) embedding, and (token states, mask) for cross-attention."""
        emb = self.time_mlp(timestep_embedding(per_sample(t, batch), FREQ_DIM).to(dtype))
        if cond is None:
            cond = self.null_condition(batch, device)
        if self.class_emb is not None:
            return emb + self.class_emb(cond), None
        if self.text_encoder is not None:
            states, token_mask, pooled = self.text_encoder(cond)
            return emb + self.text_proj(pooled), (states, token_mask)
        return emb, None

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Images (N, C, H, W), as one-frame clips, or clips (N, C, F, H, W) -> the same shape with
        `out_channels`."""
        if x.ndim == 4:
            return self.forward_frames(x.unsqueeze(2), t, cond).squeeze(2)
        if x.ndim != 5:
            raise UserError(f"net=DiT takes images (N, C, H, W) or clips (N, C, F, H, W), got shape {tuple(x.shape)}")
        return self.forward_frames(x, t, cond)

    def forward_frames(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """(N, C, frames, H, W) -> the same shape with `out_channels`."""
        n = x.shape[0]
        grid = token_grid(*x.shape[2:], self.patch)
        emb, context = self.embed(t, cond, n, x.device, x.dtype)
        mod = self.time_proj(emb).unflatten(1, (6, -1))
        rope = rope_freqs(grid, self.dim // self.heads, self.rope_theta, x.device)[:, None]   # (L, 1, hd / 2)
        h = self.patch_embed(x).flatten(2).transpose(1, 2)            # (N, L, dim), L = F * h * w
        if self.frame_embedding:
            h = h + frame_positions(grid, self.dim, x.device).to(h.dtype)
        if self.position_embedding:
            h = h + absolute_positions(grid, self.dim, x.device).to(h.dtype)
        for block in self.blocks:
            h = block(h, mod, rope, context, grid)
        shift, scale = (self.out_modulation + emb[:, None]).unbind(1)
        return self.unpatchify(self.proj_out(modulate(self.norm_out(h), shift, scale)), grid)

    def unpatchify(self, tokens: Tensor, grid: Grid) -> Tensor:
        """(N, L, C * pf * ph * pw) -> (N, C, F, H, W)."""
        (f, h, w), (pf, ph, pw) = grid, self.patch
        x = tokens.reshape(tokens.shape[0], f, h, w, pf, ph, pw, self.out_channels)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(tokens.shape[0], self.out_channels, f * pf, h * ph, w * pw)
