"""Latents of a data set, encoded once by a frozen VAE and cached on disk (latent diffusion's
stage 2 then never runs the encoder during training).

The cache holds each split's posterior moments (mean and log-variance, unscaled), so every step
still draws a fresh latent from q(z | x) as training through the encoder would. Its file name is
a hash of the data config (what decides the images) and of the VAE's weights: another data set,
image size or VAE gets another file; the same pair reuses the file. The latent scale's images (the
first training images) are encoded once: the cache takes their moments from `first_train_moments`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, TensorDataset

from ddpm_lab.data.loading import train_loader
from ddpm_lab.data.tensors import columns_of, images_of

# data config keys that do not change which images the splits hold
NOT_CONTENT = ("seed", "batch_size", "num_workers", "_target_")
ENCODE_BATCH = 256        # images per encoder call (the same batches give the same moments)


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


def encoder_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def encode_moments(autoencoder, images: torch.Tensor, batch_size: int = ENCODE_BATCH,
                   device: str | None = None) -> torch.Tensor:
    """The posterior moments of `images`, encoded on `device` (default: the GPU if there is one)."""
    device = device or encoder_device()
    autoencoder.to(device)
    try:
        return torch.cat([autoencoder.moments(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])
    finally:
        autoencoder.to("cpu")


class LatentDataModule(L.LightningDataModule):
    """An image data module seen through a frozen VAE: batches of (posterior moments, label, ...)."""

    def __init__(self, data: L.LightningDataModule, autoencoder, data_config: dict, cache_dir: str | Path):
        super().__init__()
        self.data, self.autoencoder, self.data_config = data, autoencoder, data_config
        self.cache_dir = Path(cache_dir)
        self.train_set = self.val_set = None
        self.cache_hit: bool | None = None
        self._cache_path: Path | None = None      # hashing a large VAE takes seconds: once per call site
        self._train_head: torch.Tensor | None = None      # first_train_moments', for the next prepare_data

        # what the model is built from: the image data module's
        for attr in ("name", "num_classes", "image_shape", "vocabulary", "class_prompts"):
            if hasattr(data, attr):
                setattr(self, attr, getattr(data, attr))

    def cache_file(self) -> Path:
        """The cache file of this data config and the VAE's current weights (hashed anew)."""
        name = getattr(self.data, "name", type(self.data).__name__)
        self._cache_path = self.cache_dir / f"{name}-{cache_key(self.data_config, self.autoencoder.vae)}.pt"
        return self._cache_path

    def first_train_moments(self, limit: int) -> torch.Tensor:
        """The posterior moments of the first `limit` training images, encoded on the CPU (where the
        latent scale is measured). The next prepare_data that encodes on the CPU starts from them."""
        self.data.setup("fit")
        self._train_head = encode_moments(self.autoencoder, images_of(self.data.train_set, limit), device="cpu")
        return self._train_head

    def encode_split(self, split: str) -> torch.Tensor:
        """The split's posterior moments; for the training split on the CPU, the first ones are
        first_train_moments' (the same batches of the same images: the same numbers)."""
        images = columns_of(getattr(self.data, f"{split}_set"))[0]
        head = self._train_head if split == "train" and encoder_device() == "cpu" else None
        if head is None or (len(head) % ENCODE_BATCH and len(head) != len(images)):
            return encode_moments(self.autoencoder, images)
        rest = images[len(head):]
        return torch.cat([head, encode_moments(self.autoencoder, rest)]) if len(rest) else head

    def prepare_data(self) -> None:
        """Encode both splits once (rank zero), unless this data set and VAE are cached already."""
        path = self.cache_file()
        self.cache_hit = path.is_file()
        if self.cache_hit:
            self._train_head = None
            rank_zero_info(f"latents: reusing {path}")
            return
        self.data.setup("fit")
        moments = {split: self.encode_split(split) for split in ("train", "val")}
        self._train_head = None         # of these weights: a later call may see other ones
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save({**moments, "data": self.data_config, "vae": self.autoencoder.source}, tmp)
        os.replace(tmp, path)
        rank_zero_info(f"latents: encoded {len(moments['train'])} + {len(moments['val'])} images into {path}")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        path = self._cache_path or self.cache_file()    # prepare_data's (rank zero) or hashed here
        if not path.is_file():
            self.prepare_data()
        self._train_head = None
        self.data.setup("fit")
        cached = torch.load(path, map_location="cpu", weights_only=True)
        self.train_set = TensorDataset(cached["train"], *columns_of(self.data.train_set)[1:])
        self.val_set = TensorDataset(cached["val"], *columns_of(self.data.val_set)[1:])

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.data.batch_size, self.data.seed, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.data.batch_size)
