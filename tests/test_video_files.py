"""Clip files: GIFs with one frame per clip frame, tiled grids, frame strips, the MP4 extra."""

import sys

import pytest
import torch
from PIL import Image

from ddpm_lab.errors import UserError
from ddpm_lab.video_files import (
    check_format,
    clip_grid_rows,
    grid_frames,
    save_clip,
    save_frame_strip,
)


def clips(n=3, frames=5, size=8):
    x = torch.linspace(-1, 1, n * 3 * frames * size * size).reshape(n, 3, frames, size, size)
    return x


def test_gif_has_one_frame_per_clip_frame_and_the_clip_pixels(tmp_path):
    clip = clips(1)[0]
    path = save_clip(clip, tmp_path / "a.gif", fps=5)
    gif = Image.open(path)
    assert gif.n_frames == 5 and gif.size == (8, 8)
    assert gif.info["duration"] == 200 and gif.info["loop"] == 0
    gif.seek(3)
    got = torch.tensor(list(gif.convert("RGB").getdata()), dtype=torch.float32).reshape(8, 8, 3).permute(2, 0, 1)
    want = ((clip[:, 3] + 1) / 2 * 255)
    assert (got - want).abs().mean() < 8        # GIF palettes quantise colours


def test_grid_tiles_frame_f_of_every_clip(tmp_path):
    x = clips(4)
    frames = grid_frames(x, nrow=2, upscale=2)
    assert frames.shape == (5, 3, 2 * (16 + 2) + 2, 2 * (16 + 2) + 2) and frames.dtype == torch.uint8
    path = save_clip(x, tmp_path / "grid.gif", fps=4, nrow=2, upscale=2)
    assert Image.open(path).n_frames == 5


def test_frame_strip_has_a_row_per_clip_and_a_column_per_frame(tmp_path):
    path = save_frame_strip(clips(3, frames=6), tmp_path / "strip.png")
    w, h = Image.open(path).size
    assert (w, h) == (6 * 10 + 2, 3 * 10 + 2)


def test_mp4_without_its_extra_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(UserError, match=r"format=mp4 needs the optional video extra.*ddpm_lab\[video\]"):
        save_clip(clips(1)[0], tmp_path / "a.mp4", fmt="mp4")
    assert not (tmp_path / "a.mp4").exists()
    with pytest.raises(UserError, match="format='webm' is not allowed"):
        check_format("webm")


def test_mp4_with_the_extra(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v3 as iio

    path = save_clip(clips(1, frames=6, size=16)[0], tmp_path / "a.mp4", fps=4, fmt="mp4")
    assert iio.imread(path).shape[0] == 6


def test_grid_rows_follow_runs_of_equal_prompts():
    assert clip_grid_rows(6, ["a", "a", "a", "b", "b", "b"]) == 3
    assert clip_grid_rows(6, ["a"] * 6) == 3          # one prompt: square-ish
    assert clip_grid_rows(4, None) == 2
    assert clip_grid_rows(5, ["a", "a", "b", "b", "b"]) == 3
