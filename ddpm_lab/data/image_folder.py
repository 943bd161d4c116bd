"""Your own images: every image file under a folder (recursively), resized, centre-cropped and
scaled to [-1, 1]. Sub-folder names become class labels (as torchvision's ImageFolder) when the
images sit in sub-folders; otherwise every label is 0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision import transforms

from ddpm_lab.data.base import BatchDataModule, split_indices
from ddpm_lab.data.batch import Batch
from ddpm_lab.errors import UserError, choice_error

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolderDataset(Dataset):
    """Every image under `root` as a Batch item: `image` (C, S, S) in [-1, 1] and `label`."""

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

    def __getitem__(self, i: int) -> Batch:
        path = self.files[i]
        try:
            with Image.open(path) as img:
                x = self.transform(img.convert(self.mode))
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"data.path: cannot read image {str(path)!r} ({err})") from None
        label = self.class_index[path.relative_to(self.root).parts[0]] if self.classes else 0
        return Batch(image=x, label=torch.tensor(label))


class ImageFolderDataModule(BatchDataModule):
    """Batches of `image` and `label` (0 for every image without class sub-folders)."""

    name = "image_folder"

    def __init__(self, path: str, image_size: int = 32, channels: int = 3, batch_size: int = 64,
                 val_fraction: float = 0.05, split_seed: int = 0, num_workers: int = 2,
                 seed: int = 0):
        super().__init__(batch_size, seed, num_workers, val_fraction)
        if channels not in (1, 3):
            raise choice_error("data.channels", channels, (1, 3))
        self.path, self.image_size, self.channels, self.split_seed = path, image_size, channels, split_seed
        self.dataset = ImageFolderDataset(path, image_size, channels)   # fail early on a bad path
        self.num_classes = len(self.dataset.classes) or None

    def make_splits(self) -> tuple[Subset, Subset]:
        train, val = split_indices(len(self.dataset), self.val_fraction, self.split_seed)
        return Subset(self.dataset, train.tolist()), Subset(self.dataset, val.tolist())
