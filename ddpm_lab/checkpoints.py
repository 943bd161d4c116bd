"""Loading ddpm_lab checkpoints with clear errors for missing or foreign files."""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm_lab.errors import UserError
from ddpm_lab.modules.diffusion_module import CHECKPOINT_KEY, DiffusionModule
from ddpm_lab.runs import LAST, find_checkpoint, newest_run_checkpoint


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


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at `path` (a file, or a ddpm-train run folder: its last checkpoint), or a
    UserError naming the file and what is wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = find_checkpoint(str(path), path)
    if not path.is_file():
        raise UserError(f"ckpt_path={str(path)!r}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"ckpt_path={str(path)!r} is not a readable PyTorch checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"ckpt_path={str(path)!r} is not a ddpm_lab checkpoint "
                        f"(no '{CHECKPOINT_KEY}' entry; train one with ddpm-train)")
    return ckpt


def load_module(path: str | Path, device: str | torch.device = "cpu") -> DiffusionModule:
    """Rebuild the DiffusionModule stored in a checkpoint (EMA weights when EMA was on)."""
    ckpt = read_checkpoint(path)
    if ckpt[CHECKPOINT_KEY].get("kind") == "autoencoder":
        raise UserError(f"ckpt_path={str(path)!r} is a stage-1 autoencoder checkpoint; sample a diffusion "
                        f"checkpoint (stage 2: ddpm-train experiment=shapes_ldm vae.path=<this run>)")
    module = DiffusionModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.to(device).eval()
