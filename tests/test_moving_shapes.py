"""The moving-shapes clips: the pixels move the way the captions say, the shape stays in the frame,
its colour is the caption's, and labels, attributes and captions agree."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from ddpm_lab.config_check import check_config
from ddpm_lab.data import MovingShapesDataModule
from ddpm_lab.data.moving_captions import (
    DIRECTIONS,
    MISSING,
    SPEEDS,
    attributes_to_captions,
    clip_caption,
    parse_prompt,
    prompts_to_attributes,
)
from ddpm_lab.data.moving_shapes import centroid_paths, make_moving_shapes, max_frames
from ddpm_lab.data.shapes import COLOURS, SHAPES, SIZES
from ddpm_lab.errors import UserError
from tests.helpers import compose_train


@pytest.fixture(scope="module")
def clips():
    return make_moving_shapes(200, image_size=16, frames=8, seed=0, partial_captions=0.5)


def pixel_centroids(x: torch.Tensor) -> torch.Tensor:
    """(N, F, 2) coverage-weighted centroids (x, y) in pixels of (N, 3, F, S, S) clips."""
    cov = ((x + 1) / 2).amax(1)
    pos = torch.arange(x.shape[-1], dtype=torch.float32) + 0.5
    mass = cov.sum((2, 3))
    return torch.stack([(cov.sum(2) * pos).sum(2) / mass, (cov.sum(3) * pos).sum(2) / mass], dim=2)


def test_clips_shape_range_and_seed(clips):
    x, y, attrs, captions = clips
    assert x.shape == (200, 3, 8, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and len(captions) == 200
    assert attrs.shape == (200, 5) and attrs.dtype == torch.int64
    assert torch.equal(y, attrs[:, 0] * len(COLOURS) + attrs[:, 1])
    again, other = make_moving_shapes(20, seed=3), make_moving_shapes(20, seed=3)
    assert torch.equal(again[0], other[0]) and again[3] == other[3]
    assert not torch.equal(again[0], make_moving_shapes(20, seed=4)[0])


def test_centroids_move_as_the_caption_says(clips):
    x, _, attrs, _ = clips
    found = pixel_centroids(x)
    # the true path in pixels, up to the 1/4-pixel supersampling of the edges
    assert (found - centroid_paths(200, 16, 8, seed=0)).abs().max() < 0.2
    t = torch.arange(8.0) - 3.5
    velocity = (t[None, :, None] * (found - found.mean(1, keepdim=True))).sum(1) / t.pow(2).sum()
    unit = torch.tensor(list(DIRECTIONS.values()), dtype=torch.float32)[attrs[:, 3]]
    speed = torch.tensor(list(SPEEDS.values()))[attrs[:, 4]] * 16                 # px per frame
    assert (velocity - unit * speed[:, None]).abs().max() < 0.05
    assert (found.diff(dim=1) - (unit * speed[:, None])[:, None]).abs().max() < 0.3
    assert SPEEDS["fast"] >= 2 * SPEEDS["slow"]


def test_shape_stays_in_frame_and_has_the_caption_colour(clips):
    x, _, attrs, _ = clips
    cov = ((x + 1) / 2).amax(1)                                                 # (N, F, S, S)
    border = torch.cat([cov[..., 0, :], cov[..., -1, :], cov[..., :, 0], cov[..., :, -1]], dim=-1)
    assert border.max() < 1e-6
    expected = torch.tensor(list(SIZES.values()))[attrs[:, 2]] / 2              # a full shape every frame
    mass = cov.sum((2, 3))
    assert ((mass.amax(1) - mass.amin(1)) < 0.15 * mass.mean(1)).all()
    assert (mass.amin(1) > 0.9 * (expected * 16) ** 2).all()     # a triangle: 1.62 h^2, green: 0.78 bright
    colours = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5 - 1
    for clip, colour in zip(x, attrs[:, 1].tolist()):
        pixels = clip.flatten(1)                                               # (3, F * S * S)
        inner = pixels[:, pixels.sum(0).argmax()]                               # a fully covered pixel
        assert torch.allclose(inner, colours[colour], atol=0.01)


def test_captions_partial_fraction_and_parsing(clips):
    _, _, attrs, captions = clips
    parsed = prompts_to_attributes(captions)
    kept = parsed != MISSING
    assert torch.equal(parsed[kept], attrs[kept]) and kept[:, [0, 1, 3]].all()
    short = (~kept).any(1).float().mean().item()
    assert 0.35 < short < 0.65
    assert {(a, b) for a, b in (~kept[:, [2, 4]]).tolist()} == {(False, False), (True, False), (False, True), (True, True)}
    assert clip_caption(0, 0, 0, 0, 1) == "a small red circle moving left fast"
    assert clip_caption(2, 3, 1, 2, 0, with_size=False) == "a yellow triangle moving up slow"
    assert parse_prompt("a blue square moving down") == {"shape": 1, "colour": 2, "size": None,
                                                          "direction": 3, "speed": None}
    assert attributes_to_captions(torch.tensor([[1, 1, MISSING, 1, MISSING]])) == ["a green square moving right"]
    with pytest.raises(UserError, match="names no shape"):
        parse_prompt("a red thing moving left")
    full = make_moving_shapes(50, seed=1)[3]
    assert all(len(c.split()) == 7 for c in full)


def test_too_many_frames_and_other_bad_values():
    assert max_frames(16) >= 9 and max_frames(32) >= 9
    with pytest.raises(UserError, match=f"data.frames=11 must lie in \\[2, {max_frames(16)}\\]"):
        MovingShapesDataModule(frames=11)
    with pytest.raises(UserError, match="data.image_size=8"):
        MovingShapesDataModule(image_size=8)
    with pytest.raises(UserError, match="data.channels=1"):
        MovingShapesDataModule(channels=1)
    with pytest.raises(UserError, match="data.partial_captions"):
        MovingShapesDataModule(partial_captions=2)
    x = make_moving_shapes(20, image_size=32, frames=max_frames(32), seed=0)[0]
    cov = ((x + 1) / 2).amax(1)
    assert cov[..., 0, :].max() < 1e-6 and cov[..., :, -1].max() < 1e-6


def test_data_module_splits_attributes_and_metadata():
    dm = MovingShapesDataModule(num_clips=100, batch_size=16, frames=9, fps=6)
    dm.setup("fit")
    assert dm.image_shape == (3, 9, 16, 16) and dm.frames == 9 and dm.num_classes == 12
    assert dm.metadata["fps"] == 6 and dm.metadata["frames"] == 9 and dm.metadata["speeds"] == SPEEDS
    assert len(dm.train_set) == 95 and len(dm.val_captions) == 5 and dm.val_attributes.shape == (5, 5)
    assert dm.class_prompts[:2] == ["a red circle moving left", "a green circle moving right"]
    assert len(dm.class_prompts) == 12 and len({p.split()[-1] for p in dm.class_prompts}) == 4
    # the default prompts say what training captions say: shape, colour and a direction
    from ddpm_lab.data.moving_captions import prompts_to_attributes
    attrs = prompts_to_attributes(dm.class_prompts)
    assert (attrs[:, 0] * 4 + attrs[:, 1]).tolist() == list(range(12)) and (attrs[:, 3] >= 0).all()
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (16, 3, 9, 16, 16) and batch.tokens.shape == (16, 8)
    labels = dm.train_attributes[:, 0] * len(COLOURS) + dm.train_attributes[:, 1]
    assert torch.equal(torch.cat([b.label for b in dm.val_dataloader()]), dm.val_attributes[:, 0] * 4 +
                       dm.val_attributes[:, 1])
    assert labels.max() < len(SHAPES) * len(COLOURS)
    assert set(dm.vocabulary.decode(batch.tokens)) <= set(dm.train_captions)


def test_config_composes_instantiates_and_is_checked(tmp_path):
    cfg = compose_train(["data=moving_shapes", "data.num_clips=40", "data.image_size=32"], tmp_path)
    check_config(cfg, "train")
    dm = instantiate(cfg.data)
    assert isinstance(dm, MovingShapesDataModule) and dm.image_shape == (3, 8, 32, 32) and dm.fps == 4
    bad = compose_train(["data=moving_shapes", "data.frames=abc"], tmp_path)
    with pytest.raises(UserError, match="data.frames='abc' must be an integer >= 2"):
        check_config(bad, "train")
