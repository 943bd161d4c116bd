"""Training through Hydra + Lightning: every experiment config, checkpoints, EMA, data modules."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm_lab import train
from ddpm_lab.build import build, build_module
from ddpm_lab.checkpoint_io import read_checkpoint
from ddpm_lab.cli import CONF_DIR
from ddpm_lab.errors import UserError
from ddpm_lab.modules import DiffusionModule
from tests.helpers import QUICK, compose_train

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(experiment, tmp_path):
    extra = []
    stage1 = {"shapes_ldm": "shapes_vae", "shapes_ldm_flow": "shapes_vae", "moving_shapes_ldm": "moving_shapes_vae"}
    if experiment in stage1:     # stage 2 needs a stage-1 run (fast_dev_run saves no checkpoint)
        size = "data.num_clips=64" if experiment.startswith("moving") else "data.num_images=200"
        small = [size, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                 "logger=csv"]
        train.run(compose_train([f"experiment={stage1[experiment]}", *small], tmp_path / "stage1"))
        extra = [size, f"vae.path={tmp_path / 'stage1'}", f"latents.cache_dir={tmp_path / 'cache'}"]
        if experiment == "moving_shapes_ldm":      # image-to-video in latent space too
            extra.append("+image_to_video.p_first_frame=0.5")
    cfg = compose_train([f"experiment={experiment}", "++trainer.fast_dev_run=true", *QUICK, *extra], tmp_path / "run")
    metrics = train.run(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))
    if experiment == "moving_shapes_ldm":
        module, _ = build(cfg)
        frame = torch.rand(1, 3, 32, 32) * 2 - 1
        out = module.sample_outputs(2, prompts="a red circle moving up", first_frames=frame, steps=2)
        assert out["images"].shape == (2, 3, 9, 32, 32) and out["latents"].shape == (2, 4, 5, 8, 8)


def test_debug_fast_writes_checkpoints_samples_and_logs(tmp_path):
    cfg = compose_train(["debug=fast", "net=unet_tiny", "sampler.steps=5",
                         "callbacks.sample_grid.every_n_epochs=1"], tmp_path)
    metrics = train.run(cfg)
    assert metrics["val/loss"] > 0
    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2  # last + best val
    assert {p.name for p in (tmp_path / "samples").glob("*.png")} == {"epoch0000.png", "final.png"}
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    hp = ckpt["hyper_parameters"]
    assert hp["schedule"]["name"] == "linear" and hp["diffusion"]["prediction"] == "eps"
    assert hp["data_info"]["image_shape"] == [1, 16, 16] and hp["data_info"]["num_classes"] == 10
    # EMA (Lightning's EMAWeightAveraging): the checkpoint's weights are the average, not the raw ones
    raw, ema = ckpt["current_model_state"], ckpt["state_dict"]
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)
    module = DiffusionModule.load(tmp_path / "checkpoints" / "last.ckpt")
    images = module.sample(3, seed=0, steps=4)
    assert images.shape == (3, 1, 16, 16) and images.abs().max() <= 1
    for name in ("ddim", "dpmpp_2m"):   # the sampler is a choice at sample time
        assert module.sample(2, seed=0, sampler=name, steps=3).shape == (2, 1, 16, 16)


def test_diffusers_unet_trains(tmp_path):
    cfg = compose_train(["net=diffusers_unet2d", "++trainer.fast_dev_run=true", *QUICK], tmp_path)
    assert train.run(cfg)["train/loss_step"] > 0


def write_image_folder(root: Path, n_per_class: int = 6) -> Path:
    g = torch.Generator().manual_seed(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def test_image_folder_datamodule_trains(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    cfg = compose_train(["data=image_folder", f"data.path={root}", "data.image_size=16",
                         "data.num_workers=0", "data.batch_size=4", "net=unet_tiny",
                         "++trainer.fast_dev_run=true", *QUICK], tmp_path / "run")
    train.run(cfg)
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup("fit")
    x = dm.train_set[0].image
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert dm.num_classes == 2 and len(dm.train_set) + len(dm.val_set) == 12


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_image_folder_errors(tmp_path, make):
    path = tmp_path / "nothing"
    if make == "empty":
        path.mkdir()
        (path / "notes.txt").write_text("not an image")
    cfg = compose_train(["data=image_folder", f"data.path={path}", *QUICK], tmp_path / "run")
    with pytest.raises(Exception) as info:
        train.run(cfg)
    from ddpm_lab.cli import find_user_error

    err = find_user_error(info.value)
    assert isinstance(err, UserError) and "data.path=" in str(err)
    assert ("is not a folder" if make == "missing" else "holds no images") in str(err)


def test_digits_data_is_real_and_split_deterministically():
    from ddpm_lab.data import DigitsDataModule

    a, b = DigitsDataModule(image_size=16), DigitsDataModule(image_size=16)
    a.setup()
    b.setup()
    assert len(a.train_set) + len(a.val_set) == 1797
    torch.testing.assert_close(a.val_set.columns.image, b.val_set.columns.image)
    x = a.train_set.columns.image
    assert x.shape[1:] == (1, 16, 16) and x.min() == -1 and x.max() <= 1
    assert set(a.train_set.columns.label.tolist()) == set(range(10))


def test_lightning_resume_from_checkpoint_continues_the_step_count(tmp_path):
    first = compose_train(["debug=fast", "net=unet_tiny", "sampler.steps=3", "trainer.limit_train_batches=3",
                           "callbacks.sample_grid.num_samples=2"], tmp_path / "a")
    train.run(first)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(ckpt)["global_step"] == 3
    second = compose_train(["debug=fast", "net=unet_tiny", "sampler.steps=3", "trainer.limit_train_batches=3",
                            "callbacks.sample_grid.num_samples=2", "trainer.max_epochs=2",
                            f"ckpt_path={ckpt}"], tmp_path / "b")
    train.run(second)
    resumed = read_checkpoint(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 6 and resumed["epoch"] == 1
    assert "averaging_state" in resumed   # the EMA state travelled through the resume


def test_missing_resume_checkpoint(tmp_path):
    cfg = compose_train(["debug=fast", f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path)
    with pytest.raises(UserError, match="ckpt_path=.*nope.ckpt.*no such checkpoint file"):
        train.run(cfg)


def test_configured_ema_is_the_exponential_moving_average_of_the_weights(tmp_path):
    """The EMA callback as configured gives avg <- d avg + (1 - d) theta each step."""
    import copy

    import lightning as L
    from hydra.utils import instantiate

    cfg = compose_train(["net=unet_tiny", "callbacks.ema.decay=0.9"], tmp_path)
    dm = instantiate(cfg.data)
    module = build_module(cfg, dm)
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(copy.deepcopy(pl_module.net.state_dict()))

    ema = instantiate(cfg.callbacks.ema)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, callbacks=[Record(), ema],
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    expected = {k: v.clone() for k, v in seen[0].items()}
    for state in seen[1:]:
        for k in expected:
            if expected[k].is_floating_point():
                expected[k] = 0.9 * expected[k] + 0.1 * state[k]
    got = module.net.state_dict()   # at train end Lightning copies the average into the model
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(got[k], seen[-1][k]) for k in expected)


def test_fd_callback_logs_val_fd(tmp_path):
    cfg = compose_train(["debug=fast", "net=unet_tiny", "callbacks=fd", "sampler.steps=2",
                         "callbacks.sample_grid.num_samples=2", "callbacks.fd_evaluation.every_n_epochs=1",
                         "callbacks.fd_evaluation.num_samples=70", "callbacks.fd_evaluation.steps=2"], tmp_path)
    metrics = train.run(cfg)
    assert metrics["val/fd"] > 0
    assert "val/fd" in (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_lr_multiplier_warms_up_then_follows_the_half_cosine():
    from ddpm_lab.modules.base import LRMultiplier
    m = LRMultiplier(warmup=10, decay="cosine", total=110, final_ratio=0.2)
    assert m(0) == pytest.approx(1 / 11) and m(9) == pytest.approx(10 / 11)
    assert m(10) == pytest.approx(1.0)
    assert m(60) == pytest.approx(0.2 + 0.8 * 0.5)          # half-way: cos(pi/2) = 0
    assert m(110) == pytest.approx(0.2) and m(500) == pytest.approx(0.2)
    assert LRMultiplier(warmup=10)(10_000) == 1.0


@pytest.mark.parametrize("overrides, message", [
    (["optim.decay=linear"], "optim.decay='linear' is not allowed; choose one of: constant, cosine"),
    (["optim.decay=cosine", "optim.final_lr_ratio=2"], r"optim.final_lr_ratio=2 must lie in \[0, 1\]"),
    (["optim.decay=cosine", "trainer.max_epochs=-1", "trainer.max_steps=-1", "trainer.max_time=00:00:00:05"],
     "optim.decay=cosine needs a training length: set optim.decay_steps, trainer.max_steps or trainer.max_epochs"),
])
def test_bad_lr_decay_is_one_clear_error(overrides, message, tmp_path):
    cfg = compose_train(["debug=fast", *overrides], tmp_path)
    with pytest.raises(UserError, match=message):
        train.run(cfg)


def test_the_optimizer_comes_from_optim_and_its_keys(tmp_path):
    """optim.optimizer (a _partial_ torch.optim class) takes lr, weight_decay and betas from optim's
    keys; another class is one override away; an optim without it (a checkpoint's) gives AdamW."""
    from ddpm_lab.data import DigitsDataModule

    def optimizer_of(overrides: list[str], drop: bool = False):
        cfg = compose_train(["net=unet_tiny", *overrides], tmp_path)
        module = build_module(cfg, DigitsDataModule(image_size=16))
        if drop:
            module.optim.pop("optimizer")
        return module.configure_optimizers()["optimizer"]

    for drop in (False, True):
        opt = optimizer_of(["optim.lr=1e-3", "optim.weight_decay=0.01", "optim.betas=[0.8,0.99]"], drop)
        group = opt.param_groups[0]
        assert type(opt) is torch.optim.AdamW and group["initial_lr"] == 1e-3
        assert group["weight_decay"] == 0.01 and tuple(group["betas"]) == (0.8, 0.99)
    sgd = optimizer_of(["optim.lr=0.05", "optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.betas",
                        "+optim.optimizer.momentum=0.9"])
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["initial_lr"] == 0.05
    assert sgd.param_groups[0]["momentum"] == 0.9
