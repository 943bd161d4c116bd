"""Atomic checkpoint writes: a kill during a save never leaves a truncated `last.ckpt`.

Lightning's TorchCheckpointIO writes through an fsspec transaction whose temporary file lives in
the system temp folder, and moves it over the target at the end; across file systems that move
is a copy, which a kill can interrupt. Here the checkpoint is written to a temporary file next
to the target, flushed to disk, and renamed over it (`os.replace`, atomic on POSIX), so readers
see either the old checkpoint or the new one. Remote paths (s3://, ...) go to Lightning as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
