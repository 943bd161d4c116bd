"""Which tokens a DiT block's self-attention sees on a (frames, height, width) token grid.

- "full": every token attends to every token of the clip, F * h * w keys per query.
- "factorised" space-time attention (Latte, Ma et al. 2024, model variant 1: spatial and
  temporal blocks interleaved; TimeSformer's divided attention, Bertasius et al. 2021, is the same
  split inside one block): even-index blocks attend only within their frame ("spatial", h * w keys)
  and odd-index blocks only along time at their (h, w) location ("temporal", F keys). The
  parameters are the same as for full attention (a state dict moves between the two); only the
  grouping of the tokens differs.

The grouping is a reshape, not a mask: tokens (N, F * h * w, dim) become (N, F, h * w, dim) for
spatial and (N, h * w, F, dim) for temporal attention, each group one attention problem of its own,
and the rotary table (F * h * w, 1, head_dim // 2) is regrouped alike, so each token keeps its own
(t, h, w) rotation. The attention costs F (h w)^2 + h w F^2 query-key products per layer pair
instead of 2 (F h w)^2.

An image is a one-frame clip: its spatial blocks are full attention and its temporal blocks attend
each token to itself alone, so they pass the value path out(v(x)) through.
"""

from __future__ import annotations

import torch

from ddpm_lab.errors import choice_error
from ddpm_lab.nets.rope import Grid

Tensor = torch.Tensor
ATTENTIONS = ("full", "factorised")
AXES = ("full", "spatial", "temporal")


def block_axes(attention: str, depth: int) -> list[str]:
    """The self-attention axis of each of `depth` blocks: all "full", or spatial / temporal alternating."""
    if attention not in ATTENTIONS:
        raise choice_error("net.attention", attention, ATTENTIONS)
    if attention == "full":
        return ["full"] * depth
    return ["spatial" if i % 2 == 0 else "temporal" for i in range(depth)]


def group(x: Tensor, grid: Grid, axis: str) -> Tensor:
    """Tokens (N, F * h * w, ...) -> (N, groups, tokens per group, ...): (N, 1, F h w, ...) for
    "full", (N, F, h w, ...) for "spatial", (N, h w, F, ...) for "temporal"."""
    if axis == "full":
        return x.unsqueeze(1)
    frames = x.unflatten(1, (grid[0], grid[1] * grid[2]))
    return frames if axis == "spatial" else frames.transpose(1, 2)


def ungroup(x: Tensor, axis: str) -> Tensor:
    """The inverse of `group`: (N, groups, tokens per group, ...) -> (N, F * h * w, ...)."""
    if axis == "temporal":
        x = x.transpose(1, 2)
    return x.flatten(1, 2)


def group_rope(rope: Tensor, grid: Grid, axis: str) -> Tensor:
    """The rotary table (F * h * w, 1, head_dim // 2) regrouped as `group` regroups the tokens:
    (groups, tokens per group, 1, head_dim // 2), broadcast over the batch."""
    return group(rope.unsqueeze(0), grid, axis).squeeze(0)


def grouped_self_attention(attn, x: Tensor, rope: Tensor, grid: Grid, axis: str) -> Tensor:
    """`attn` (a DiT `Attention`) on x (N, F * h * w, dim) within the groups of `axis`."""
    return ungroup(attn(group(x, grid, axis), rope=group_rope(rope, grid, axis)), axis)
