"""Procedural shapes with captions: RGB images of one shape each, drawn at random.

Each image shows a circle, square or triangle in one of four colours, small or large, at one of
nine positions (with a little jitter), on a black background, with a caption such as "a small red
circle at the top left". Shapes are rasterised with 4x4 supersampling (smooth edges), from a fixed
seed, so the data set is the same everywhere and nothing is downloaded.

Labels: `label = shape * len(COLOURS) + colour` (12 classes: what the shapes reference classifier
predicts, and what class-conditional models are conditioned on); `captions` holds the text.
Batches hold `image`, `label` and caption `tokens` (ids). For text conditioning a fraction
`partial_captions` of the captions leave out the size, the position or both ("a red circle at
the top", "a small red circle", "a red circle"), so short prompts are in the training data too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpm_lab.data.base import BatchDataModule, split_indices
from ddpm_lab.data.batch import Batch, BatchDataset
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.nets.conditioning import Vocabulary

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (240, 210, 40)}
SIZES = {"small": 0.26, "large": 0.42}          # extent (diameter) as a fraction of the image side
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")


def position_phrase(row: int, col: int) -> str:
    """ "at the top left", "at the top", "in the center", "at the right", ..."""
    r, c = ROWS[row], COLUMNS[col]
    if r == "middle" and c == "center":
        return "in the center"
    if r == "middle":
        return f"at the {c}"
    if c == "center":
        return f"at the {r}"
    return f"at the {r} {c}"


def caption(shape: int, colour: int, size: int, row: int, col: int, with_size: bool = True,
            with_position: bool = True) -> str:
    words = ["a"] + [list(SIZES)[size]] * with_size + [list(COLOURS)[colour], SHAPES[shape]]
    return " ".join(words + [position_phrase(row, col)] * with_position)


def class_prompt(label: int) -> str:
    """The short prompt of a class: "a red circle" for label 0, ..."""
    return f"a {list(COLOURS)[label % len(COLOURS)]} {SHAPES[label // len(COLOURS)]}"


def caption_words() -> list[str]:
    """Every word the captions use, sorted (the text encoder's vocabulary)."""
    texts = [caption(0, 0, 0, r, c) for r in range(len(ROWS)) for c in range(len(COLUMNS))]
    texts += list(SHAPES) + list(COLOURS) + list(SIZES)
    return Vocabulary.from_texts(texts).words


def shorten(captions: list[str], attrs: torch.Tensor, fraction: float, seed: int) -> list[str]:
    """Leave out the size, the position or both (equally likely) in a `fraction` of the captions."""
    gen = torch.Generator().manual_seed(seed + 7919)
    short = torch.rand(len(captions), generator=gen) < fraction
    drop = torch.randint(1, 4, (len(captions),), generator=gen)      # 1: size, 2: position, 3: both
    return [caption(*a, with_size=not d & 1, with_position=not d & 2) if s else text
            for text, a, s, d in zip(captions, attrs.tolist(), short.tolist(), drop.tolist())]


def coverage(shape: torch.Tensor, half: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, image_size: int,
             supersample: int = 4) -> torch.Tensor:
    """(N, S, S) fraction of each pixel covered by each shape (a box filter over a supersample x
    supersample grid of points per pixel: smooth edges). Units: the image side is 1."""
    side = image_size * supersample
    grid = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    X, Y = grid[None, None, :], grid[None, :, None]
    dx, dy, h = X - cx[:, None, None], Y - cy[:, None, None], half[:, None, None]
    circle = dx ** 2 + dy ** 2 <= h ** 2
    square = (dx.abs() <= 0.9 * h) & (dy.abs() <= 0.9 * h)
    # triangle with apex (0, -h), base corners (+-h, 0.8 h): below the two sides, above the base
    triangle = (dy <= 0.8 * h) & (2 * dx.abs() <= (dy + h))
    masks = torch.stack([circle, square, triangle])[shape, torch.arange(len(shape))]
    return F.avg_pool2d(masks.float()[:, None], supersample)[:, 0]


def make_shapes(num_images: int, image_size: int = 32, seed: int = 0, partial_captions: float = 0.0,
                ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(N, 3, S, S) float32 images in [-1, 1], (N,) labels, N captions (a `partial_captions`
    fraction of them shortened)."""
    gen = torch.Generator().manual_seed(seed)
    attrs = torch.stack([torch.randint(0, n, (num_images,), generator=gen)
                         for n in (len(SHAPES), len(COLOURS), len(SIZES), len(ROWS), len(COLUMNS))], dim=1)
    jitter = (torch.rand(num_images, 2, generator=gen) - 0.5) * 0.06
    half = torch.tensor(list(SIZES.values()))[attrs[:, 2]] / 2
    cx = 0.2 + 0.3 * attrs[:, 4] + jitter[:, 0]          # column centres at 0.2, 0.5, 0.8
    cy = 0.2 + 0.3 * attrs[:, 3] + jitter[:, 1]
    colours = torch.tensor(list(COLOURS.values()), dtype=torch.float32)[attrs[:, 1]] / 255.0
    chunks = []
    for i in range(0, num_images, 1000):
        sl = slice(i, i + 1000)
        cov = coverage(attrs[sl, 0], half[sl], cx[sl], cy[sl], image_size)
        chunks.append(cov[:, None] * colours[sl, :, None, None])
    x = torch.cat(chunks) * 2 - 1
    labels = attrs[:, 0] * len(COLOURS) + attrs[:, 1]
    captions = [caption(*a) for a in attrs.tolist()]
    if partial_captions > 0:
        captions = shorten(captions, attrs, partial_captions, seed)
    return x.contiguous(), labels, captions


class ShapesDataModule(BatchDataModule):
    """Batches of `image`, `label` and caption `tokens` from the procedural shapes; `captions` per split."""

    name = "shapes"
    num_classes = len(SHAPES) * len(COLOURS)

    def __init__(self, num_images: int = 12_000, image_size: int = 32, channels: int = 3, batch_size: int = 64,
                 val_fraction: float = 0.05, data_seed: int = 0, seed: int = 0, num_workers: int = 0,
                 partial_captions: float = 0.5):
        super().__init__(batch_size, seed, num_workers, val_fraction)
        if channels != 3:
            raise choice_error("data.channels", channels, (3,), "shapes are RGB")
        if image_size < 8:
            raise UserError(f"data.image_size={image_size} must be >= 8 (shapes need a few pixels)")
        if num_images < 20:
            raise UserError(f"data.num_images={num_images} must be >= 20")
        if not 0.0 <= partial_captions <= 1.0:
            raise UserError(f"data.partial_captions={partial_captions} must lie in [0, 1]")
        self.partial_captions = partial_captions
        self.vocabulary = Vocabulary(caption_words(), max_tokens=9)    # start + at most 8 words
        self.class_prompts = [class_prompt(k) for k in range(self.num_classes)]
        self.num_images, self.image_size, self.channels, self.data_seed = num_images, image_size, channels, data_seed
        self.train_captions: list[str] = []
        self.val_captions: list[str] = []

    def make_splits(self) -> tuple[BatchDataset, BatchDataset]:
        x, y, captions = make_shapes(self.num_images, self.image_size, self.data_seed, self.partial_captions)
        data = Batch(image=x, label=y, tokens=self.vocabulary.encode(captions))
        train, val = split_indices(self.num_images, self.val_fraction)
        self.train_captions = [captions[i] for i in train.tolist()]
        self.val_captions = [captions[i] for i in val.tolist()]
        return BatchDataset(data.select(train)), BatchDataset(data.select(val))
