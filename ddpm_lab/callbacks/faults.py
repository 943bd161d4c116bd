"""Faults a long run meets: preemption (SIGTERM / SIGUSR1) and a diverging (non-finite) loss.

- `PreemptionCheckpoint`: SIGTERM stops the run after the current batch (on every rank at the
  same batch under DDP); this callback writes `last.ckpt` there (all state: weights, EMA, optimizer,
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
        self._signalled = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning has installed its own handlers (SIGTERM; SIGUSR1 under SLURM requeue).
        # The handler only sets a flag. With several processes it also replaces Lightning's SIGTERM
        # handler, which runs a collective (a broadcast from rank 0) inside the signal handler and
        # lets the signalled rank alone stop at the end of its batch while the others go on: a
        # deadlock when the signal lands between two ranks' collectives (Lightning issue #20806).
        # The ranks agree on the flag at one point instead: the end of every training batch.
        def stop_soon(signum, frame) -> None:
            self._signalled = True

        takeover = list(self.signals)
        if trainer.world_size > 1 and signal.SIGTERM not in takeover:
            takeover.append(signal.SIGTERM)
        for signum in takeover:
            handler = signal.getsignal(signum)
            # not taken by Lightning's SLURM requeue (SIGUSR1); SIGTERM: always ours with several ranks
            if handler in (None, signal.SIG_DFL) or signum == signal.SIGTERM:
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
        # Every rank is here once per batch: a signal on any rank stops them all after this batch
        # (Lightning raises SIGTERMException on every rank at the end of the step once the flag it
        # reads is set). One process saves right here; several save in `on_exception`, together,
        # since a save is collective.
        stop = self._signalled or trainer.received_sigterm
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        trainer._signal_connector.received_sigterm = True
        if trainer.world_size == 1:
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
