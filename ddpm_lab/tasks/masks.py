"""Inpainting masks: which pixels of an image are known.

A mask is a (H, W) bool tensor, True where the pixel is known (kept) and False where the task
fills it in. Named masks follow the RePaint paper's evaluation masks at toy scale; a mask image
is read as known where it is brighter than mid-grey.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddpm_lab.errors import UserError, choice_error

NAMED_MASKS = ("bottom_half", "left_half", "center", "random_pixels")
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")       # mask image files


def make_mask(spec: str, size: tuple[int, int], generator: torch.Generator | None = None,
              known_fraction: float = 0.5) -> torch.Tensor:
    """The (H, W) bool mask (True = known) named by `spec`, or read from the image file `spec`.

    `bottom_half` hides the bottom half, `left_half` the left half, `center` the central square
    of half the side, `random_pixels` keeps each pixel with probability `known_fraction` (drawn
    from `generator`).
    """
    height, width = size
    known = torch.ones(height, width, dtype=torch.bool)
    if spec == "bottom_half":
        known[height // 2:] = False
    elif spec == "left_half":
        known[:, : width // 2] = False
    elif spec == "center":
        top, left = height // 4, width // 4
        known[top: top + height // 2, left: left + width // 2] = False
    elif spec == "random_pixels":
        if not 0.0 <= known_fraction <= 1.0:
            raise UserError(f"mask: known_fraction={known_fraction} is not allowed; choose a number in [0, 1]")
        known = torch.rand(height, width, generator=generator) < known_fraction
    elif Path(spec).suffix.lower() in MASK_SUFFIXES:
        known = read_mask(Path(spec), size)
    else:
        raise choice_error("mask", spec, [*NAMED_MASKS, "<path to a mask image>"])
    return known


def read_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A mask image (any mode) resized to `size` with nearest neighbours; known where > 127."""
    from PIL import Image

    if not path.is_file():
        raise UserError(f"mask: no file {path}; give a named mask ({', '.join(NAMED_MASKS)}) or a mask image")
    try:
        image = Image.open(path).convert("L")
    except OSError as err:
        raise UserError(f"mask: {path} is not an image a mask can be read from ({err})") from None
    image = image.resize((size[1], size[0]), Image.NEAREST)
    return torch.from_numpy(np.asarray(image) > 127)
