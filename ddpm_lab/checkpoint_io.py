"""Checkpoint files: the key that marks a ddpm_lab checkpoint, where a run keeps its checkpoints,
reading one with clear errors, and atomic writes (of checkpoints and of every other file the
package must not leave half-written: run.json, the latent cache).

`ckpt_path` (ddpm-train, ddpm-sample, ddpm-eval) accepts `last` (the newest
`<runs_root>/<run>/checkpoints/last.ckpt`), a run folder (its newest checkpoint: `last.ckpt` or a
SLURM `hpc_ckpt_N.ckpt`) or a checkpoint file.

Checkpoints written with older key names (format 1) load: `upgrade_checkpoint` maps them to the
current ones (format 2), and every reader applies it (`read_checkpoint`, and the modules'
`load_from_checkpoint` and `on_load_checkpoint`).

Atomic writes: a kill during a save never leaves a truncated `last.ckpt`.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose temporary file lives in
the system temp folder, and moves it over the target at the end; across file systems that move
is a copy, which a kill can interrupt. Here (`atomic_write`) a file is written to a temporary file
next to the target, `.<name>.tmp-<host>-<pid>`, flushed to disk, and renamed over it (`os.replace`,
atomic on POSIX), so readers see either the old file or the new one. A process killed mid-write
leaves its temporary file behind; the next successful write into the same folder removes those of
processes of this host that no longer run (a best-k checkpoint cut mid-write is never written again
under its name, so the folder, not the target, is what is cleaned). Remote checkpoint paths
(s3://, ...) go to Lightning.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ddpm_lab.errors import UserError

CHECKPOINT_KEY = "ddpm_lab"   # the entry every ddpm_lab checkpoint has (version, format, kind, run, rng)
FORMAT = 2                    # the key names checkpoints are written with (1: the older names)
LAST = "last"
# format 1 -> 2: the weights' name prefix of each kind of module
OLD_PREFIXES = {"diffusion": ("vae.vae.", "autoencoder.model."), "autoencoder": ("vae.", "model.")}


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The resumable checkpoints of a run folder, newest first."""
    found = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def newest_run_checkpoint(run_dirs) -> Path | None:
    """The newest resumable checkpoint of any of these run folders (None if they hold none)."""
    found = [c for d in run_dirs if d.is_dir() for c in run_checkpoints(d)[:1]]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_checkpoint(ckpt_path: str, runs_root: str | Path) -> Path:
    """The checkpoint file `ckpt_path` stands for (see the module docstring), or a UserError."""
    runs_root = Path(runs_root)
    if ckpt_path == LAST:
        found = newest_run_checkpoint(runs_root.glob("*"))
        if found is None:
            raise UserError(f"ckpt_path=last: no earlier run to resume (no run folder with "
                            f"checkpoints/last.ckpt under {str(runs_root)!r}); train one first, "
                            f"or give a checkpoint file or run folder")
        return found
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        found = run_checkpoints(path)
        if not found:
            raise UserError(f"ckpt_path={ckpt_path!r}: the folder has no checkpoints/last.ckpt "
                            f"(is it a ddpm-train run folder?) and no model_index.json or config.json (not a diffusers "
                            f"pipeline or model folder either)")
        return found[0]
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path!r}: no such checkpoint file or run folder "
                        f"(use a .ckpt file, a run folder, or 'last')")
    return path


def run_dir_of(ckpt: Path) -> Path:
    """The run folder a checkpoint belongs to (`<run>/checkpoints/x.ckpt` or `<run>/hpc_ckpt_N.ckpt`)."""
    ckpt = Path(ckpt).resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file `path` names: the file itself, or a run folder's newest checkpoint."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = find_checkpoint(str(path), path)
    if not path.is_file():
        raise UserError(f"ckpt_path={str(path)!r}: no such checkpoint file")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at `path` (a file, or a ddpm-train run folder: its last checkpoint), or a
    UserError naming the file and what is wrong. Memory-mapped: reading it to check is cheap."""
    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"ckpt_path={str(path)!r} is not a readable PyTorch checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"ckpt_path={str(path)!r} is not a ddpm_lab checkpoint "
                        f"(no '{CHECKPOINT_KEY}' entry; train one with ddpm-train)")
    return upgrade_checkpoint(ckpt)


def upgrade_checkpoint(ckpt: dict) -> dict:
    """`ckpt`, changed in place, with a format-1 checkpoint's key names mapped to the current ones:
    hyper-parameters `vae` -> `latent` (a diffusion module's frozen autoencoder) and
    `schedule.rescale_zero_terminal_snr` -> `schedule.zero_terminal_snr`; weights `vae.vae.*` ->
    `autoencoder.model.*` (diffusion) and `vae.*` -> `model.*` (stage-1 autoencoder)."""
    info = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or info.get("format", 1) >= FORMAT:
        return ckpt
    kind, hparams = info.get("kind"), ckpt.get("hyper_parameters", {})
    if kind == "diffusion" and "vae" in hparams:
        hparams["latent"] = hparams.pop("vae")
    schedule = hparams.get("schedule")
    if isinstance(schedule, dict) and "rescale_zero_terminal_snr" in schedule:
        schedule["zero_terminal_snr"] = schedule.pop("rescale_zero_terminal_snr")
    if kind in OLD_PREFIXES:
        old, new = OLD_PREFIXES[kind]
        for key in ("state_dict", "current_model_state"):     # the latter: EMA's live weights
            if key in ckpt:
                ckpt[key] = {new + k[len(old):] if k.startswith(old) else k: v for k, v in ckpt[key].items()}
    info["format"] = FORMAT
    return ckpt


# `.<name>.tmp-<host>-<pid>`, or `.<name>.tmp-<pid>` (no host: this host's)
TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)")


def temporary_file(path: Path) -> Path:
    """Where this process writes `path` before renaming it: `.<name>.tmp-<host>-<pid>` beside it."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def process_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files in `folder` that writers of this host killed mid-write left (their
    process no longer runs); those of running writers and of other hosts stay. Returns the removed."""
    host, removed = socket.gethostname(), []
    for tmp in folder.glob(".*.tmp-*"):
        found = TEMPORARY.fullmatch(tmp.name)
        if found is None or found["host"] not in (None, host):
            continue
        pid = int(found["pid"])
        if pid != os.getpid() and not process_alive(pid):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write `path` atomically: `write(f)` fills a temporary file next to it, which is flushed to
    disk and renamed over `path`; then the stale temporary files of its folder are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    remove_stale_temporaries(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """`data` written to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with local checkpoints written by `atomic_save`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)
