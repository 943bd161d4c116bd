"""Inpainting masks: the named masks hide what their names say, mask images read back, bad specs fail."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lab.errors import UserError
from ddpm_lab.tasks.masks import make_mask


def test_named_masks_hide_the_named_region():
    bottom = make_mask("bottom_half", (16, 16))
    assert bottom[:8].all() and not bottom[8:].any()
    left = make_mask("left_half", (16, 16))
    assert not left[:, :8].any() and left[:, 8:].all()
    center = make_mask("center", (16, 16))
    assert not center[4:12, 4:12].any() and center.sum() == 16 * 16 - 64


def test_random_pixels_keep_the_fraction_and_follow_the_seed():
    a = make_mask("random_pixels", (64, 64), torch.Generator().manual_seed(0), known_fraction=0.25)
    b = make_mask("random_pixels", (64, 64), torch.Generator().manual_seed(0), known_fraction=0.25)
    assert torch.equal(a, b)
    assert abs(a.float().mean().item() - 0.25) < 0.03


def test_mask_image_is_read_as_known_where_bright(tmp_path):
    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[:, 16:] = 255
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    mask = make_mask(str(tmp_path / "mask.png"), (16, 16))
    assert not mask[:, :8].any() and mask[:, 8:].all()


@pytest.mark.parametrize("spec, words", [("top_half", "choose one of"), ("missing.png", "no file")])
def test_bad_mask_is_one_clear_error(spec, words):
    with pytest.raises(UserError, match=words):
        make_mask(spec, (16, 16))
