"""The procedural shapes data: captions agree with the pixels, labels with the captions."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2.functional import gaussian_blur

from ddpm_lab.data.shapes import COLOURS, SHAPES, ShapesDataModule, caption, make_shapes
from ddpm_lab.errors import UserError


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(300, image_size=32, seed=0)


def test_images_labels_and_captions_agree(shapes):
    x, y, captions = shapes
    assert x.shape == (300, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    colours = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5 - 1
    for img, label, text in zip(x, y.tolist(), captions):
        shape, colour = divmod(label, len(COLOURS))
        words = text.split()
        assert words[0] == "a" and words[2] == list(COLOURS)[colour] and words[3] == SHAPES[shape]
        lit = img.amax(dim=0) > -0.5                         # the shape's pixels
        assert lit.sum() > 10
        pixels = img[:, lit]
        inner = pixels[:, pixels.sum(0).argmax()]            # a fully covered pixel: its colour
        assert torch.allclose(inner, colours[colour], atol=0.05), text


def test_positions_sizes_and_shapes_are_drawn_where_the_caption_says(shapes):
    x, _, captions = shapes
    for img, text in zip(x, captions):
        lit = (img.amax(dim=0) > -0.5).float()
        rows, cols = torch.nonzero(lit, as_tuple=True)
        cy, cx = rows.float().mean() / 32, cols.float().mean() / 32
        if "top" in text:
            assert cy < 0.4
        if "bottom" in text:
            assert cy > 0.6
        if "left" in text:
            assert cx < 0.4
        if "right" in text:
            assert cx > 0.6
    area = {size: [] for size in ("small", "large")}
    for img, text in zip(x, captions):
        area[text.split()[1]].append((img.amax(dim=0) > -0.5).float().sum())
    assert min(area["large"]) > max(area["small"]) * 0.9
    # a square fills its bounding box, a circle pi/4 of it, a triangle about half
    fill = {s: [] for s in SHAPES}
    for img, text in zip(x, captions):
        lit = img.amax(dim=0) > -0.5
        rows, cols = torch.nonzero(lit, as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill[text.split()[3]].append(lit.sum() / box)
    means = {s: torch.stack(v).mean().item() for s, v in fill.items()}
    assert means["square"] > means["circle"] > means["triangle"]


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_shapes(20, seed=1), make_shapes(20, seed=1), make_shapes(20, seed=2)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]
    assert not torch.equal(a[0], c[0])


def test_caption_grammar():
    assert caption(0, 0, 0, 0, 0) == "a small red circle at the top left"
    assert caption(2, 3, 1, 1, 1) == "a large yellow triangle in the center"
    assert caption(1, 2, 0, 1, 2) == "a small blue square at the right"
    assert caption(1, 1, 1, 2, 1) == "a large green square at the bottom"


def test_data_module_split_and_errors():
    dm = ShapesDataModule(num_images=100, batch_size=16)
    dm.setup("fit")
    assert len(dm.train_set) == 95 and len(dm.val_set) == 5 and len(dm.train_captions) == 95
    assert dm.num_classes == 12 and dm.image_shape == (3, 32, 32)
    batch = next(iter(dm.train_dataloader()))
    x, y, tokens = batch.image, batch.label, batch.tokens
    assert x.shape == (16, 3, 32, 32) and y.max() < 12 and tokens.shape == (16, 9)
    with pytest.raises(UserError, match="data.image_size=4"):
        ShapesDataModule(image_size=4)


@pytest.mark.parametrize("size", [16, 32])
def test_shipped_shapes_reference_classifier_reads_shape_and_colour(size):
    from ddpm_lab.metrics.distances import class_accuracy
    from ddpm_lab.metrics.reference import load_reference
    classifier, record = load_reference(f"shapes{size}")
    assert record["held_out_accuracy"] >= 0.99
    x, y, _ = make_shapes(400, image_size=size, seed=123)      # images it has never seen
    assert class_accuracy(classifier, x, y) >= 0.99
    # soft edges (a VAE decoder's, a sampler's) read the same: a Gaussian blur of 0.7 pixels
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    blurred = gaussian_blur(padded, [5, 5], [0.7, 0.7])[:, :, 2:-2, 2:-2]
    assert class_accuracy(classifier, blurred, y) >= 0.98
