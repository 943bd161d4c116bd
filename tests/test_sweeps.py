"""Hydra sweeps from the command line: one folder and one W&B run per job, Optuna, launchers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import run_cli

TINY = ["net=unet_tiny", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "data.batch_size=16", "sampler.steps=2",
        "callbacks.sample_grid.num_samples=4"]


def sweep(tmp_path: Path, *args: str):
    proc = run_cli("ddpm-train", "-m", *TINY, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    return sweep_dir


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))


def test_multirun_gives_one_folder_and_one_wandb_run_per_job_grouped_by_the_sweep(tmp_path):
    sweep_dir = sweep(tmp_path, "logger=wandb", "schedule=linear,cosine")
    folders = jobs(sweep_dir)
    assert [d.name for d in folders] == ["0", "1"]
    run_ids = [json.loads((d / "run.json").read_text())["run_id"] for d in folders]
    assert len(set(run_ids)) == 2
    group = f"train-{sweep_dir.name}".encode()
    for d, run_id, value in zip(folders, run_ids, ["linear", "cosine"]):
        assert (d / "checkpoints" / "last.ckpt").is_file()
        (offline,) = (d / "wandb").glob("offline-run-*")       # exactly one W&B run per job
        assert offline.name.endswith(run_id)
        record = next(offline.glob("run-*.wandb")).read_bytes()
        assert group in record                                   # grouped by the sweep
        assert f"{d.name}:schedule={value}".encode() in record   # named by its swept value


def test_finish_wandb_ends_the_run_of_this_jobs_logger_only(tmp_path, monkeypatch):
    """A run this job's W&B logger did not start (here one opened around it) stays open; the run
    the logger started is ended, marked preempting when asked."""
    import wandb

    from ddpm_lab.loggers import finish_wandb, wandb_logger
    monkeypatch.setenv("WANDB_MODE", "offline")
    unstarted = wandb_logger(str(tmp_path / "a"), id="thisjob0", mode="offline")
    outer = wandb.init(dir=str(tmp_path), mode="offline", id="outerrun0")
    try:
        finish_wandb([unstarted], 0)
        assert wandb.run is outer
    finally:
        outer.finish()
    logger = wandb_logger(str(tmp_path / "b"), id="thisjob1", mode="offline")
    run = logger.experiment
    marked = []
    monkeypatch.setattr(type(run), "mark_preempting", lambda self: marked.append(self.id))
    finish_wandb([logger], 143, preempted=True)
    assert wandb.run is None and marked == ["thisjob1"]


def last_val_loss(job: Path) -> float:
    rows = list(csv.DictReader(open(job / "csv" / "metrics.csv")))
    return float([r["val/loss"] for r in rows if r.get("val/loss")][-1])


def test_optuna_sweep_of_two_trials_returns_the_best_value(tmp_path):
    sweep_dir = sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "logger=csv")
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    losses = [last_val_loss(j) for j in jobs(sweep_dir)]
    assert len(losses) == 2
    assert result["best_value"] == pytest.approx(min(losses), rel=1e-6)
    assert set(result["best_params"]) == {"optim.lr", "optim.warmup_steps", "schedule"}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_parallel", "submitit_local"])
def test_parallel_launchers_run_every_job(tmp_path, launcher):
    extra = ["hydra.launcher.timeout_min=10"] if launcher.startswith("submitit") else []
    sweep_dir = sweep(tmp_path, f"hydra/launcher={launcher}", *extra, "logger=csv", "seed=0,1")
    for job in jobs(sweep_dir):
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "run.json").is_file()


def test_slurm_launcher_config_composes(tmp_path):
    proc = run_cli("ddpm-train", "hydra/launcher=slurm", "--cfg", "hydra", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["additional_parameters"]["signal"] == "USR1@120"


@pytest.mark.parametrize("override, message", [
    ("hydra/sweeper=nope", "Could not find 'hydra/sweeper/nope'"),
    ("hydra/launcher=nope", "Could not find 'hydra/launcher/nope'"),
    ("hparams_search=nope", "Could not find 'hparams_search/nope'"),
])
def test_unknown_sweeper_or_launcher_names_the_choices(tmp_path, override, message):
    proc = run_cli("ddpm-train", "-m", override, "seed=0,1", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr and "Available options" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_optuna_sweep_on_a_metric_the_run_does_not_log_is_a_clear_error(tmp_path):
    proc = run_cli("ddpm-train", *TINY, "hparams_search=optuna", "hydra.sweeper.n_trials=1", "logger=csv",
                   "optimized_metric=val/fd", cwd=tmp_path)
    assert proc.returncode == 2
    assert "optimized_metric='val/fd' was not logged by this run" in proc.stderr
    assert "val/fd needs callbacks=fd" in proc.stderr


def test_plain_sweep_whose_jobs_never_validate_succeeds(tmp_path):
    """A basic-sweeper multirun ignores the jobs' return values: a job that stops before its first
    validation (no val/loss) is not a failure, and keeps its last step."""
    sweep_dir = sweep(tmp_path, "logger=csv", "seed=0,1", "trainer.max_steps=1")
    for job in jobs(sweep_dir):
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 1
        assert "val/loss" not in (job / "csv" / "metrics.csv").read_text()


def test_a_sweep_over_flow_matching_and_ddpm(tmp_path):
    sweep_dir = sweep(tmp_path, "experiment=digits_ddpm,digits_flow")
    kinds = []
    for job in jobs(sweep_dir):
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        kinds.append(ckpt["hyper_parameters"]["diffusion"]["_target_"])
    assert kinds == ["ddpm_lab.diffusion.GaussianDiffusion", "ddpm_lab.diffusion.FlowMatching"]
