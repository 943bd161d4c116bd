"""The words of the moving-shapes clips: attributes <-> captions, and prompts parsed back into
attributes (what the video judge compares a clip with).

A clip's attributes are five integers (shape, colour, size, direction, speed), indices into
`SHAPES`, `COLOURS`, `SIZES` (ddpm_lab/data/shapes.py), `DIRECTIONS` and `SPEEDS`. Its caption
reads "a small red circle moving left fast"; a shortened caption leaves out the size, the speed or
both ("a red circle moving left"). A parsed prompt holds None (in a tensor: -1) for what it does
not say.
"""

from __future__ import annotations

import torch

from ddpm_lab.data.shapes import COLOURS, SHAPES, SIZES
from ddpm_lab.errors import UserError
from ddpm_lab.nets.conditioning import Vocabulary, words_of

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}   # unit (x, y); y grows down
SPEEDS = {"slow": 0.02, "fast": 0.05}          # distance per frame as a fraction of the image side
ATTRIBUTES = ("shape", "colour", "size", "direction", "speed")
MISSING = -1                                   # an attribute a prompt leaves out, in a tensor
CHOICES = {"shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES),
           "direction": list(DIRECTIONS), "speed": list(SPEEDS)}


def clip_caption(shape: int, colour: int, size: int, direction: int, speed: int, with_size: bool = True,
                 with_speed: bool = True) -> str:
    """ "a small red circle moving left fast"; `with_size` / `with_speed` False leave those out."""
    words = ["a"] + [CHOICES["size"][size]] * with_size + [CHOICES["colour"][colour], SHAPES[shape],
                                                              "moving", CHOICES["direction"][direction]]
    return " ".join(words + [CHOICES["speed"][speed]] * with_speed)


def class_clip_prompt(label: int) -> str:
    """The short prompt of class `label` (shape * 4 + colour) as the clip captions say it, with a
    direction (they always name one): "a red circle moving left", the directions in turn over the
    classes."""
    shape, colour = divmod(label, len(COLOURS))
    return clip_caption(shape, colour, 0, (shape + colour) % len(DIRECTIONS), 0, with_size=False, with_speed=False)


def attributes_to_captions(attributes: torch.Tensor) -> list[str]:
    """(N, 5) attributes -> N captions; a MISSING size or speed is left out of its caption."""
    texts = []
    for shape, colour, size, direction, speed in attributes.tolist():
        texts.append(clip_caption(shape, colour, max(size, 0), direction, max(speed, 0),
                                  with_size=size != MISSING, with_speed=speed != MISSING))
    return texts


def shorten_captions(attributes: torch.Tensor, fraction: float, seed: int) -> list[str]:
    """Full captions, except a `fraction` that leave out the size, the speed or both (equally likely)."""
    gen = torch.Generator().manual_seed(seed + 7919)
    short = torch.rand(len(attributes), generator=gen) < fraction
    drop = torch.randint(1, 4, (len(attributes),), generator=gen)      # 1: size, 2: speed, 3: both
    drop = torch.where(short, drop, torch.zeros_like(drop))
    return [clip_caption(*a, with_size=not d & 1, with_speed=not d & 2)
            for a, d in zip(attributes.tolist(), drop.tolist())]


def parse_prompt(prompt: str) -> dict[str, int | None]:
    """A prompt's attributes by name (indices; None where it does not say). It must name one shape
    and one colour; words that name no attribute ("a", "moving") are ignored."""
    found: dict[str, int | None] = dict.fromkeys(ATTRIBUTES)
    for word in words_of(prompt):
        for name, choices in CHOICES.items():
            if word in choices:
                if found[name] is not None and choices[found[name]] != word:
                    raise UserError(f"prompt {prompt!r} names two {name}s; name one of: {', '.join(choices)}")
                found[name] = choices.index(word)
    for name in ("shape", "colour"):
        if found[name] is None:
            raise UserError(f"prompt {prompt!r} names no {name}; name one of: {', '.join(CHOICES[name])}")
    return found


def prompts_to_attributes(prompts: list[str]) -> torch.Tensor:
    """(N, 5) int64 attributes of N prompts, MISSING (-1) where a prompt does not say."""
    rows = [[MISSING if v is None else v for v in parse_prompt(p).values()] for p in prompts]
    return torch.tensor(rows, dtype=torch.long).reshape(len(prompts), len(ATTRIBUTES))


def clip_caption_words() -> list[str]:
    """Every word the clip captions use, sorted (the text encoder's vocabulary)."""
    texts = [clip_caption(0, 0, 0, d, 0) for d in range(len(DIRECTIONS))]
    texts += [" ".join(choices) for choices in CHOICES.values()]
    return Vocabulary.from_texts(texts).words
