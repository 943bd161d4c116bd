"""Resume, preemption and faults: a resumed run must be the run that was never interrupted."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm_lab.callbacks.faults import NonFiniteLossError
from ddpm_lab.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from ddpm_lab.errors import UserError
from ddpm_lab.train import Preempted, run
from tests.helpers import SAVING_LOOP, compose_train, last_error_line, run_cli

# 4 batches of 16 per epoch, 3 epochs = 12 optimizer steps; a 2-step final grid of 4 samples.
BASE = ["net=unet_tiny", "logger=csv", "data.batch_size=16", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1", "trainer.max_epochs=3", "sampler.steps=2",
        "callbacks.sample_grid.num_samples=4", "callbacks.sample_grid.every_n_epochs=0",
        "optim.warmup_steps=5"]
SIGNAL_AT = ["+callbacks.signal._target_=tests.helpers.SignalAtStep", "+callbacks.signal.step=6"]


def train(tmp: Path, extra: list[str]) -> dict:
    return run(compose_train([*BASE, *extra], tmp))


def last(run_dir: Path) -> dict:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for key in ("state_dict", "current_model_state"):   # EMA weights, live weights
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in opt_a:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[i][k], opt_b[i][k])
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight")
    train(out, [])
    return last(out)


def test_preempted_then_resumed_run_equals_the_uninterrupted_run(straight, tmp_path):
    with pytest.raises(Preempted, match="stopped by a signal at step 6"):
        train(tmp_path, SIGNAL_AT)            # mid-epoch: epoch 1, after 2 of its 4 batches
    saved = last(tmp_path)
    assert saved["global_step"] == 6
    run_id = json.loads((tmp_path / "run.json").read_text())["run_id"]
    assert saved["ddpm_lab"]["run"]["run_id"] == run_id

    train(tmp_path, [f"ckpt_path={tmp_path}"])
    resumed = last(tmp_path)
    assert_same_training_state(straight, resumed)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["run_id"] == run_id and resumed["ddpm_lab"]["run"]["run_id"] == run_id
    assert [r["global_step"] for r in info["resumes"]] == [6]


def test_resume_at_an_epoch_boundary_equals_the_uninterrupted_run(straight, tmp_path):
    train(tmp_path, ["trainer.max_epochs=1"])
    assert last(tmp_path)["global_step"] == 4
    train(tmp_path, [f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"])
    assert_same_training_state(straight, last(tmp_path))


# ----- a run that ends on its own limits, then given more ---------------------------------------
# 4 batches per epoch: step 6 is mid-epoch 1, step 4 the end of epoch 0.
STEPS = ["trainer.max_epochs=-1"]
RECORD = ["+callbacks.record._target_=tests.helpers.RecordFitEnd"]


@pytest.fixture(scope="module")
def straight_10_steps(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight10")
    train(out, [*STEPS, "trainer.max_steps=10"])
    return last(out)


def test_a_run_stopped_by_max_steps_mid_epoch_saves_its_last_step(tmp_path):
    train(tmp_path, [*STEPS, "trainer.max_steps=6", *RECORD, f"+callbacks.record.dirpath={tmp_path}"])
    saved, end = last(tmp_path), torch.load(tmp_path / "fit_end.pt")
    assert saved["global_step"] == end["global_step"] == 6
    assert saved["epoch"] == 1                 # in epoch 1, after 2 of its 4 batches
    for name, value in end["state_dict"].items():            # the final grid's weights: EMA
        assert torch.equal(saved["state_dict"][name], value), name


@pytest.mark.parametrize("first", [
    pytest.param(["trainer.max_steps=6"], id="max_steps-mid-epoch"),
    pytest.param(["trainer.max_steps=4"], id="max_steps-at-epoch-end"),
    pytest.param(["trainer.max_steps=10", "+callbacks.stop._target_=tests.helpers.StopAtStep",
                  "+callbacks.stop.step=7"], id="should_stop-mid-epoch"),   # as max_time / early stopping
])
def test_a_run_given_more_steps_continues_as_the_uninterrupted_run(straight_10_steps, tmp_path, first):
    train(tmp_path, [*STEPS, *first])
    train(tmp_path, [*STEPS, "trainer.max_steps=10", f"ckpt_path={tmp_path}"])
    assert_same_training_state(straight_10_steps, last(tmp_path))


def test_max_time_saves_the_step_it_stopped_at(tmp_path):
    train(tmp_path, ["trainer.max_epochs=1000", "trainer.max_time=00:00:00:02", *RECORD,
                     f"+callbacks.record.dirpath={tmp_path}"])
    end = torch.load(tmp_path / "fit_end.pt")
    assert 0 < end["global_step"] < 4000
    assert last(tmp_path)["global_step"] == end["global_step"]


def test_cosine_with_decay_steps_resumes_bit_identically_after_max_steps(tmp_path):
    cosine = [*STEPS, "optim.decay=cosine", "optim.final_lr_ratio=0.1", "optim.decay_steps=10"]
    train(tmp_path / "straight", [*cosine, "trainer.max_steps=10"])
    train(tmp_path / "resumed", [*cosine, "trainer.max_steps=6"])
    train(tmp_path / "resumed", [*cosine, "trainer.max_steps=10", f"ckpt_path={tmp_path / 'resumed'}"])
    assert_same_training_state(last(tmp_path / "straight"), last(tmp_path / "resumed"))


def test_cosine_without_decay_steps_follows_the_curve_of_the_new_length(tmp_path):
    """Given more steps, the cosine is recomputed for the new training length: from the resumed
    step on the LR is that of a run planned for 10 steps, down to lr x final_lr_ratio at step 10."""
    cosine = [*STEPS, "optim.decay=cosine", "optim.final_lr_ratio=0.1", "trainer.log_every_n_steps=1"]
    train(tmp_path, [*cosine, "trainer.max_steps=6"])
    assert last(tmp_path)["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2.0e-5)
    train(tmp_path, [*cosine, "trainer.max_steps=10", f"ckpt_path={tmp_path}"])
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [row.split(",") for row in lines[1:]]
    lrs = {int(r[header.index("step")]): float(r[header.index("lr-AdamW")]) for r in rows
           if r[header.index("lr-AdamW")]}
    lr, warmup = 2.0e-4, 5
    for step in range(6, 10):
        expected = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (10 - warmup))))
        assert lrs[step] == pytest.approx(expected), step
    assert last(tmp_path)["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr * 0.1)


def test_csv_log_continues_with_monotonic_steps(tmp_path):
    with pytest.raises(Preempted):
        train(tmp_path, SIGNAL_AT)
    train(tmp_path, [f"ckpt_path={tmp_path}"])
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    steps = [int(row.split(",")[header.index("step")]) for row in lines[1:]]
    assert steps == sorted(steps) and max(steps) == 11       # steps 0..11, earlier rows kept
    assert min(steps) < 6


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    poison = ["+callbacks.poison._target_=tests.helpers.PoisonWeightsAtStep", "+callbacks.poison.step=6"]
    with pytest.raises(NonFiniteLossError, match=r"train/loss is nan at step 7"):
        train(tmp_path, poison)
    good = last(tmp_path)
    assert good["global_step"] == 4    # end of epoch 0 (the epoch-1 save never happened)
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values())
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_loss_from_the_cli_is_one_clear_error(tmp_path):
    args = [*BASE, "trainer.max_epochs=2", "+callbacks.poison._target_=tests.helpers.PoisonWeightsAtStep",
            "+callbacks.poison.step=5", f"hydra.run.dir={tmp_path}"]
    proc = run_cli("ddpm-train", *args, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_error_line(proc).startswith("ddpm-train: error: train/loss is nan at step 6")
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_sigterm_from_the_cli_saves_and_exits_143(tmp_path):
    args = [*BASE, *SIGNAL_AT, f"hydra.run.dir={tmp_path}"]
    repo = Path(__file__).resolve().parent.parent
    proc = run_cli("ddpm-train", *args, cwd=repo)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert f"continue with ckpt_path={tmp_path}" in last_error_line(proc)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6
    # a plain re-run into the same folder refuses to overwrite it ...
    with pytest.raises(UserError, match="already holds a run"):
        train(tmp_path, [])
    # ... and the resume continues in it (same folder, same run id) to the end
    before = json.loads((tmp_path / "run.json").read_text())["run_id"]
    train(tmp_path, [f"ckpt_path={tmp_path}"])
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 12
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == before


def test_the_resume_config_goes_beside_the_original(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    common = [*BASE, "trainer.max_epochs=1", "logger=none", "~callbacks.sample_grid"]
    assert run_cli("ddpm-train", *common, f"hydra.run.dir={tmp_path}", cwd=repo).returncode == 0
    proc = run_cli("ddpm-train", *common, "trainer.max_epochs=2", f"ckpt_path={tmp_path}", cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / ".hydra").glob("resume-*/config.yaml"))   # the original config kept
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_resume_continues_the_same_wandb_run(tmp_path):
    train(tmp_path, ["logger=wandb", "trainer.max_epochs=1"])
    train(tmp_path, ["logger=wandb", f"ckpt_path={tmp_path}"])
    run_id = json.loads((tmp_path / "run.json").read_text())["run_id"]
    pieces = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(pieces) == 2 and all(p.name.endswith(f"-{run_id}") for p in pieces)
    assert last(tmp_path)["global_step"] == 12


def test_sigusr1_is_a_preemption_too(tmp_path):
    with pytest.raises(Preempted):
        train(tmp_path, [*SIGNAL_AT, "+callbacks.signal.signal_name=SIGUSR1"])
    assert last(tmp_path)["global_step"] == 6
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)   # handler given back


def test_resume_refuses_a_checkpoint_with_another_network(tmp_path):
    train(tmp_path, ["trainer.max_epochs=1"])
    cfg = compose_train([*BASE, "net=unet_small", f"ckpt_path={tmp_path}"], tmp_path)
    with pytest.raises(UserError, match=r"another config: net\.attention_resolutions: checkpoint \[\], "
                                        r"command \[4\]; net\.channel_mult"):
        run(cfg)


def test_resume_bad_ckpt_path_from_the_cli(tmp_path):
    proc = run_cli("ddpm-train", *BASE, "ckpt_path=last", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "ckpt_path=last: no earlier run to resume" in last_error_line(proc)
    assert not list((tmp_path / "train" / "runs").glob("*"))   # no empty run folder left behind


def test_resume_from_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="ckpt_path='nowhere/run': no such checkpoint file or run folder"):
        train(tmp_path, ["ckpt_path=nowhere/run"])


def test_ckpt_path_last_picks_the_newest_run(tmp_path):
    from ddpm_lab.checkpoint_io import find_checkpoint
    runs = tmp_path / "train" / "runs"
    for i, name in enumerate(["b", "a"]):
        f = runs / name / "checkpoints" / "last.ckpt"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
        t = time.time() + i
        import os
        os.utime(f, (t, t))
    assert find_checkpoint("last", runs) == runs / "a" / "checkpoints" / "last.ckpt"
    assert find_checkpoint(str(runs / "b"), runs) == runs / "b" / "checkpoints" / "last.ckpt"


# ----- atomic checkpoint writes ----------------------------------------------------------------
def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    before = sha(path)

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt    # the process is stopped in the middle of writing
    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert sha(path) == before and torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_sigkill_during_saves_never_leaves_a_broken_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SAVING_LOOP, str(path)])
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)                  # several saves in flight
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = torch.load(path)
    assert torch.equal(ckpt["w"], torch.full((4_000_000,), float(ckpt["step"])))


def test_cosine_lr_decay_resumes_on_its_curve(tmp_path):
    """optim.decay=cosine: the LR falls to lr x final_lr_ratio at the last step, and a run preempted
    mid-way continues on the same curve (same optimizer and scheduler state as the straight run)."""
    cosine = ["optim.decay=cosine", "optim.final_lr_ratio=0.1", "trainer.log_every_n_steps=1"]
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    train(straight_dir, cosine)
    with pytest.raises(Preempted):
        train(resumed_dir, [*cosine, *SIGNAL_AT])
    train(resumed_dir, [*cosine, f"ckpt_path={resumed_dir}"])
    a, b = last(straight_dir), last(resumed_dir)
    assert_same_training_state(a, b)
    lr = 2.0e-4                                    # conf/train.yaml's optim.lr
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr * 0.1)
    lines = (straight_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    lrs = [float(row.split(",")[header.index("lr-AdamW")]) for row in lines[1:]
           if row.split(",")[header.index("lr-AdamW")]]
    assert len(lrs) == 12                          # one per optimizer step
    peak = lrs.index(max(lrs))
    assert peak == 5 and all(x > y for x, y in zip(lrs[peak:], lrs[peak + 1:]))   # warm-up 5, then down
    assert lrs[6] == pytest.approx(lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 7))))
