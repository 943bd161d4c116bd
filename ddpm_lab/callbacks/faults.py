"""How a run stops: on its limits, on a signal, or on a diverging (non-finite) loss.

- `StopCheckpoint`: writes `last.ckpt` at the training batch after which the fit stops, whatever
  stops it: `trainer.max_steps`, `trainer.max_time` (Lightning's Timer), `trainer.should_stop` set
  by any callback, or a preemption signal. The checkpoint holds all state (weights, EMA, optimizer,
  LR schedule, loop position, data-loader position, RNG), so `ckpt_path=<run>` with a higher limit
  continues the run exactly. A run that ends with its last epoch (max_epochs) is saved by
  ModelCheckpoint after that epoch's validation, as every epoch is.
  SIGTERM stops the run after the current batch (on every rank at the same batch under DDP).
  SIGUSR1 is treated like SIGTERM, except under SLURM with auto-requeue, where Lightning's own
  SIGUSR1 handler saves `hpc_ckpt_N.ckpt` and requeues the job. Ours rather than Lightning's
  checkpoint callbacks: ModelCheckpoint saves on its own schedule (epoch ends, validations,
  every_n_train_steps) and OnExceptionCheckpoint when the fit raises; the step at which max_steps,
  max_time or should_stop end a fit is in general neither.
- `StopOnNonFiniteLoss`: a NaN/inf training loss stops the run with a clear error before any
  checkpoint is written, so the last good checkpoint stays as it was.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ddpm_lab.errors import UserError


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class StopCheckpoint(L.Callback):
    """`last.ckpt` at the batch after which the fit stops (limits, early stopping, signals)."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt", signals: tuple = ("SIGUSR1",)):
        self.path = Path(dirpath) / filename
        self.signals = [getattr(signal, s) for s in signals if hasattr(signal, s)]
        self.saved_at_step: int | None = None
        self._previous: dict = {}
        self._signalled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Run after Lightning's Timer (appended to the callbacks after ours): a max_time stop is
        # decided in the Timer's on_train_batch_end, and this batch is the one to save.
        timers = [i for i, c in enumerate(trainer.callbacks) if isinstance(c, Timer)]
        if timers and trainer.callbacks.index(self) < timers[-1]:
            trainer.callbacks.remove(self)
            trainer.callbacks.insert(timers[-1], self)

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
        if self.saved_at_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.path)
        self.saved_at_step = trainer.global_step
        # This is the fit's last step: last.ckpt is ours from here on. ModelCheckpoint would write
        # it again after the validation Lightning runs on a stop, and at the end of training, each
        # time with the stopped epoch recorded as finished (a resume would skip the rest of it);
        # it keeps its best-k checkpoints.
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback.save_last = False

    @staticmethod
    def _fit_stops_after_this_batch(trainer: L.Trainer) -> bool:
        """max_steps reached or should_stop set (Timer, early stopping), before the epoch's last
        batch (the epoch's end is ModelCheckpoint's save); gradient accumulation: on a step."""
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return False
        if trainer.fit_loop._should_accumulate():
            return False
        reached = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
        return reached or (trainer.should_stop and trainer.fit_loop._can_stop_early)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._fit_stops_after_this_batch(trainer):
            self._save(trainer)
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
