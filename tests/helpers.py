"""Shared helpers for the tests that compose configs or run the console scripts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir

from ddpm_lab.cli import CONF_DIR

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
# small and quick: a few sampling steps, a handful of samples
QUICK = ["sampler.steps=5", "callbacks.sample_grid.num_samples=4", "logger=csv"]


def compose_app(app: str, overrides: list[str], out_dir: Path):
    """The config `ddpm-<app>` would run with these overrides, writing into `out_dir`."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(app, overrides=[*overrides, f"paths.output_dir={out_dir}"])


def compose_train(overrides: list[str], out_dir: Path):
    return compose_app("train", overrides, out_dir)


# the suite's one small trained checkpoint (tests/conftest.py: `tiny_checkpoint`)
TINY_RUN = ["debug=fast", "net=unet_tiny", "sampler.steps=5", "callbacks.sample_grid.num_samples=2"]


def run_cli(script: str, *args: str, cwd: Path, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    # the repo on the path, so configs can name test-only callbacks (tests.helpers.X)
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **(env or {})}
    # its own process group: on a timeout the whole group (DDP ranks included) is killed
    proc = subprocess.Popen([str(BIN / script), *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextmanager
def user_error(message: str):
    """Expect the block to fail with the user error whose text contains `message`, found as the
    console scripts find it (through Hydra's instantiation wrapper and other causes)."""
    import pytest

    from ddpm_lab.cli import find_user_error
    with pytest.raises(Exception) as info:   # noqa: B017 - narrowed below, as the console scripts do
        yield
    found = find_user_error(info.value)
    assert found is not None, f"not a user error: {info.value!r}"
    assert message in str(found), f"{message!r} not in {str(found)!r}"


def last_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_reproduces_mixture(gmm, x, weight_tol: float = 0.015, mean_tol: float = 0.04, cov_tol: float = 0.03):
    """Assign samples to their most likely component; compare weights, means and covariances."""
    import torch

    k = gmm.classify(x)
    for c in range(len(gmm.weights)):
        xs = x[k == c]
        assert abs(len(xs) / len(x) - gmm.weights[c].item()) < weight_tol
        assert (xs.mean(0) - gmm.means[c]).abs().max() < mean_tol
        assert (torch.cov(xs.T) - gmm.covs[c]).abs().max() < cov_tol


# a process that saves checkpoints through AtomicCheckpointIO as fast as it can, to be SIGKILLed
SAVING_LOOP = """
import sys, torch
from ddpm_lab.checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
for step in range(10_000):
    io.save_checkpoint({"step": step, "w": torch.full((4_000_000,), float(step))}, path)
"""


# ----- callbacks the tests add with +callbacks.<name>._target_=tests.helpers.<Class> ------------
import lightning as L  # noqa: E402


class SignalAtStep(L.Callback):
    """Send this process a signal at the end of optimizer step `step` (a preemption)."""

    def __init__(self, step: int, signal_name: str = "SIGTERM", rank: int | None = None):
        self.step, self.signal_name, self.rank = step, signal_name, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            import signal
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class PoisonWeightsAtStep(L.Callback):
    """Fill the network's first parameter with NaN after step `step` (a diverging run)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            import torch
            with torch.no_grad():
                next(pl_module.net.parameters()).fill_(float("nan"))


class DumpWeights(L.Callback):
    """Each rank writes its live and EMA weights to <dirpath>/weights_rank<r>.pt when training ends
    (before EMAWeightAveraging copies the average into the model)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, pl_module):
        import torch
        from lightning.pytorch.callbacks import WeightAveraging
        ema = next(c for c in trainer.callbacks if isinstance(c, WeightAveraging))._average_model
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save({"live": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                    "ema": {k: v.detach().cpu() for k, v in ema.module.state_dict().items()}},
                   self.dirpath / f"weights_rank{trainer.global_rank}.pt")


def _cpu_fsdp_strategy():
    from lightning.pytorch.strategies import FSDPStrategy

    class CPUFSDPStrategy(FSDPStrategy):
        """Lightning's FSDPStrategy on CPU processes (gloo), for testing the FSDP code path without
        GPUs: Lightning passes device_id=None on a CPU, which torch's FSDP refuses."""

        def _setup_model(self, model):
            import torch
            from torch.distributed.fsdp import FullyShardedDataParallel
            return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                            mixed_precision=self.mixed_precision_config,
                                            sharding_strategy=self.sharding_strategy,
                                            device_id=torch.device("cpu"), **self.kwargs)

    return CPUFSDPStrategy


def __getattr__(name):   # tests.helpers.CPUFSDPStrategy, built on first use
    if name == "CPUFSDPStrategy":
        return _cpu_fsdp_strategy()
    raise AttributeError(name)


class StopAtStep(L.Callback):
    """Set `trainer.should_stop` at the end of optimizer step `step`, as Lightning's Timer does when
    `trainer.max_time` runs out (and EarlyStopping when its metric stalls)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


class RecordFitEnd(L.Callback):
    """Write the global step and the weights the module holds when the fit ends (after
    EMAWeightAveraging has copied the average in: the weights the final sample grid uses) to
    <dirpath>/fit_end.pt."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer, pl_module):
        import torch
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": trainer.global_step,
                    "state_dict": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}},
                   self.dirpath / "fit_end.pt")


class RecordGradNorm(L.Callback):
    """Append the total gradient norm each optimizer step used (after clipping: the gradients stay
    until the next step's zero_grad) to `RecordGradNorm.norms`."""

    norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import torch
        grads = [p.grad.float().norm() for p in pl_module.parameters() if p.grad is not None]
        RecordGradNorm.norms.append(float(torch.stack(grads).norm()))
