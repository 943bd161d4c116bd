"""The video judge: real moving-shape clips score 100% on every label metric, and each control
(static, shuffled, reversed, independent frames) fails the metric it breaks."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.data.moving_captions import MISSING, attributes_to_captions
from ddpm_lab.data.moving_shapes import make_moving_shapes
from ddpm_lab.errors import UserError
from ddpm_lab.metrics.video import (
    LABEL_METRICS,
    controls,
    judge_clips,
    judge_real_and_controls,
    summarise,
)


@pytest.fixture(scope="module", params=[(16, 8, 192), (32, 9, 64)], ids=["16x16x8", "32x32x9"])
def table(request):
    size, frames, n = request.param
    clips, _, attrs, captions = make_moving_shapes(n, size, frames, seed=5, partial_captions=0.5)
    return judge_real_and_controls(clips, captions, seed=0)


def test_real_clips_score_full_marks(table):
    real = table["real"]
    for name in LABEL_METRICS:
        assert real[name] == 1.0, name
    assert real["median_residual_px"] < 0.1


def test_each_control_fails_its_metric(table):
    real = table["real"]
    assert table["static"]["speed"] == 0.0 and table["static"]["direction"] == 0.0
    assert table["shuffled"]["median_residual_px"] >= 3 * real["median_residual_px"]
    assert table["shuffled"]["median_residual_px"] > 0.3
    assert table["reversed"]["direction"] == 0.0
    assert table["independent"]["identity"] < 0.2
    # what a control leaves alone still reads right
    assert table["static"]["shape_colour"] == table["shuffled"]["identity"] == table["reversed"]["speed"] == 1.0


def test_omitted_attributes_leave_the_clip_out_of_that_metric():
    clips, _, attrs, _ = make_moving_shapes(24, 16, 8, seed=2)
    short = attrs.clone()
    short[:8, 2] = MISSING                      # no size
    short[4:12, 4] = MISSING                    # no speed
    wrong = short.clone()
    wrong[:8, 3] = (wrong[:8, 3] + 1) % 4       # another direction
    scores = judge_clips(clips, attributes_to_captions(wrong))
    assert scores.size[:8].isnan().all() and scores.speed[4:12].isnan().all()
    summary = summarise(scores)
    assert summary["n_size"] == 16 and summary["n_speed"] == 16 and summary["size"] == summary["speed"] == 1.0
    assert summary["n_direction"] == 24 and summary["direction"] == pytest.approx(16 / 24)
    assert torch.equal(judge_clips(clips, short).predicted, scores.predicted)


def test_controls_are_real_frames_moved():
    clips = make_moving_shapes(6, 16, 8, seed=1)[0]
    made = controls(clips, seed=0)
    assert set(made) == {"static", "shuffled", "reversed", "independent"}
    assert all(c.shape == clips.shape for c in made.values())
    assert torch.equal(made["reversed"][:, :, 0], clips[:, :, -1])
    assert torch.equal(made["static"][:, :, 5], clips[:, :, 0])
    assert torch.allclose(made["shuffled"].sum(2), clips.sum(2), atol=1e-5)


def test_wrong_input_is_a_user_error():
    clips, _, _, captions = make_moving_shapes(4, 16, 8, seed=0)
    with pytest.raises(UserError, match="clips of shape"):
        judge_clips(clips[:, :, 0], captions)
    with pytest.raises(UserError, match="one prompt per clip"):
        judge_clips(clips, captions[:3])
    with pytest.raises(UserError, match="names no colour"):
        judge_clips(clips, ["a circle moving left"] * 4)
