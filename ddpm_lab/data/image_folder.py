"""Your own images: every image file under a folder (recursively), resized, centre-cropped and
scaled to [-1, 1]. Sub-folder names become class labels (as torchvision's ImageFolder) when the
images sit in sub-folders; otherwise every label is 0.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from ddpm_lab.data.loading import train_loader
from ddpm_lab.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolderDataset(Dataset):
    def __init__(self, root: str | Path, image_size: int, channels: int = 3):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UserError(f"data.path={str(root)!r} is not a folder; give a folder of images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.files = find_images(root)
        if not self.files:
            raise UserError(f"data.path={str(root)!r} holds no images "
                            f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
        classes = sorted({p.parent.relative_to(root).parts[0] for p in self.files if p.parent != root})
        self.classes = classes if all(p.parent != root for p in self.files) else []
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.root = root
        self.mode = "L" if channels == 1 else "RGB"
        self.transform = transforms.Compose([
            transforms.Resize(image_size, antialias=True),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * channels, [0.5] * channels),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        try:
            with Image.open(path) as img:
                x = self.transform(img.convert(self.mode))
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"data.path: cannot read image {str(path)!r} ({err})") from None
        label = self.class_index[path.relative_to(self.root).parts[0]] if self.classes else 0
        return x, torch.tensor(label)


class ImageFolderDataModule(L.LightningDataModule):
    name = "image_folder"

    def __init__(self, path: str, image_size: int = 32, channels: int = 3, batch_size: int = 64,
                 val_fraction: float = 0.05, split_seed: int = 0, num_workers: int = 2,
                 seed: int = 0):
        super().__init__()
        if channels not in (1, 3):
            raise UserError(f"data.channels={channels} is not allowed; choose 1 or 3")
        self.path, self.image_size, self.channels = path, image_size, channels
        self.batch_size, self.val_fraction = batch_size, val_fraction
        self.split_seed, self.num_workers, self.seed = split_seed, num_workers, seed
        self.dataset = ImageFolderDataset(path, image_size, channels)   # fail early on a bad path
        self.num_classes = len(self.dataset.classes) or None
        self.train_set = self.val_set = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        n = len(self.dataset)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n_val = max(1, round(self.val_fraction * n)) if n > 1 else 0
        self.val_set = Subset(self.dataset, perm[:n_val] or perm)
        self.train_set = Subset(self.dataset, perm[n_val:] or perm)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.batch_size, self.seed,
                            drop_last=len(self.train_set) >= self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
