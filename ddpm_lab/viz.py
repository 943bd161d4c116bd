"""Figures: sample grids, the noise-to-data trajectory and the data-to-noise forward process."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images to [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def image_grid(images: torch.Tensor, nrow: int | None = None, upscale: int = 1) -> torch.Tensor:
    """A (C, H, W) grid in [0, 1] of [-1, 1] images, optionally upscaled (nearest) for viewing."""
    x = to_unit(images)
    if upscale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    return make_grid(x, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=2, pad_value=1.0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, upscale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow, upscale), path)
    return path


def pick_frames(num_frames_total: int, num_columns: int) -> list[int]:
    """Evenly spaced indices 0..num_frames_total-1 including both ends."""
    n = min(num_columns, num_frames_total)
    return sorted({round(i * (num_frames_total - 1) / max(n - 1, 1)) for i in range(n)})


def save_strip_figure(frames: torch.Tensor, labels: list[str], path: str | Path, title: str,
                      upscale: int = 4) -> Path:
    """Rows = examples, columns = frames: `frames` is (num_columns, rows, C, H, W) in [-1, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, rows = frames.shape[0], frames.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.6), squeeze=False)
    for c in range(cols):
        for r in range(rows):
            img = to_unit(frames[c, r]).permute(1, 2, 0).numpy()
            ax = axes[r][c]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c], fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
