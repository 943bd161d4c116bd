"""Training through Hydra + Lightning: every experiment config, checkpoints, EMA, data modules."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm_lab import train
from ddpm_lab.checkpoints import load_module, read_checkpoint
from ddpm_lab.cli import CONF_DIR
from ddpm_lab.errors import UserError
from tests.helpers import QUICK, compose_train

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", "++trainer.fast_dev_run=true", *QUICK], tmp_path)
    metrics = train.run(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))


def test_debug_fast_writes_checkpoints_samples_and_logs(tmp_path):
    cfg = compose_train(["debug=fast", "net=unet_tiny", "sampler.steps=5"], tmp_path)
    metrics = train.run(cfg)
    assert metrics["val/loss"] > 0
    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2  # last + best val
    assert list((tmp_path / "samples").glob("epoch*.png"))
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    hp = ckpt["hyper_parameters"]
    assert hp["schedule"]["name"] == "linear" and hp["diffusion"]["prediction"] == "eps"
    assert hp["data_info"]["image_shape"] == [1, 16, 16] and hp["data_info"]["num_classes"] == 10
    # EMA (Lightning's EMAWeightAveraging): the checkpoint's weights are the average, not the raw ones
    raw, ema = ckpt["current_model_state"], ckpt["state_dict"]
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)
    module = load_module(tmp_path / "checkpoints" / "last.ckpt")
    images = module.sample(3, seed=0, steps=4)
    assert images.shape == (3, 1, 16, 16) and images.abs().max() <= 1


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
    x, y = dm.train_set[0]
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
    torch.testing.assert_close(a.val_set.tensors[0], b.val_set.tensors[0])
    x = a.train_set.tensors[0]
    assert x.shape[1:] == (1, 16, 16) and x.min() == -1 and x.max() <= 1
    assert set(a.train_set.tensors[1].tolist()) == set(range(10))
