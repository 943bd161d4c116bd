"""Every data module yields named batches (`Batch`) with the fields its data has, in the right
shapes and dtypes; the named batch collates, stacks and moves like a tensor tuple."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset, default_collate

from ddpm_lab.data import (
    Batch,
    BatchDataModule,
    DigitsDataModule,
    GaussianMixtureDataModule,
    ImageFolderDataModule,
    ShapesDataModule,
)
from ddpm_lab.data.base import split_indices
from ddpm_lab.data.batch import BatchDataset, stack_dataset
from ddpm_lab.data.latents import LatentDataModule
from ddpm_lab.errors import UserError

FIELDS = ("image", "label", "tokens", "moments")


def image_folder(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray((torch.rand(12, 10, 3, generator=g) * 255).to(torch.uint8).numpy()).save(root / cls / f"{i}.png")
    return root


def tiny_latents(tmp_path: Path) -> LatentDataModule:
    from ddpm_lab.autoencoders import LatentAutoencoder, autoencoder_kl

    torch.manual_seed(0)
    kl = autoencoder_kl(image_size=8, in_channels=3, latent_channels=4, downsample=2, base_channels=8,
                        norm_num_groups=4)
    vae = LatentAutoencoder(dict(kl.config), source="test")
    vae.model.load_state_dict(kl.state_dict())
    data = ShapesDataModule(num_images=40, image_size=8, batch_size=4)
    return LatentDataModule(data, vae, {"_target_": "shapes", "num_images": 40, "image_size": 8}, tmp_path / "cache")


# name -> (data module, the shape of one image (None: no field), whether it has tokens)
CASES = {
    "digits": (lambda tmp: DigitsDataModule(image_size=8, batch_size=4), (1, 8, 8), False),
    "shapes": (lambda tmp: ShapesDataModule(num_images=40, image_size=8, batch_size=4), (3, 8, 8), True),
    "gmm": (lambda tmp: GaussianMixtureDataModule(num_points=40, batch_size=4), (2,), False),
    "image_folder": (lambda tmp: ImageFolderDataModule(str(image_folder(tmp / "imgs")), image_size=8, batch_size=4,
                                                       num_workers=0), (3, 8, 8), False),
    "latents": (tiny_latents, None, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_data_module_yields_named_batches(name, tmp_path):
    make, image_shape, has_tokens = CASES[name]
    dm = make(tmp_path)
    assert isinstance(dm, BatchDataModule) and dm.num_classes
    if name == "latents":
        dm.prepare_data()
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert isinstance(batch, Batch) and batch._fields == FIELDS
        n = len(batch.label)
        assert 1 <= n <= 4 and batch.label.dtype == torch.long
        assert 0 <= batch.label.min() and batch.label.max() < dm.num_classes
        if image_shape is None:           # latent data: the VAE posterior's moments, not the images
            assert batch.image is None and batch.moments.shape == (n, 8, 4, 4)
            assert batch.moments.dtype == torch.float32
        else:
            assert batch.moments is None and batch.image.shape == (n, *image_shape) == (n, *dm.image_shape)
            assert batch.image.dtype == torch.float32
        if has_tokens:
            assert batch.tokens.dtype == torch.long and batch.tokens.shape == (n, dm.vocabulary.max_tokens)
        else:
            assert batch.tokens is None


def test_batches_collate_stack_select_and_move_by_name():
    items = [Batch(image=torch.full((2,), float(i)), label=torch.tensor(i)) for i in range(5)]
    batch = default_collate(items)
    assert isinstance(batch, Batch) and batch.tokens is None and batch.moments is None
    assert batch.image.shape == (5, 2) and batch.label.tolist() == [0, 1, 2, 3, 4]
    dataset = BatchDataset(batch)
    assert len(dataset) == 5 and dataset[3].label.item() == 3
    assert torch.equal(dataset[1:3].image, batch.image[1:3])
    stacked = stack_dataset(Subset(dataset, [4, 0, 2]), batch_size=2)
    assert stacked.label.tolist() == [4, 0, 2] and stacked.tokens is None
    assert stack_dataset(dataset, limit=2).label.tolist() == [0, 1]
    from lightning.fabric.utilities.apply_func import move_data_to_device
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert isinstance(moved, Batch) and moved.tokens is None
    assert isinstance(next(iter(DataLoader(dataset, batch_size=5))), Batch)
    with pytest.raises(ValueError, match="same number of items"):
        BatchDataset(Batch(image=torch.zeros(3), label=torch.zeros(2)))


def test_splits_hold_out_a_fraction_from_a_seeded_permutation():
    train, val = split_indices(10, 0.2, seed=3)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(10)) and len(val) == 2
    assert torch.equal(split_indices(10, 0.2, seed=3)[1], val)
    assert split_indices(10, 0.2)[1].tolist() == [0, 1]
    train, val = split_indices(1, 0.5, seed=0)           # one item: both splits hold it
    assert train.tolist() == val.tolist() == [0]
    with pytest.raises(UserError, match=r"data.val_fraction=1.5 must lie in \(0, 1\)"):
        DigitsDataModule(val_fraction=1.5)


def test_channel_choices_name_the_key_and_the_choices(tmp_path):
    with pytest.raises(UserError, match=r"data.channels=3 is not allowed \(digits are grey-scale\); choose one of: 1$"):
        DigitsDataModule(channels=3)
    with pytest.raises(UserError, match=r"data.channels=1 is not allowed \(shapes are RGB\); choose one of: 3$"):
        ShapesDataModule(channels=1)
    with pytest.raises(UserError, match="data.channels=2 is not allowed; choose one of: 1, 3$"):
        ImageFolderDataModule(str(image_folder(tmp_path / "imgs")), channels=2)
