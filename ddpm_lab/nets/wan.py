"""diffusers' WanTransformer3DModel (Wan 2.1's video diffusion transformer) behind ddpm_lab's
`net(x_t, t, cond)` interface.

Clips (N, C, F, H, W) go in as they are (patches (1, p, p): one token row per frame); images are
one-frame clips: (N, C, H, W) -> (N, C, 1, H, W) and back. Wan's rotary table holds
`rope_max_seq_len` positions per axis, so the frames and the tokens per side must not exceed it
(checked, with the config key named). `frame_embedding` adds each token's absolute frame index
(`ddpm_lab.nets.rope.frame_positions`), `position_embedding` its absolute (t, h, w)
(`absolute_positions`), to the patch embedding's output through a forward hook, as the same options
do in our DiT. `t` goes in as it is (the
0-1000 scale; fractional times work). The context Wan's cross-attention reads
(`encoder_hidden_states`):
- text: our TextEncoder's token states (`text_dim` = the encoder's dim). diffusers' Wan takes no
  attention mask, so the padding states are set to zero, as Wan 2.1 pads its umT5 states with
  zeros to 512 tokens; the padded positions are still attended to (a fixed token after Wan's text
  projection);
- class labels: a learned table (num_classes + 1 rows, the last the null class) gives each sample
  one context token;
- unconditional: one learned null token for every sample.
The table's tokens start N(0, 1), the scale of the text encoder's layer-normed states.

Initialisation: diffusers' class leaves PyTorch's defaults; `init_wan_weights` applies Wan 2.1's
`init_weights` (xavier-uniform linear layers with zero bias, the patch embedding xavier-uniform,
the text and time embeddings' linear layers normal(std 0.02), the output head zero), so the
network outputs zeros at init.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.nets.conditioning import Conditioned, build_text_encoder
from ddpm_lab.nets.rope import absolute_positions, check_head_dim, frame_positions, token_grid
from ddpm_lab.nets.timesteps import per_sample

Tensor = torch.Tensor
QK_NORMS = ("rms_norm_across_heads",)   # what diffusers' WanAttention applies, whatever qk_norm says


@torch.no_grad()
def init_wan_weights(model: WanTransformer3DModel) -> None:
    """Wan 2.1's `WanModel.init_weights` on diffusers' module names."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    nn.init.xavier_uniform_(model.patch_embedding.weight.flatten(1))
    embedder = model.condition_embedder
    for part in (embedder.text_embedder, embedder.time_embedder):
        for m in part.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
    nn.init.zeros_(model.proj_out.weight)


def position_hook(embedding):
    """A forward hook for Wan's patch embedding that adds `embedding(grid, dim, device)` ((F h w, dim),
    e.g. `ddpm_lab.nets.rope.frame_positions`) to its output (N, dim, F, h, w)."""
    def add(module: nn.Module, inputs: tuple, tokens: Tensor) -> Tensor:
        grid, dim = tuple(tokens.shape[2:]), tokens.shape[1]
        return tokens + embedding(grid, dim, tokens.device).T.reshape(1, dim, *grid).to(tokens.dtype)
    return add


class WanTransformer(Conditioned):
    """Wan 2.1's transformer (diffusers) on images (N, C, H, W) or clips (N, C, F, H, W), conditioned
    on text, class labels or nothing."""

    def __init__(self, image_size: int = 16, in_channels: int = 1, out_channels: int | None = None,
                 patch_size: int = 2, num_attention_heads: int = 2, attention_head_dim: int = 32,
                 num_layers: int = 2, ffn_dim: int = 256, num_classes: int | None = None,
                 text: dict | None = None, qk_norm: str = "rms_norm_across_heads", cross_attn_norm: bool = True,
                 rope_max_seq_len: int = 1024, frame_embedding: bool = False, position_embedding: bool = False):
        super().__init__()
        self.patch = (1, patch_size, patch_size)
        grid = token_grid(1, image_size, image_size, self.patch)
        check_head_dim(attention_head_dim, f"net.attention_head_dim={attention_head_dim}")
        if max(grid) > rope_max_seq_len:
            raise UserError(f"net.rope_max_seq_len={rope_max_seq_len} must be >= the tokens per side "
                            f"({max(grid)} = data.image_size / net.patch_size)")
        if qk_norm not in QK_NORMS:
            raise choice_error("net.qk_norm", qk_norm, QK_NORMS, "diffusers' Wan attention always applies it")
        self.num_classes, self.rope_max_seq_len = num_classes, rope_max_seq_len
        self.text_encoder = build_text_encoder(text)
        inner_dim = num_attention_heads * attention_head_dim
        text_dim = self.text_encoder.dim if self.text_encoder is not None else inner_dim
        self.label_tokens = None if self.text_encoder is not None else nn.Embedding((num_classes or 0) + 1, text_dim)
        self.transformer = WanTransformer3DModel(
            patch_size=self.patch, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            in_channels=in_channels, out_channels=out_channels or in_channels, text_dim=text_dim, ffn_dim=ffn_dim,
            num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm,
            rope_max_seq_len=rope_max_seq_len)
        init_wan_weights(self.transformer)
        for wanted, embedding in ((frame_embedding, frame_positions), (position_embedding, absolute_positions)):
            if wanted:                   # added to the patch embedding's output, before Wan flattens the tokens
                self.transformer.patch_embedding.register_forward_hook(position_hook(embedding))

    def context(self, cond: Tensor | None, batch: int, device) -> Tensor:
        """`encoder_hidden_states` (N, tokens, text_dim) for `cond` (None: the null condition)."""
        if cond is None:
            cond = self.null_condition(batch, device)
        if self.text_encoder is not None:
            states, token_mask, _ = self.text_encoder(cond)
            return states * token_mask[..., None]
        if not self.num_classes:                       # unconditional: the one null token
            return self.label_tokens.weight[None].expand(batch, -1, -1)
        return self.label_tokens(cond)[:, None]

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Images (N, C, H, W), as one-frame clips, or clips (N, C, F, H, W) -> the same shape with
        `out_channels`."""
        if x.ndim not in (4, 5):
            raise UserError(f"net=WanTransformer takes images (N, C, H, W) or clips (N, C, F, H, W), "
                            f"got shape {tuple(x.shape)}")
        clip = x if x.ndim == 5 else x.unsqueeze(2)
        frames, height, width = token_grid(*clip.shape[2:], self.patch)
        if frames > self.rope_max_seq_len:
            raise UserError(f"net.rope_max_seq_len={self.rope_max_seq_len} must be >= the clip's frames ({frames})")
        if max(height, width) > self.rope_max_seq_len:
            raise UserError(f"net.rope_max_seq_len={self.rope_max_seq_len} must be >= the tokens per side "
                            f"({max(height, width)} = the input's side / net.patch_size)")
        n = x.shape[0]
        out = self.transformer(clip, per_sample(t, n), encoder_hidden_states=self.context(cond, n, x.device),
                               return_dict=False)[0]
        return out if x.ndim == 5 else out.squeeze(2)
