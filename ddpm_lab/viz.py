"""Figures and their logging: sample grids, the noise-to-data trajectory, the data-to-noise
forward process, the 2-D guidance figure and the guidance sweep; images to W&B (`log_images`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, WandbLogger
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
    """The grid of [-1, 1] `images` as a PNG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow, upscale), path)
    return path


def clip_rows(originals: torch.Tensor, reconstructions: torch.Tensor, max_clips: int = 4) -> tuple[torch.Tensor, int]:
    """Clips (N, C, F, H, W) as grid rows: each clip's frames, then its reconstruction's frames below
    (at most `max_clips` clips). Returns (the frames as images, the row length F)."""
    pairs = torch.stack([originals[:max_clips], reconstructions[:max_clips]], dim=1)   # (n, 2, C, F, H, W)
    n, _, c, f, h, w = pairs.shape
    return pairs.permute(0, 1, 3, 2, 4, 5).reshape(n * 2 * f, c, h, w), f


def pick_frames(num_frames_total: int, num_columns: int) -> list[int]:
    """Evenly spaced indices 0..num_frames_total-1 including both ends."""
    n = min(num_columns, num_frames_total)
    return sorted({round(i * (num_frames_total - 1) / max(n - 1, 1)) for i in range(n)})


def log_images(loggers: Iterable[Logger], key: str, images: list, step: int, caption: list[str] | None = None) -> None:
    """Send `images` (tensors in [0, 1] or PNG paths) under `key` to every W&B logger."""
    extra = {"caption": caption} if caption else {}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, images, step=step, **extra)


def log_grid(loggers: Iterable[Logger], key: str, images: torch.Tensor, step: int, nrow: int | None = None,
             upscale: int = 1, caption: str | None = None) -> None:
    """The grid of [-1, 1] `images` to every W&B logger (built only when there is one)."""
    loggers = list(loggers)
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        log_images(loggers, key, [image_grid(images, nrow, upscale)], step, [caption] if caption else None)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure to `path` (its folder made) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def save_strip_figure(frames: torch.Tensor, labels: list[str], path: str | Path, title: str,
                      upscale: int = 4) -> Path:
    """Rows = examples, columns = frames: `frames` is (num_columns, rows, C, H, W) in [-1, 1]."""
    plt = pyplot()
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
    return save_figure(fig, path, dpi=100)


def save_trajectory_figure(trajectory: torch.Tensor, path: str | Path, rows: int = 8, frames: int = 11) -> Path:
    """The noise-to-data figure of a sampler's chain: `trajectory` is (steps + 1, N, C, H, W) in
    [-1, 1] from x_T to x_0 (as a `samplers.Trajectory` callback collects it); `frames` evenly
    spaced states of the first `rows` samples."""
    num_steps = trajectory.shape[0] - 1
    cols = pick_frames(trajectory.shape[0], frames)
    rows = min(rows, trajectory.shape[1])
    labels = ["x_T (noise)" if c == 0 else ("x_0" if c == num_steps else f"step {c}") for c in cols]
    return save_strip_figure(trajectory[cols, :rows], labels, path,
                             f"Reverse process: noise -> data ({num_steps} steps)")


def save_guidance_figure(data: tuple[torch.Tensor, torch.Tensor], panels: list[tuple[str, torch.Tensor]],
                         labels: torch.Tensor, path: str | Path) -> Path:
    """2-D points coloured by class: the training data, then one panel per guidance scale."""
    plt = pyplot()
    colours = plt.get_cmap("tab10")
    all_points = torch.cat([data[0].float(), *[p.float() for _, p in panels]])
    lo, hi = all_points.min(0).values - 0.3, all_points.max(0).values + 0.3
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1), 2.8), sharex=True, sharey=True)
    for ax, (title, (x, y)) in zip(axes, [("data", data), *[(t, (p, labels)) for t, p in panels]]):
        n = min(len(x), 3000)
        for c in y.unique().tolist():
            keep = (y[:n] == c)
            ax.scatter(x[:n][keep, 0], x[:n][keep, 1], s=2, alpha=0.5, color=colours(c), label=f"class {c}")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(lo[0].item(), hi[0].item())
        ax.set_ylim(lo[1].item(), hi[1].item())
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Classifier-free guidance on a mixture of three Gaussians: samples per class vs scale w",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def save_guidance_sweep_figure(sweep: list[dict], floor: dict, path: str | Path) -> Path:
    """FD, class accuracy and diversity against the guidance scale (the trade-off), beside the
    data's values: `sweep` has one row of metrics per scale (with its `guidance_scale`)."""
    plt = pyplot()
    keys = [k for k in ("fd", "accuracy", "diversity") if k in sweep[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    scales = [row["guidance_scale"] for row in sweep]
    for ax, key in zip(axes[0], keys):
        ax.plot(scales, [row[key] for row in sweep], "o-", label="model")
        if key in floor:
            ax.axhline(floor[key], color="gray", ls="--", label="data (held-out)" if key != "diversity" else "data (train)")
        ax.set_xlabel("guidance scale w")
        ax.set_title({"fd": "FD (lower is better)", "accuracy": "class accuracy",
                      "diversity": "within-class feature variance"}[key])
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
