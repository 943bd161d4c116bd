"""Reference classifiers whose penultimate layer is the feature space for FD / KID on small data
(the role Inception-v3 plays for ImageNet-like images, Heusel et al. 2017), and whose predictions
give the class accuracy of conditional samples.

Each shipped classifier is a small CNN trained by `python -m ddpm_lab.metrics.train_reference`;
its weights and its held-out accuracy live in `ddpm_lab/metrics/weights/<name>.pt|.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lab.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ReferenceClassifier(nn.Module):
    """conv(32) x2 -> pool -> conv(64) x2 -> pool -> global mean -> fc(feature_dim) -> fc(classes).

    Inputs are images in [-1, 1] of shape (N, in_channels, image_size, image_size).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 16,
                 feature_dim: int = 64, width: int = 32):
        super().__init__()
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, image_size
        self.num_features = feature_dim
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.embed = nn.Linear(2 * w, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise UserError(f"the reference extractor expects images of shape {expected}, got "
                            f"{tuple(x.shape[1:])}: evaluate a checkpoint of the data set and image size "
                            f"it was trained on")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: FD / KID feature vectors."""
        self.check_input(x)
        return F.relu(self.embed(self.body(x).mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.features(x))


class FeatureExtractor(nn.Module):
    """The classifier's features as a torchmetrics `feature` module (images in [-1, 1] in).

    Features are divided by `scale` (the RMS feature value on the training split, recorded with
    the weights) so that they are O(1), as KID's polynomial kernel (x.y / d + 1)^3 assumes.
    """

    def __init__(self, classifier: ReferenceClassifier, scale: float = 1.0):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features
        self.scale = float(scale)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)   # always in eval mode (BatchNorm statistics frozen)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float()) / self.scale


def reference_extractor(name: str) -> tuple[FeatureExtractor, ReferenceClassifier, dict]:
    """The shipped extractor (scaled features), its classifier and its record."""
    classifier, record = load_reference(name)
    return FeatureExtractor(classifier, record.get("feature_scale", 1.0)), classifier, record


def reference_name(data_name: str, image_size: int) -> str:
    return f"{data_name}{image_size}"


def available_references() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def load_reference(name: str, weights_dir: Path = WEIGHTS_DIR) -> tuple[ReferenceClassifier, dict]:
    """A shipped classifier and its record (config, held-out accuracy) by name, e.g. 'digits16'."""
    path = Path(weights_dir) / f"{name}.pt"
    if not path.is_file():
        raise UserError(f"no reference extractor {name!r} for this data set and image size; shipped: "
                        f"{', '.join(available_references()) or 'none'} (train one with "
                        f"python -m ddpm_lab.metrics.train_reference)")
    record = json.loads(path.with_suffix(".json").read_text())
    model = ReferenceClassifier(**record["config"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval(), record
