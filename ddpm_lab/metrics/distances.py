"""Sample-quality metrics through torchmetrics: Frechet distance (FD, Heusel et al. 2017) and
kernel distance (KID, Binkowski et al. 2018) in a chosen feature space, and class accuracy.

Images are in [-1, 1]. With the reference extractor the features are its penultimate layer; with
"inception" they are torchmetrics' standard Inception-v3 pool features (weights from a local file).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ddpm_lab.errors import UserError, choice_error

METRICS = ("fd", "kid", "accuracy")
INCEPTION_WEIGHTS_HINT = (
    "pt_inception-2015-12-05-6726825d.pth (the FID Inception weights torch-fidelity uses; "
    "get it once on a machine with internet) and pass inception_weights=/path/to/that/file")


def check_metric_names(names: Iterable[str]) -> list[str]:
    names = list(names)
    for name in names:
        if name not in METRICS:
            raise choice_error("metrics", name, METRICS)
    return names


def min_samples(extractor: nn.Module) -> int:
    """FD needs non-singular feature covariances: more samples than feature dimensions."""
    return int(getattr(extractor, "num_features", 1)) + 1


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (2048) for RGB images in [-1, 1], weights read from a file."""

    def __init__(self, weights_path: str | None):
        super().__init__()
        if not weights_path or not Path(weights_path).expanduser().is_file():
            raise UserError(f"inception_weights={weights_path!r}: the Inception feature extractor needs its "
                            f"weights file and nothing is downloaded here; put {INCEPTION_WEIGHTS_HINT}")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=str(Path(weights_path).expanduser()))
        except ModuleNotFoundError as err:
            raise UserError(f"the Inception feature extractor needs torch-fidelity ({err}); "
                            f"pip install torch-fidelity") from None
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(((x.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8))


def batches(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


class RealReference:
    """The real side of FD and KID against one image set (the training split), its features
    extracted once: torchmetrics' FrechetInceptionDistance and KernelInceptionDistance with
    `reset_real_features=False` keep the real statistics across `reset()`, so every `fd` and `kid`
    call extracts only the generated images' features. The values equal a fresh metric's per call."""

    def __init__(self, extractor: nn.Module, real: torch.Tensor, batch_size: int = 500):
        self.extractor, self.real, self.batch_size = extractor, real, batch_size
        self._fd: FrechetInceptionDistance | None = None
        self._kid: KernelInceptionDistance | None = None

    def _update(self, metric, images: torch.Tensor, real: bool) -> None:
        for b in batches(images, self.batch_size):
            metric.update(b, real=real)

    def fd(self, fake: torch.Tensor) -> float:
        """FD between the feature Gaussians of the real and the `fake` images."""
        need = min_samples(self.extractor)
        for name, imgs in (("real", self.real), ("generated", fake)):
            if len(imgs) < need:
                raise UserError(f"num_samples: FD in this {need - 1}-dimensional feature space needs at least "
                                f"{need} {name} images, got {len(imgs)}")
        if self._fd is None:
            self._fd = FrechetInceptionDistance(feature=self.extractor, normalize=True, reset_real_features=False)
            self._update(self._fd, self.real, real=True)
        self._fd.reset()
        self._update(self._fd, fake, real=False)
        return float(self._fd.compute())

    def kid(self, fake: torch.Tensor, subset_size: int = 100, subsets: int = 100, seed: int = 0) -> tuple[float, float]:
        """KID mean and std over `subsets` random subsets of min(subset_size, both counts) images."""
        size = min(subset_size, len(self.real), len(fake))
        if size < 2:
            raise UserError(f"num_samples: KID needs at least 2 images per set, got {min(len(self.real), len(fake))}")
        if self._kid is None:
            self._kid = KernelInceptionDistance(feature=self.extractor, subsets=subsets, subset_size=size,
                                                normalize=True, reset_real_features=False)
            self._update(self._kid, self.real, real=True)
        self._kid.reset()
        self._kid.subsets, self._kid.subset_size = subsets, size     # read by compute() alone
        self._update(self._kid, fake, real=False)
        with torch.random.fork_rng(devices=[]):     # the subsets are drawn with the global CPU generator
            torch.manual_seed(seed)
            mean, std = self._kid.compute()
        return float(mean), float(std)


def frechet_distance(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 500) -> float:
    """FD between the feature Gaussians of two image sets (torchmetrics' FrechetInceptionDistance).
    Several against the same real set: RealReference.fd."""
    return RealReference(extractor, real, batch_size).fd(fake)


def kernel_distance(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor, subset_size: int = 100,
                    subsets: int = 100, seed: int = 0, batch_size: int = 500) -> tuple[float, float]:
    """KID mean and std over random subsets (torchmetrics' KernelInceptionDistance; unbiased).
    Several against the same real set: RealReference.kid."""
    return RealReference(extractor, real, batch_size).kid(fake, subset_size, subsets, seed)


@torch.no_grad()
def within_class_spread(extractor: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 500) -> float:
    """Diversity: the mean over classes of the total variance (trace of the covariance) of the
    images' features within the class. Compare a model's with the data's: guidance lowers it."""
    extractor.eval()
    feats = torch.cat([extractor(b.float()).double() for b in batches(images, batch_size)]).cpu()
    labels = labels.cpu()
    traces = [torch.cov(feats[labels == c].T).trace() for c in labels.unique() if (labels == c).sum() > 1]
    return torch.stack(traces).mean().item()


@torch.no_grad()
def class_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of images the classifier assigns to their label."""
    classifier.eval()
    preds = torch.cat([classifier(b.float()).argmax(1) for b in batches(images, batch_size)])
    return (preds.cpu() == labels.cpu()).float().mean().item()
