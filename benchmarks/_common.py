"""Shared by the benchmark scripts (run as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import json
from pathlib import Path


def load_run(ckpt: str):
    """A checkpoint's module (EMA weights) and its data set's training and held-out images."""
    from hydra.utils import instantiate

    from ddpm_lab.data.tensors import images_of
    from ddpm_lab.modules import DiffusionModule

    module = DiffusionModule.load(ckpt)
    dm = instantiate(module.hparams["data_info"]["data"])
    dm.setup("fit")
    return module, images_of(dm.train_set), images_of(dm.val_set)


def write_json(path: str | Path, result: dict) -> Path:
    """Write the result next to the printed table and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
