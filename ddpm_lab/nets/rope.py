"""The token grid of a patchified image or video, and its rotary position embedding (RoPE; Su et
al. 2021, "RoFormer", Sec. 3.4) laid out per axis as in Wan 2.1.

Tokens sit on a (frames, height, width) grid; an image is one frame. Each attention head's
dimensions are split over the three axes as diffusers' `WanRotaryPosEmbed` splits them:
2 * (head_dim // 6) each for height and width, the rest for frames. Within an axis, the pairs of
neighbouring dimensions (2i, 2i + 1) are rotated by position * theta^(-2i / axis_dim), so a
query-key product depends on the two positions only through their difference.

Relative offsets alone cannot say which frame a token is in when nothing in the input marks it: on
a clip whose frames are alike (pure noise is such a clip, in distribution) attention along time
gives every frame the same output. `frame_positions` is the optional absolute frame index (Latte's
fixed temporal embedding) that the networks add to their tokens (`net.frame_embedding`), and
`absolute_positions` the optional absolute (t, h, w) of each token (fixed sinusoids, as DiT's and
Latte's position embeddings; `net.position_embedding`).
"""

from __future__ import annotations

import torch

from ddpm_lab.errors import UserError
from ddpm_lab.nets.timesteps import timestep_embedding

Tensor = torch.Tensor
Grid = tuple[int, int, int]


def axis_dims(head_dim: int) -> Grid:
    """The head dimensions given to the (frames, height, width) axes (Wan's split)."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def check_head_dim(head_dim: int, keys: str) -> None:
    """Every axis needs an even number >= 2 of dimensions: an even head dimension >= 6.
    `keys` names the config keys that set the head dimension (e.g. "net.dim=64 / net.heads=16")."""
    if head_dim < 6 or head_dim % 2:
        raise UserError(f"{keys} gives a head dimension of {head_dim}; the rotary position embedding needs "
                        f"an even head dimension >= 6 (an even number >= 2 for each of frames, height, width)")


def token_grid(frames: int, height: int, width: int, patch: Grid, key: str = "net.patch_size") -> Grid:
    """The (frames, height, width) token grid of a (frames, height, width) input cut into patches."""
    size = (frames, height, width)
    if any(s % p for s, p in zip(size, patch)):
        raise UserError(f"{key}={patch[-1]} must divide the input's height and width ({height}x{width})")
    return frames // patch[0], height // patch[1], width // patch[2]


def grid_positions(grid: Grid, device: torch.device | str | None = None) -> Tensor:
    """(frames * height * width, 3) positions (t, h, w) of the tokens, in row-major order."""
    axes = [torch.arange(n, device=device, dtype=torch.float64) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def rope_angles(positions: Tensor, head_dim: int, theta: float = 10000.0) -> Tensor:
    """(L, head_dim // 2) rotation angles of the dimension pairs at `positions` (L, 3)."""
    parts = []
    for axis, dim in enumerate(axis_dims(head_dim)):
        freqs = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim)
        parts.append(positions[:, axis, None].double() * freqs)
    return torch.cat(parts, dim=-1)


def rope_freqs(grid: Grid, head_dim: int, theta: float, device: torch.device | str | None) -> Tensor:
    """(L, head_dim // 2) complex rotations exp(i * angle) of every token of `grid`."""
    angles = rope_angles(grid_positions(grid, device), head_dim, theta)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def rotate(x: Tensor, freqs: Tensor) -> Tensor:
    """x (..., head_dim) with each pair (x[2i], x[2i + 1]), read as the complex number
    x[2i] + i x[2i + 1], multiplied by freqs[..., i] (broadcast against x's leading dimensions)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * freqs).flatten(-2).type_as(x)


def frame_positions(grid: Grid, dim: int, device=None) -> Tensor:
    """(F * h * w, dim) each token's absolute frame index f as the sinusoidal embedding
    emb(f) - emb(0) (Latte's fixed temporal position embedding, shifted so frame 0, and so an
    image, gets zero)."""
    frames = torch.arange(grid[0], device=device, dtype=torch.float32)
    emb = timestep_embedding(frames, dim) - timestep_embedding(frames[:1], dim)
    return emb.repeat_interleave(grid[1] * grid[2], dim=0)


def absolute_positions(grid: Grid, dim: int, device=None) -> Tensor:
    """(F * h * w, dim) each token's absolute (t, h, w) as fixed sinusoids (DiT's 2-D sin-cos
    embedding with a frame axis, as Latte's): the channels split over the axes as `axis_dims`
    splits a head, each axis the sinusoidal embedding of its coordinate."""
    positions = grid_positions(grid, device)
    return torch.cat([timestep_embedding(positions[:, axis], d) for axis, d in enumerate(axis_dims(dim))], dim=1)
