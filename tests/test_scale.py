"""Scaling knobs: DDP (2 CPU processes), mixed precision, gradient accumulation, torch.compile."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.checkpoint_io import read_checkpoint
from ddpm_lab.errors import UserError
from ddpm_lab.train import run
from tests.helpers import RecordGradNorm, compose_train, run_cli

TINY = ["net=unet_tiny", "logger=csv", "data.batch_size=16", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1", "trainer.max_epochs=1", "sampler.steps=2",
        "callbacks.sample_grid.num_samples=4"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_one_folder_identical_weights(tmp_path):
    dump = tmp_path / "dump"
    proc = run_cli("ddpm-train", "trainer=ddp_cpu", *TINY, "trainer.max_epochs=2", "callbacks=fd",
                   "callbacks.fd_evaluation.every_n_epochs=1", "callbacks.fd_evaluation.num_samples=80",
                   "callbacks.fd_evaluation.steps=2",
                   "+callbacks.dump._target_=tests.helpers.DumpWeights", f"+callbacks.dump.dirpath={dump}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train" / "runs").iterdir()     # one folder, not one per rank
    assert (run_dir / "run.json").is_file() and (run_dir / "samples" / "final.png").is_file()
    assert (run_dir / "train_ddp_process_1.log").is_file()               # rank 1 logs beside rank 0
    r0, r1 = (torch.load(dump / f"weights_rank{r}.pt") for r in (0, 1))
    for kind in ("live", "ema"):
        assert r0[kind].keys() == r1[kind].keys()
        assert all(torch.equal(r0[kind][k], r1[kind][k]) for k in r0[kind]), kind
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 * 4     # limit_train_batches=4 per rank (DistributedSampler), 2 epochs
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert "val/fd" in rows[0].split(",")                  # the evaluation callback ran under DDP
    torch_states = [s["torch"] for s in ckpt["ddpm_lab"]["rng"]]
    assert len(torch_states) == 2 and not torch.equal(*torch_states)   # independent noise per rank


@pytest.mark.slow
def test_ddp_sigterm_on_rank_zero_saves_once_and_resumes(tmp_path):
    common = ["trainer=ddp_cpu", *TINY, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}"]
    # Lightning's own SIGTERM handler broadcasts from inside the handler and stops the signalled rank
    # alone, which can hang the ranks; StopCheckpoint agrees on the flag once per batch. A hang fails
    # here after 4 minutes instead of blocking CI.
    proc = run_cli("ddpm-train", *common, "+callbacks.signal._target_=tests.helpers.SignalAtStep",
                   "+callbacks.signal.step=3", "+callbacks.signal.rank=0", cwd=tmp_path, timeout=240)
    assert proc.returncode == 143, proc.stderr[-3000:]
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert 3 <= ckpt["global_step"] <= 4 and len(ckpt["ddpm_lab"]["rng"]) == 2
    proc = run_cli("ddpm-train", *common[:-1], f"ckpt_path={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 8


def test_bf16_mixed_precision_trains_on_the_cpu(tmp_path):
    run(compose_train([*TINY, "trainer.precision=bf16-mixed"], tmp_path))
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all()
               for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_fused_adamw_under_bf16_is_clipped(tmp_path):
    """Lightning's AMP plugin refuses clipping with a fused optimizer (made for fp16's scaler);
    bf16 has no scaler, so the module clips the true gradients itself."""
    RecordGradNorm.norms.clear()
    run(compose_train([*TINY, "trainer.limit_train_batches=3", "trainer.precision=bf16-mixed",
                       "trainer.gradient_clip_val=0.001", "+optim.optimizer.fused=true", "~callbacks.sample_grid",
                       "+callbacks.grad_norm._target_=tests.helpers.RecordGradNorm"], tmp_path))
    assert len(RecordGradNorm.norms) == 3
    assert all(0 < norm <= 0.001 * (1 + 1e-4) for norm in RecordGradNorm.norms), RecordGradNorm.norms


def test_channels_last_and_compile_modes_prepare_the_network():
    from ddpm_lab.build import compile_options, prepare_network
    from ddpm_lab.nets import UNet
    assert compile_options(True) == {"backend": "inductor"}
    assert compile_options("reduce-overhead") == {"backend": "inductor", "mode": "reduce-overhead"}
    assert compile_options("aot_eager") == {"backend": "aot_eager"}

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = UNet(image_size=16, in_channels=1, base_channels=16, channel_mult=[1, 2],
                            num_res_blocks=1, attention_resolutions=[], norm_groups=8)

        def trainable(self):
            return self.net

    module = Module().eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 500])
    expected = module.net(x, t)
    prepare_network(module, {"channels_last": True, "compile": None})
    convs = [p for p in module.net.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert torch.allclose(module.net(x, t), expected, atol=1e-5)


def test_gradient_accumulation_steps_once_per_two_batches(tmp_path):
    run(compose_train([*TINY, "trainer.accumulate_grad_batches=2"], tmp_path))
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


@pytest.mark.slow
def test_compiled_network_trains_and_keeps_checkpoint_keys(tmp_path):
    # the aot_eager backend traces and compiles the graph as inductor does, without its C++ build
    run(compose_train([*TINY, "trainer.limit_train_batches=2"], tmp_path / "eager"))
    run(compose_train([*TINY, "trainer.limit_train_batches=2", "compile=aot_eager"], tmp_path / "compiled"))
    eager = read_checkpoint(tmp_path / "eager" / "checkpoints" / "last.ckpt")["state_dict"]
    compiled = read_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.ckpt")["state_dict"]
    assert eager.keys() == compiled.keys()


@pytest.mark.slow
def test_fsdp_trains_sharded_and_writes_a_full_checkpoint(tmp_path):
    """trainer=fsdp as configured, on 2 CPU processes (a test-only strategy subclass gives torch's
    FSDP a CPU device): norm clipping over the shards, full state dict in last.ckpt."""
    proc = run_cli("ddpm-train", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.precision=32-true", "trainer.strategy._target_=tests.helpers.CPUFSDPStrategy",
                   *TINY, "~callbacks.ema", "~callbacks.sample_grid", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from ddpm_lab.modules import DiffusionModule
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    module = DiffusionModule.load(tmp_path / "checkpoints" / "last.ckpt")     # unsharded: loads as usual
    assert ckpt["state_dict"].keys() == module.state_dict().keys()
    assert module.sample(2, steps=2).shape == (2, 1, 16, 16)


def test_fsdp_with_ema_is_refused_with_the_fix(tmp_path):
    cfg = compose_train([*TINY, "trainer=fsdp"], tmp_path)
    with pytest.raises(UserError, match=r"~callbacks\.ema ~callbacks\.sample_grid"):
        run(cfg)
