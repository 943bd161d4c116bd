"""`ckpt_path` of ddpm-sample / ddpm-eval: `last` is the newest run of any training task."""

from __future__ import annotations

from pathlib import Path

from ddpm_lab.checkpoint_io import LAST, newest_run_checkpoint
from ddpm_lab.errors import UserError


def newest_checkpoint(log_dir: str | Path) -> Path:
    """`ckpt_path=last` for ddpm-sample / ddpm-eval: the newest run checkpoint of any training task
    (`<log_dir>/<task>/runs/<run>/checkpoints/last.ckpt`), or a UserError."""
    found = newest_run_checkpoint(Path(log_dir).glob("*/runs/*"))
    if found is None:
        raise UserError(f"ckpt_path=last: no run folder with checkpoints/last.ckpt under "
                        f"{str(Path(log_dir) / '<task>' / 'runs')!r}; train one first (ddpm-train), or give a "
                        f"checkpoint file or run folder")
    return found.resolve()


def checkpoint_of(cfg) -> str | Path:
    """A sample / eval config's `ckpt_path`, with `last` resolved to the newest run checkpoint."""
    return newest_checkpoint(cfg.paths.log_dir) if str(cfg.ckpt_path) == LAST else cfg.ckpt_path
