"""ddpm-train: compose a config with Hydra and train a DiffusionModule with Lightning.

`run(cfg)` is the testable part; `main()` is the console script.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, WeightAveraging
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.cli import CONF_DIR, user_errors
from ddpm_lab.errors import UserError
from ddpm_lab.modules import DiffusionModule


def container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}


def build_module(cfg: DictConfig, datamodule) -> DiffusionModule:
    data_info = {"name": getattr(datamodule, "name", type(datamodule).__name__),
                 "image_shape": list(datamodule.image_shape),
                 "num_classes": getattr(datamodule, "num_classes", None),
                 "data": container(cfg.data)}
    return DiffusionModule(net=container(cfg.net), schedule=container(cfg.schedule),
                           diffusion=container(cfg.diffusion), sampler=container(cfg.sampler),
                           data_info=data_info, optim=container(cfg.optim))


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # Weight averaging swaps the EMA weights in for validation and back at its end: callbacks that
    # sample at validation end must run before that swap back, so averaging goes last.
    return sorted(callbacks, key=lambda c: isinstance(c, WeightAveraging))


def resolve_ckpt_path(ckpt_path: str | None) -> str | None:
    if ckpt_path is None:
        return None
    if not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path={ckpt_path!r}: no such checkpoint file")
    return ckpt_path


def run(cfg: DictConfig) -> dict[str, float]:
    """Train as configured; returns the final callback metrics (e.g. val/loss)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(container(cfg))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path")))
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@user_errors("ddpm-train")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
