"""Faults a long run meets: preemption (SIGTERM / SIGUSR1) and a diverging (non-finite) loss.

- `PreemptionCheckpoint`: Lightning turns SIGTERM into a stop after the current batch; this
  callback writes `last.ckpt` at the end of that batch (all state: weights, EMA, optimizer,
  loop position, data-loader position, RNG), so `ckpt_path=<run>` continues exactly. SIGUSR1 is
  treated like SIGTERM, except under SLURM with auto-requeue, where Lightning's own SIGUSR1
  handler saves `hpc_ckpt_N.ckpt` and requeues the job.
- `StopOnNonFiniteLoss`: a NaN/inf training loss stops the run with a clear error before any
  checkpoint is written, so the last good checkpoint stays as it was.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ddpm_lab.errors import UserError


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class PreemptionCheckpoint(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt", signals: tuple = ("SIGUSR1",)):
        self.path = Path(dirpath) / filename
        self.signals = [getattr(signal, s) for s in signals if hasattr(signal, s)]
        self.saved_at_step: int | None = None
        self._previous: dict = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning has installed its own handlers (SIGTERM; SIGUSR1 under SLURM requeue).
        connector = trainer._signal_connector

        def stop_soon(signum, frame) -> None:
            connector.received_sigterm = True   # the flag Lightning's SIGTERM handler sets

        for signum in self.signals:
            handler = signal.getsignal(signum)
            if handler in (None, signal.SIG_DFL):   # not taken (e.g. by Lightning's SLURM requeue)
                self._previous[signum] = handler
                signal.signal(signum, stop_soon)

    def _give_back_signals(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._give_back_signals()

    def _save(self, trainer: L.Trainer) -> None:
        if self.saved_at_step != trainer.global_step:
            trainer.save_checkpoint(self.path)
            self.saved_at_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # One process: save right here. Several: a save is collective, but the signal reaches the
        # ranks at different batches; Lightning broadcasts rank 0's flag at the next batch and
        # stops every rank together, and `on_exception` saves then, on all ranks at once.
        if trainer.received_sigterm and trainer.world_size == 1:
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self._save(trainer)
        self._give_back_signals()


class StopOnNonFiniteLoss(L.Callback):
    """Raise NonFiniteLossError when the training loss is NaN or inf (checked every step)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteLossError(
                f"train/loss is {loss.item()} at step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}); stopped without saving, the last checkpoint is kept. "
                f"Lower optim.lr, keep trainer.gradient_clip_val, or use trainer.precision=32-true")
