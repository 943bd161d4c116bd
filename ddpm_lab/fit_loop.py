"""Lightning's fit loop, resumed the same way whichever limit ended the run.

Lightning's `_FitLoop` treats a run with `trainer.max_steps` set as always restarting mid-epoch:
a checkpoint written at the end of an epoch (or at the epoch's last batch) is then resumed as if
that epoch were unfinished, so the epoch counter jumps by one and the data loader, the training
noise and EMA drift away from the uninterrupted run. `ExactResumeFitLoop` decides "restarting"
from the saved progress alone, as Lightning does for runs limited by epochs, so that
`max_steps=N` straight and `max_steps=k` then `max_steps=N ckpt_path=<run>` are the same run.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loops.fit_loop import _FitLoop


class ExactResumeFitLoop(_FitLoop):
    def _iteration_based_training(self) -> bool:
        return False


def use_exact_resume_loop(trainer: L.Trainer) -> None:
    """Replace the trainer's fit loop by an ExactResumeFitLoop with the same limits."""
    old = trainer.fit_loop
    loop = ExactResumeFitLoop(trainer, min_epochs=old.min_epochs, max_epochs=old.max_epochs)
    loop.epoch_loop = old.epoch_loop
    trainer.fit_loop = loop
