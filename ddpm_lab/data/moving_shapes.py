"""Procedural moving shapes: short RGB clips of one shape each, moving in a straight line.

Each clip shows one shape of the shapes data (ddpm_lab/data/shapes.py: circle, square or triangle,
four colours, small or large, drawn by its `coverage` rasteriser) on black, moving left, right, up
or down at a constant slow or fast speed (`SPEEDS`, a fraction of the image side per frame). The
start is drawn so that the whole path keeps the shape inside the frame with a one-pixel margin
(every frame shows all of it); the coordinate across the motion is drawn too. Captions read "a
small red circle moving left fast" (ddpm_lab/data/moving_captions.py); a `partial_captions`
fraction leave out the size, the speed or both.

Clips are (N, C, F, H, W) float32 in [-1, 1]. Labels are the shapes data's
`shape * len(COLOURS) + colour` (12 classes: the shapes reference classifiers read each frame);
the data module keeps every clip's attributes (shape, colour, size, direction, speed) per split.
"""

from __future__ import annotations

import math

import torch

from ddpm_lab.data.base import BatchDataModule, split_indices
from ddpm_lab.data.batch import Batch, BatchDataset
from ddpm_lab.data.moving_captions import (
    DIRECTIONS,
    SPEEDS,
    class_clip_prompt,
    clip_caption_words,
    shorten_captions,
)
from ddpm_lab.data.shapes import COLOURS, SHAPES, SIZES, coverage
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.nets.conditioning import Vocabulary

Tensor = torch.Tensor
# the intensity centroid of each shape below its drawing centre, in units of its half extent
# (coverage(): the triangle's apex is at -h and its base at 0.8 h, so its centroid is at 0.2 h)
CENTROID_OFFSET = {"circle": 0.0, "square": 0.0, "triangle": 0.2}


def max_frames(image_size: int) -> int:
    """The most frames whose path a large shape at the fast speed can travel inside the frame."""
    room = 1 - 2 * (max(SIZES.values()) / 2 + 1 / image_size)
    return math.floor(room / max(SPEEDS.values()) + 1e-6) + 1


def draw_clips(num_clips: int, image_size: int, frames: int, seed: int) -> tuple[Tensor, Tensor]:
    """(N, 5) int64 attributes (shape, colour, size, direction, speed) and (N, F, 2) drawing centres
    (x, y) per frame in units of the image side, drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    counts = (len(SHAPES), len(COLOURS), len(SIZES), len(DIRECTIONS), len(SPEEDS))
    attrs = torch.stack([torch.randint(0, n, (num_clips,), generator=gen) for n in counts], dim=1)
    start, across = torch.rand(num_clips, 2, generator=gen).unbind(1)
    half = torch.tensor(list(SIZES.values()))[attrs[:, 2]] / 2
    lo, hi = half + 1 / image_size, 1 - half - 1 / image_size          # where the centre may go
    step = torch.tensor(list(SPEEDS.values()))[attrs[:, 4]]
    unit = torch.tensor(list(DIRECTIONS.values()), dtype=torch.float32)[attrs[:, 3]]   # (N, 2)
    length = step * (frames - 1)
    lower = lo + start * (hi - lo - length).clamp(min=0)                 # the path's low end along it
    sign = unit.sum(1)                                                   # +1 right / down, -1 left / up
    first = torch.where(sign > 0, lower, lower + length)
    t = torch.arange(frames, dtype=torch.float32)
    along = first[:, None] + sign[:, None] * step[:, None] * t           # (N, F)
    other = (lo + across * (hi - lo))[:, None].expand(-1, frames)
    horizontal = (unit[:, 0] != 0)[:, None]
    centres = torch.stack([torch.where(horizontal, along, other), torch.where(horizontal, other, along)], dim=2)
    return attrs, centres


def render_clips(attrs: Tensor, centres: Tensor, image_size: int) -> Tensor:
    """(N, 3, F, S, S) clips in [-1, 1]: every frame of a chunk of clips through `coverage` at once."""
    n, frames = centres.shape[:2]
    half = torch.tensor(list(SIZES.values()))[attrs[:, 2]] / 2
    colours = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[attrs[:, 1]] / 255.0
    per_chunk = max(1, 2 ** 23 // (frames * (4 * image_size) ** 2))    # ~8M supersample points a chunk
    chunks = []
    for i in range(0, n, per_chunk):
        sl = slice(i, i + per_chunk)
        m = len(attrs[sl])
        cov = coverage(attrs[sl, 0].repeat_interleave(frames), half[sl].repeat_interleave(frames),
                       centres[sl, :, 0].reshape(-1), centres[sl, :, 1].reshape(-1), image_size)
        cov = cov.reshape(m, frames, image_size, image_size)
        chunks.append(cov[:, None] * colours[sl, :, None, None, None])
    return (torch.cat(chunks) * 2 - 1).contiguous()


def make_moving_shapes(num_clips: int, image_size: int = 16, frames: int = 8, seed: int = 0,
                       partial_captions: float = 0.0) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """(N, 3, F, S, S) float32 clips in [-1, 1], (N,) labels, (N, 5) attributes and N captions (a
    `partial_captions` fraction of them shortened)."""
    attrs, centres = draw_clips(num_clips, image_size, frames, seed)
    clips = render_clips(attrs, centres, image_size)
    labels = attrs[:, 0] * len(COLOURS) + attrs[:, 1]
    return clips, labels, attrs, shorten_captions(attrs, partial_captions, seed)


def centroid_paths(num_clips: int, image_size: int = 16, frames: int = 8, seed: int = 0) -> Tensor:
    """(N, F, 2) the true intensity centroid (x, y) of each frame of `make_moving_shapes(num_clips,
    image_size, frames, seed)`, in pixels (pixel i spans [i, i + 1))."""
    attrs, centres = draw_clips(num_clips, image_size, frames, seed)
    half = torch.tensor(list(SIZES.values()))[attrs[:, 2]] / 2
    offset = torch.tensor(list(CENTROID_OFFSET.values()))[attrs[:, 0]] * half
    centres = centres.clone()
    centres[..., 1] += offset[:, None]
    return centres * image_size


class MovingShapesDataModule(BatchDataModule):
    """Batches of (N, C, F, H, W) `image` clips, `label` and caption `tokens` from the moving shapes;
    `captions` and `attributes` per split."""

    name = "moving_shapes"
    num_classes = len(SHAPES) * len(COLOURS)

    def __init__(self, num_clips: int = 6000, image_size: int = 16, channels: int = 3, frames: int = 8,
                 fps: int = 4, batch_size: int = 64, val_fraction: float = 0.05, data_seed: int = 0,
                 seed: int = 0, num_workers: int = 0, partial_captions: float = 0.5):
        super().__init__(batch_size, seed, num_workers, val_fraction)
        if channels != 3:
            raise choice_error("data.channels", channels, (3,), "shapes are RGB")
        if image_size < 16:
            raise UserError(f"data.image_size={image_size} must be >= 16 (16 and 32 have reference classifiers)")
        if not 2 <= frames <= max_frames(image_size):
            raise UserError(f"data.frames={frames} must lie in [2, {max_frames(image_size)}] at image_size "
                            f"{image_size} (a large fast shape must stay in the frame)")
        if fps < 1:
            raise UserError(f"data.fps={fps} must be >= 1")
        if num_clips < 20:
            raise UserError(f"data.num_clips={num_clips} must be >= 20")
        if not 0.0 <= partial_captions <= 1.0:
            raise UserError(f"data.partial_captions={partial_captions} must lie in [0, 1]")
        self.num_clips, self.image_size, self.channels, self.frames = num_clips, image_size, channels, frames
        self.fps, self.data_seed, self.partial_captions = fps, data_seed, partial_captions
        self.vocabulary = Vocabulary(clip_caption_words(), max_tokens=8)     # start + at most 7 words
        self.class_prompts = [class_clip_prompt(k) for k in range(self.num_classes)]   # as captions say it
        self.train_captions: list[str] = []
        self.val_captions: list[str] = []
        self.train_attributes = self.val_attributes = torch.empty(0, 5, dtype=torch.long)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One clip's shape: (channels, frames, size, size)."""
        return (self.channels, self.frames, self.image_size, self.image_size)

    @property
    def metadata(self) -> dict:
        """Frames per second, frames per clip, and the speeds (fraction of the side and pixels per frame)."""
        return {"fps": self.fps, "frames": self.frames, "speeds": dict(SPEEDS),
                "speeds_px": {k: v * self.image_size for k, v in SPEEDS.items()}}

    def make_splits(self) -> tuple[BatchDataset, BatchDataset]:
        clips, labels, attrs, captions = make_moving_shapes(self.num_clips, self.image_size, self.frames,
                                                            self.data_seed, self.partial_captions)
        data = Batch(image=clips, label=labels, tokens=self.vocabulary.encode(captions))
        train, val = split_indices(self.num_clips, self.val_fraction)
        self.train_captions = [captions[i] for i in train.tolist()]
        self.val_captions = [captions[i] for i in val.tolist()]
        self.train_attributes, self.val_attributes = attrs[train], attrs[val]
        return BatchDataset(data.select(train)), BatchDataset(data.select(val))
