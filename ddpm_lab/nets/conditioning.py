"""Condition embedders shared by the networks: the word vocabulary and the small text encoder, and
the null condition used for the unconditional half of classifier-free guidance.

Text (as in Imagen / Stable Diffusion, at toy scale): a prompt is split into lower-case words,
each word is a token of a fixed vocabulary (saved with the network, so in every checkpoint), a
start token comes first and padding fills up to `max_tokens`. A few pre-norm transformer layers
(Vaswani et al. 2017) turn the tokens into the states the UNet's cross-attention reads, and their
mean over the prompt's tokens is the pooled embedding added to the time embedding.
The empty prompt (the start token alone) is the unconditional case: training drops prompts to it
with probability p_uncond, and guidance uses it for eps_uncond.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ddpm_lab.errors import UserError

Tensor = torch.Tensor
PAD, START = 0, 1           # token ids of the padding and the start token; words follow from 2
WORD = re.compile(r"[a-z0-9]+")


def words_of(text: str) -> list[str]:
    """Lower-case words of a prompt (punctuation is ignored)."""
    return WORD.findall(text.lower())


class Vocabulary:
    """Words <-> token ids; `encode` gives (N, max_tokens) int64 ids: start, words, padding."""

    def __init__(self, words: Sequence[str], max_tokens: int = 16):
        words = list(dict.fromkeys(words))
        bad = [w for w in words if words_of(w) != [w]]
        if bad:
            raise UserError(f"vocabulary words must be single lower-case words, got {bad}")
        if max_tokens < 2:
            raise UserError(f"net.text.max_tokens={max_tokens} must be >= 2 (the start token and a word)")
        self.words, self.max_tokens = words, max_tokens
        self.index = {w: i + 2 for i, w in enumerate(words)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_tokens: int = 16) -> Vocabulary:
        """The sorted set of words in `texts`."""
        return cls(sorted({w for text in texts for w in words_of(text)}), max_tokens)

    def __len__(self) -> int:
        """Number of token ids (padding and start included)."""
        return len(self.words) + 2

    def encode(self, prompts: Sequence[str]) -> Tensor:
        unknown = sorted({w for p in prompts for w in words_of(p) if w not in self.index})
        if unknown:
            raise UserError(f"prompt: unknown word(s) {', '.join(repr(w) for w in unknown)}; the model "
                            f"knows {len(self.words)} words: {' '.join(self.words)}")
        ids = torch.full((len(prompts), self.max_tokens), PAD, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            tokens = [START] + [self.index[w] for w in words_of(prompt)]
            if len(tokens) > self.max_tokens:
                raise UserError(f"prompt {prompt!r} has {len(tokens) - 1} words; the model reads at most "
                                f"{self.max_tokens - 1} (net.text.max_tokens={self.max_tokens})")
            ids[i, :len(tokens)] = torch.tensor(tokens)
        return ids

    def decode(self, ids: Tensor) -> list[str]:
        words = ["", ""] + self.words
        return [" ".join(words[i] for i in row.tolist() if i > START) for row in ids]


class TextEncoder(nn.Module):
    """Token ids (N, L) -> token states (N, L, dim), token_mask (N, L) (True = a real token, False =
    padding), pooled (N, dim)."""

    def __init__(self, vocabulary: Sequence[str], max_tokens: int = 16, dim: int = 64, layers: int = 2,
                 heads: int = 4):
        super().__init__()
        if dim % heads:
            raise UserError(f"net.text.dim={dim} must be a multiple of net.text.heads={heads}")
        self.vocabulary = Vocabulary(vocabulary, max_tokens)
        self.dim = dim
        self.token = nn.Embedding(len(self.vocabulary), dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def empty(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """Token ids of the empty prompt (the null condition)."""
        ids = torch.full((batch, self.vocabulary.max_tokens), PAD, dtype=torch.long, device=device)
        ids[:, 0] = START
        return ids

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        token_mask = ids != PAD
        h = self.token(ids) + self.position[: ids.shape[1]]
        h = self.norm(self.layers(h, src_key_padding_mask=~token_mask))
        pooled = (h * token_mask[..., None]).sum(1) / token_mask.sum(1, keepdim=True).clamp_min(1)
        return h, token_mask, pooled


def build_text_encoder(text: dict | None) -> TextEncoder | None:
    """A TextEncoder from the net config's `text` block (vocabulary set from the data), or None."""
    if not text:
        return None
    if not text.get("vocabulary"):
        raise UserError("net.text has no vocabulary: a text-conditioned network is built by ddpm-train "
                        "with guidance=text, which takes the vocabulary from the data's captions")
    return TextEncoder(**text)


class Conditioned(nn.Module):
    """Mixin for networks conditioned on class labels (`num_classes`, null class = the extra row
    num_classes) or on text (`text_encoder`, null condition = the empty prompt).

    `forward(x, t, None)` runs on the null condition, and `null_condition` names it, which makes the
    network a `diffusion.guidance.NullConditioned`: the Guider runs both guidance passes as one
    forward on the doubled batch.
    """

    # (no class attributes here: a class-level `text_encoder = None` would hide the registered module)

    def null_condition(self, batch: int, device: torch.device | str) -> Tensor | None:
        """The null condition for `batch` samples (None for an unconditional network)."""
        encoder = getattr(self, "text_encoder", None)
        if encoder is not None:
            return encoder.empty(batch, device)
        if getattr(self, "num_classes", None):
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return None
