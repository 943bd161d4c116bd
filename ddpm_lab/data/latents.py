"""Latents of a data set, encoded once by a frozen VAE and cached on disk (latent diffusion's
stage 2 then never runs the encoder during training).

The cache holds each split's posterior moments (mean and log-variance, unscaled, on the channel
axis: (N, 2C', h, w) for images, (N, 2C', F', h, w) for video clips), so every step still draws a
fresh latent from q(z | x) as training through the encoder would. Its file name is
a hash of the data config (what decides the images) and of the VAE's weights: another data set,
image size or VAE gets another file; the same pair reuses the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import Dataset

from ddpm_lab.checkpoint_io import atomic_save
from ddpm_lab.data.base import BatchDataModule
from ddpm_lab.data.batch import Batch, BatchDataset, stack_dataset

# data config keys that do not change which images the splits hold
NOT_CONTENT = ("seed", "batch_size", "num_workers", "_target_")


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(data_config: dict, autoencoder: torch.nn.Module) -> str:
    content = {k: v for k, v in sorted(data_config.items()) if k not in NOT_CONTENT}
    h = hashlib.sha256(json.dumps({"target": data_config.get("_target_"), "data": content},
                                  sort_keys=True, default=str).encode())
    h.update(weights_digest(autoencoder).encode())
    return h.hexdigest()[:20]


def columns_of(dataset: Dataset) -> Batch:
    """A split as one Batch: an in-memory split's own columns (nothing read, no generator drawn
    from), any other read through `stack_dataset`."""
    return dataset.columns if isinstance(dataset, BatchDataset) else stack_dataset(dataset)


@torch.no_grad()
def encode_moments(autoencoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autoencoder.to(device)
    try:
        return torch.cat([autoencoder.moments(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])
    finally:
        autoencoder.to("cpu")


class LatentDataModule(BatchDataModule):
    """An image data module seen through a frozen VAE: its batches with the images' posterior
    `moments` in place of the images (`label` and `tokens` as the image data has them)."""

    def __init__(self, data: BatchDataModule, autoencoder, data_config: dict, cache_dir: str | Path):
        super().__init__(data.batch_size, data.seed)
        self.data, self.autoencoder, self.data_config = data, autoencoder, data_config
        self.cache_dir = Path(cache_dir)
        self.cache_hit: bool | None = None
        self._cache_path: Path | None = None      # hashing a large VAE takes seconds: once per call site
        # what the model is built from: the image data module's
        self.name, self.num_classes = data.name, data.num_classes
        for attr in ("vocabulary", "class_prompts"):     # text conditioning: caption words, class prompts
            if hasattr(data, attr):
                setattr(self, attr, getattr(data, attr))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.data.image_shape

    def cache_file(self) -> Path:
        """The cache file of this data config and the VAE's current weights (hashed anew)."""
        self._cache_path = self.cache_dir / f"{self.name}-{cache_key(self.data_config, self.autoencoder.model)}.pt"
        return self._cache_path

    def prepare_data(self) -> None:
        """Encode both splits once (rank zero), unless this data set and VAE are cached already."""
        path = self.cache_file()
        self.cache_hit = path.is_file()
        if self.cache_hit:
            rank_zero_info(f"latents: reusing {path}")
            return
        self.data.setup("fit")
        moments = {split: encode_moments(self.autoencoder, columns_of(getattr(self.data, f"{split}_set")).image)
                   for split in ("train", "val")}
        atomic_save({**moments, "data": self.data_config, "autoencoder": self.autoencoder.source}, path)
        rank_zero_info(f"latents: encoded {len(moments['train'])} + {len(moments['val'])} images into {path}")

    def make_splits(self) -> tuple[BatchDataset, BatchDataset]:
        """The image data's splits with the cached moments in place of the images."""
        path = self._cache_path or self.cache_file()    # prepare_data's (rank zero) or hashed here
        if not path.is_file():
            self.prepare_data()
        self.data.setup("fit")
        cached = torch.load(path, map_location="cpu", weights_only=True)
        splits = {"train": self.data.train_set, "val": self.data.val_set}
        return tuple(BatchDataset(columns_of(data)._replace(image=None, moments=cached[split]))
                     for split, data in splits.items())
