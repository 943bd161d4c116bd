"""ddpm-train: compose a config with Hydra and train with Lightning.

`run(cfg)` is the testable part; `main()` is the console script. Config -> objects lives in
`ddpm_lab.build`, the run's identity and resume in `ddpm_lab.runs`, W&B naming in `ddpm_lab.loggers`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from ddpm_lab import runs
from ddpm_lab.build import (
    build,
    build_callbacks,
    build_loggers,
    check_strategy,
    container,
    fit_callbacks_to,
    prepare_network,
    trainer_limits,
)
from ddpm_lab.callbacks.faults import StopCheckpoint
from ddpm_lab.checkpoint_io import read_checkpoint
from ddpm_lab.cli import CONF_DIR, user_errors
from ddpm_lab.config_check import check_config
from ddpm_lab.errors import UserError
from ddpm_lab.fit_loop import use_exact_resume_loop
from ddpm_lab.loggers import finish_wandb
from ddpm_lab.pretrained import load_initial_weights

runs.register_resolvers()   # hydra.run.dir follows ckpt_path (conf/hydra/train.yaml)
PREEMPTED_EXIT = 143        # 128 + SIGTERM, the status schedulers expect from a stopped job


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGUSR1 after saving a checkpoint."""


def run(cfg: DictConfig) -> dict[str, float]:
    """Train as configured; returns the final callback metrics (e.g. val/loss).

    Continues a run when `ckpt_path` is set (same folder, W&B run, optimizer, EMA, RNG and data
    position); raises Preempted after a SIGTERM/SIGUSR1 checkpoint.
    """
    check_config(cfg, "train")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    check_strategy(cfg)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_file = runs.resolve_resume(cfg, output_dir)
    module, datamodule = build(cfg)
    if cfg.get("init_from"):
        if ckpt_file is not None:
            raise UserError(f"init_from={cfg.init_from!r} starts a new run from weights, and ckpt_path "
                            f"continues a run: give one of them")
        load_initial_weights(module.trainable(), cfg.init_from, str(cfg.net.get("_target_")))
    ckpt = None
    if ckpt_file is not None:
        ckpt = read_checkpoint(ckpt_file)
        runs.check_resume_config(str(cfg.get("ckpt_path") or ckpt_file), ckpt, dict(module.hparams),
                                 runs.run_dir_of(ckpt_file))
    info = runs.start_run(output_dir, ckpt_file, ckpt)
    module.run_info = {"run_id": info["run_id"], "output_dir": str(output_dir)}
    del ckpt
    prepare_network(module, cfg)
    loggers = build_loggers(cfg, info["run_id"])
    callbacks = fit_callbacks_to(module, build_callbacks(cfg, has_logger=bool(loggers)))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     **trainer_limits(cfg, module))
    use_exact_resume_loop(trainer)
    for logger in loggers:
        logger.log_hyperparams(container(cfg))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_file)
    except SIGTERMException:
        finish_wandb(loggers, PREEMPTED_EXIT, preempted=True)
        saved = next((c.path for c in callbacks if isinstance(c, StopCheckpoint)), None)
        raise Preempted(f"stopped by a signal at step {trainer.global_step}; "
                        + (f"saved {saved}; " if saved else "")
                        + f"continue with ckpt_path={output_dir}") from None
    except BaseException:
        finish_wandb(loggers, 1)
        raise
    finish_wandb(loggers, 0)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweeper optimises: `optimized_metric` (default val/loss) of this run, or None
    when the run did not log it. Only an optimising sweeper (Optuna) needs it: there a missing
    metric is an error; a plain multirun ignores the return value."""
    name = cfg.get("optimized_metric") or "val/loss"
    if name in metrics:
        return metrics[name]
    if optimising_sweep():
        raise UserError(f"optimized_metric={name!r} was not logged by this run; logged: "
                        f"{', '.join(sorted(metrics)) or 'nothing'} (val/fd needs callbacks=fd; val/loss "
                        f"needs a validation: trainer.limit_val_batches > 0 and at least one epoch)")
    return None


def optimising_sweep() -> bool:
    """True inside a job of a sweep whose sweeper uses the job's return value (Optuna)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def remove_if_unused(output_dir: Path) -> None:
    """Remove a run folder holding nothing but Hydra's own files (a command that failed early)."""
    if output_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in output_dir.iterdir()):
        shutil.rmtree(output_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@user_errors("ddpm-train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except UserError:
        if runs.is_rank_zero():
            remove_if_unused(Path(cfg.paths.output_dir))
        raise
    except Preempted as stop:
        print(f"ddpm-train: {stop}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    return objective(cfg, metrics)


if __name__ == "__main__":
    main()
