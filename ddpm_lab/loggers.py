"""Loggers. W&B runs online when a login exists and offline otherwise: it never prompts.

Both continue a resumed run: W&B through the run id (`resume="allow"`), the CSV logger by
appending to the run's metrics.csv (Lightning's own deletes it when the folder is not empty).
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import OmegaConf


def wandb_logged_in() -> bool:
    """True when W&B has credentials: WANDB_API_KEY or a netrc entry for a W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        hosts = netrc.netrc(path).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_logger(save_dir: str, project: str = "ddpm_lab", name: str | None = None,
                 entity: str | None = None, group: str | None = None, tags: list | None = None,
                 mode: str | None = None, id: str | None = None, log_model: bool = False) -> WandbLogger:
    """A WandbLogger; `mode` None means WANDB_MODE if set, else online iff logged in."""
    mode = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=save_dir, project=project, name=name, entity=entity, group=group,
                       tags=list(tags or []), offline=mode == "offline", mode=mode, id=id,
                       log_model=log_model, resume="allow" if id else None)


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing metrics.csv (its header included) and appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r") as f:
                header = f.readline().strip()
            self.metrics_keys = header.split(",") if header else []


class AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def csv_logger(save_dir: str, name: str = "csv") -> CSVLogger:
    """metrics.csv and hparams.yaml in `<save_dir>/<name>/`; a resumed run appends."""
    return AppendingCSVLogger(save_dir=save_dir, name=name, version="")


def swept_overrides(hc) -> list[str]:
    """This job's values of the swept keys (`seed=1`), from the sweep's multirun.yaml and, for
    Optuna, its search space; all of the job's overrides when those are unknown."""
    job = [str(o) for o in hc.overrides.task]
    swept = set(hc.sweeper.get("params") or {})
    multirun = Path(hc.sweep.dir) / "multirun.yaml"
    if multirun.is_file():
        for o in OmegaConf.load(multirun).hydra.overrides.task:
            key, _, value = str(o).partition("=")
            if "," in value or "(" in value:
                swept.add(key)
    picked = [o for o in job if o.partition("=")[0].lstrip("+~") in swept]
    return picked or job


def sweep_identity() -> tuple[str | None, str | None]:
    """(W&B group, run name) of a job of a Hydra multirun: the sweep folder, and the job's number
    with its swept values; (None, None) outside a sweep."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    return f"{hc.job.name}-{Path(hc.sweep.dir).name}", f"{hc.job.num}:" + ",".join(swept_overrides(hc))


def finish_wandb(loggers: list, exit_code: int, preempted: bool = False) -> None:
    """End the W&B run this job started (wandb.finish), so the next job of a sweep starts its own.
    The process's run (`wandb.run`) is this job's when its id is one of the W&B loggers' `version`
    (the id they were given, or the run they started); no run is started just to end it."""
    ours = {lg.version for lg in loggers if isinstance(lg, WandbLogger)}
    if not ours:
        return
    import wandb
    if wandb.run is None or wandb.run.id not in ours:
        return
    if preempted:
        wandb.run.mark_preempting()
    wandb.finish(exit_code=exit_code)
