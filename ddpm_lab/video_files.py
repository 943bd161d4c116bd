"""Video clips to files: one GIF (or MP4) per clip, a tiled grid of clips played together, a PNG
strip of frames, and clips to W&B (`wandb.Video` of the written GIF, so W&B needs no encoder).

Clips are (C, F, H, W) tensors in [-1, 1] (a batch: (N, C, F, H, W)). GIFs are written with
Pillow; MP4 needs the optional `video` extra (imageio with its ffmpeg binary:
`pip install 'ddpm_lab[video]'`), and asking for it without the extra is a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger, WandbLogger

from ddpm_lab.checkpoint_io import atomic_write_bytes
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.viz import image_grid, save_grid, to_unit

FORMATS = ("gif", "mp4")
MP4_EXTRA = "format=mp4 needs the optional video extra (imageio with ffmpeg): pip install 'ddpm_lab[video]'"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise choice_error("format", fmt, FORMATS)
    if fmt == "mp4":
        try:
            import imageio.v3  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise UserError(MP4_EXTRA) from None


def grid_frames(clips: torch.Tensor, nrow: int | None = None, upscale: int = 1) -> torch.Tensor:
    """(F, 3, H', W') uint8 frames: frame f of every clip tiled `nrow` to a row (a lone clip: its
    own frames, unpadded)."""
    if len(clips) == 1:
        frames = to_unit(clips[0].transpose(0, 1))                  # (F, C, H, W)
        if upscale > 1:
            frames = torch.nn.functional.interpolate(frames, scale_factor=upscale, mode="nearest")
    else:
        frames = torch.stack([image_grid(clips[:, :, f], nrow, upscale) for f in range(clips.shape[2])])
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    return (frames * 255).round().to(torch.uint8)


def encode_gif(frames: torch.Tensor, fps: float) -> bytes:
    """(F, 3, H, W) uint8 frames as an endlessly looping GIF."""
    import io

    from PIL import Image

    images = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=round(1000 / fps), disposal=1)
    return buffer.getvalue()


def encode_mp4(frames: torch.Tensor, fps: float) -> bytes:
    """(F, 3, H, W) uint8 frames as H.264 MP4 (sides padded to even sizes, as yuv420p needs)."""
    check_format("mp4")
    import imageio.v3 as iio

    h, w = frames.shape[-2:]
    frames = torch.nn.functional.pad(frames, (0, w % 2, 0, h % 2))
    return iio.imwrite("<bytes>", frames.permute(0, 2, 3, 1).numpy(), extension=".mp4", fps=fps,
                       codec="libx264", macro_block_size=1)


def save_clip(clips: torch.Tensor, path: str | Path, fps: float = 4, nrow: int | None = None,
              upscale: int = 1, fmt: str = "gif") -> Path:
    """One clip (C, F, H, W), or clips (N, C, F, H, W) tiled `nrow` to a row, as a GIF or MP4 file."""
    check_format(fmt)
    clips = clips[None] if clips.ndim == 4 else clips
    frames = grid_frames(clips, nrow, upscale)
    data = encode_gif(frames, fps) if fmt == "gif" else encode_mp4(frames, fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def save_frame_strip(clips: torch.Tensor, path: str | Path, upscale: int = 1) -> Path:
    """A PNG with one row per clip and one column per frame."""
    rows = clips.permute(0, 2, 1, 3, 4).flatten(0, 1)           # (N * F, C, H, W), clip by clip
    return save_grid(rows, path, nrow=clips.shape[2], upscale=upscale)


def clip_grid_rows(num_clips: int, prompts: list[str] | None) -> int:
    """Clips per row of a tiled grid: the clips of one prompt (prompts x seeds) when the prompts
    come in runs of equal length, else a square-ish grid."""
    if prompts and len(prompts) == num_clips:
        runs = [1]
        for a, b in zip(prompts, prompts[1:]):
            runs[-1:] = [runs[-1] + 1] if a == b else [runs[-1], 1]
        if len(set(runs)) == 1 and 1 < runs[0] < num_clips:
            return runs[0]
    return math.ceil(math.sqrt(num_clips))


def log_clips(loggers: Iterable[Logger], key: str, path: str | Path, step: int, fps: float,
              caption: str | None = None) -> None:
    """A written GIF to every W&B logger as a `wandb.Video`."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            extra = {"caption": [caption]} if caption else {}
            logger.log_video(key, [str(path)], step=step, fps=[fps], format=["gif"], **extra)
