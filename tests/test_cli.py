"""The console scripts as a new user runs them: from another folder, with real exit codes."""

import re

import pytest
import torch

from ddpm_lab.errors import UserError
from ddpm_lab.sample import run as run_sample
from ddpm_lab.train import run as train_run
from tests.helpers import compose_app, compose_train, last_error_line, run_cli, user_error


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """`ddpm-train debug=fast` with the default W&B logger, run outside the repository, no login."""
    home = tmp_path_factory.mktemp("home")            # no ~/.netrc: W&B must go offline by itself
    work = tmp_path_factory.mktemp("work")
    proc = run_cli("ddpm-train", "debug=fast", "logger=wandb", "net=unet_tiny", "sampler.steps=5",
                   cwd=work, env={"HOME": str(home), "WANDB_MODE": "", "WANDB_API_KEY": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((work / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_train_writes_checkpoints_grids_and_an_offline_wandb_run(trained_run):
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert list((trained_run / "samples").glob("*.png"))
    assert list((trained_run / "wandb").glob("offline-run-*")), "expected an offline W&B run"


def test_sample_writes_grid_and_tensors_and_is_seeded(tiny_checkpoint, tmp_path):
    def draw(seed, name, *extra):
        run_sample(compose_app("sample", [f"ckpt_path={tiny_checkpoint}", "num_samples=6", f"seed={seed}",
                                          "sampler.steps=8", *extra], tmp_path / name))
        assert (tmp_path / name / "samples.png").is_file()
        return torch.load(tmp_path / name / "samples.pt")["images"]

    a, b, c = draw(0, "a"), draw(0, "b", "trajectory=true"), draw(1, "c")
    d = draw(0, "d", "sampler.name=ddim", "sampler.eta=0.0")
    assert (a - d).abs().mean() > 0.01                 # the sampler choice is honoured
    f = draw(0, "f", "sampler=ddim", "sampler.steps=8")  # a preset, as in training (ddim: eta 0, leading)
    torch.testing.assert_close(f, d, rtol=0, atol=0)
    assert torch.load(tmp_path / "f" / "samples.pt")["sampler"]["name"] == "ddim"
    e = draw(0, "e", "sampler.name=diffusers", "sampler.scheduler=EulerDiscreteScheduler")
    assert e.shape == a.shape and torch.isfinite(e).all()
    assert a.shape == (6, 1, 16, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)   # same seed, same images
    assert (a - c).abs().mean() > 0.05                 # another seed, other images
    assert (tmp_path / "b" / "trajectory.png").is_file()


def test_sample_ckpt_path_last_is_the_newest_run(trained_run, tmp_path):
    """From the folder training ran in, `ckpt_path=last` samples the newest run's last.ckpt."""
    work = trained_run.parents[3]                      # <work>/outputs/train/runs/<run>
    common = ["num_samples=4", "sampler.steps=4"]
    run_sample(compose_app("sample", [f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", *common],
                           tmp_path / "file"))
    proc = run_cli("ddpm-sample", "ckpt_path=last", *common, f"hydra.run.dir={tmp_path / 'last'}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = {name: torch.load(tmp_path / name / "samples.pt") for name in ("file", "last")}
    # the same checkpoint; in- and out-of-process runs may differ in the last float bits
    torch.testing.assert_close(images["last"]["images"], images["file"]["images"])
    assert images["last"]["ckpt_path"] == str(trained_run / "checkpoints" / "last.ckpt")


def test_forward_process_figure(tmp_path):
    proc = run_cli("ddpm-forward", "schedule=cosine", "num_images=3", f"hydra.run.dir={tmp_path / 'f'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "f" / "forward.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["schedule.name=quadratic"], "schedule.name='quadratic' is not allowed; choose one of: linear, cosine, sigmoid"),
    (["schedule.num_steps=0"], "schedule.num_steps must be an integer >= 1, got 0"),
    (["data.image_size=18"], "data.image_size=18 cannot be divided by the UNet"),
    (["data=image_folder"], "Missing mandatory value: data.path"),
    (["sampler.name=euler"], "sampler.name='euler' is not allowed; choose one of: ddpm, ddim"),
])
def test_train_bad_config_values(tmp_path, args, message):
    """In-process (the console script's one line and exit status 2: test_config_check.py)."""
    cfg = compose_train(["debug=fast", "logger=none", *args], tmp_path)
    with user_error(message):
        train_run(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_unknown_group_choice_lists_the_options(tmp_path):
    proc = run_cli("ddpm-train", "net=resnet9000", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'net/resnet9000'" in proc.stderr and "unet_small" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["prediction=v"], "prediction='v' but the checkpoint was trained to predict 'eps'"),
    (["sampler.steps=1001"], "sampler.steps=1001 must be an integer in [1, 1000]"),
    (["sampler.name=diffusers", "sampler.scheduler=Nope"], "sampler.scheduler='Nope' is not allowed; choose one of:"),
])
def test_sample_bad_sampler_choices(tiny_checkpoint, tmp_path, args, message):
    cfg = compose_app("sample", [f"ckpt_path={tiny_checkpoint}", "num_samples=2", *args], tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        run_sample(cfg)
    assert not (tmp_path / "samples.pt").exists()


def test_sample_missing_and_foreign_checkpoints_keep_existing_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.png").write_bytes(b"earlier result")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    cases = {str(tmp_path / "missing.ckpt"): "no such checkpoint file",
             str(tmp_path / "foreign.ckpt"): "is not a ddpm_lab checkpoint",
             str(tmp_path / "text.ckpt"): "is not a readable PyTorch checkpoint"}
    for name, message in cases.items():
        with pytest.raises(UserError, match=r"^ckpt_path=.*" + re.escape(message)):
            run_sample(compose_app("sample", [f"ckpt_path={name}"], out))
    # the console script: one line, exit status 2
    proc = run_cli("ddpm-sample", "ckpt_path=last", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_error_line(proc) == ("ddpm-sample: error: ckpt_path=last: no run folder with checkpoints/last.ckpt "
                                     "under 'outputs/<task>/runs'; train one first (ddpm-train), or give a "
                                     "checkpoint file or run folder")
    assert (out / "samples.png").read_bytes() == b"earlier result"
