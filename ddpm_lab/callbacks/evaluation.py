"""Logs `val/fd`: FD between a small sample of the model (EMA weights) and the training split, in
the reference extractor's feature space, every N epochs, so that ModelCheckpoint and sweeps can
select on it (monitor: val/fd). The training split's features are extracted once per fit.
"""

from __future__ import annotations

import lightning as L

from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.metrics.distances import RealReference
from ddpm_lab.metrics.reference import FeatureExtractor, reference_extractor, reference_name


class FDEvaluation(L.Callback):
    def __init__(self, every_n_epochs: int = 10, num_samples: int = 256, steps: int | None = 100,
                 seed: int = 0, reference: str | None = None):
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.steps = steps
        self.seed = seed
        self.reference = reference
        self.extractor: FeatureExtractor | None = None
        self.real: RealReference | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.every_n_epochs <= 0:
            return
        info = pl_module.hparams["data_info"]
        name = self.reference or reference_name(info.get("name", "digits"), info["image_shape"][-1])
        self.extractor = reference_extractor(name)[0]
        dm = trainer.datamodule
        dm.setup("fit")
        self.real = RealReference(self.extractor, stack_dataset(dm.train_set).image)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.real is None or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs and not trainer.fast_dev_run:
            return
        overrides = {"steps": self.steps} if self.steps else {}
        fake = pl_module.sample(self.num_samples, seed=self.seed, **overrides)
        fd = self.real.fd(fake)       # sample() returns CPU tensors, where the extractor is
        pl_module.log("val/fd", fd, prog_bar=True, sync_dist=False)
