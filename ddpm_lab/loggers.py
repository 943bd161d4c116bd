"""Loggers. W&B runs online when a login exists and offline otherwise: it never prompts."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger


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


def csv_logger(save_dir: str, name: str = "csv") -> CSVLogger:
    return CSVLogger(save_dir=save_dir, name=name, version="")
