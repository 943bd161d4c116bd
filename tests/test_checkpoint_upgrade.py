"""Checkpoints with the older key names (format 1) load as the checkpoints they were made from: a
pixel model on a zero-terminal-SNR schedule, a latent diffusion model (sampled and resumed) and a
stage-1 autoencoder (as stage 2's `vae.path`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ddpm_lab.autoencoders import from_run
from ddpm_lab.checkpoint_io import FORMAT
from ddpm_lab.modules import AutoencoderModule, DiffusionModule
from ddpm_lab.sample import run as run_sample
from ddpm_lab.train import run
from tests.helpers import compose_app, compose_train
from tests.test_latent import SMALL_DATA, SMALL_VAE, stage2_overrides

PIXEL = ["net=unet_tiny", "logger=csv", "+recipe=v_zero_snr", "data.batch_size=16", "trainer.max_epochs=1",
         "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "sampler.steps=2",
         "callbacks.sample_grid.num_samples=2"]
# the weights' prefix of each kind of module: (current, format 1)
PREFIXES = {"diffusion": ("autoencoder.model.", "vae.vae."), "autoencoder": ("model.", "vae.")}


def last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def in_format_1(run_dir: Path, to: Path) -> Path:
    """A copy of a run folder whose last.ckpt has the key names the code wrote before format 2:
    hyper-parameters `vae` (a diffusion module's autoencoder) and `schedule.rescale_zero_terminal_snr`,
    weights under `vae.vae.` (diffusion) or `vae.` (stage 1)."""
    shutil.copytree(run_dir, to)
    ckpt = torch.load(last(to), map_location="cpu", weights_only=False)
    info, hparams = ckpt["ddpm_lab"], ckpt["hyper_parameters"]
    assert info["format"] == FORMAT == 2
    info["format"] = 1
    if info["kind"] == "diffusion":
        hparams["vae"] = hparams.pop("latent")
        hparams["schedule"]["rescale_zero_terminal_snr"] = hparams["schedule"].pop("zero_terminal_snr")
    new, old = PREFIXES[info["kind"]]
    for key in ("state_dict", "current_model_state"):
        ckpt[key] = {old + k[len(new):] if k.startswith(new) else k: v for k, v in ckpt[key].items()}
    torch.save(ckpt, last(to))
    return to


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def pixel(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, its copy in format 1) of a tiny v-prediction model on a zero-terminal-SNR schedule."""
    root = tmp_path_factory.mktemp("pixel")
    run(compose_train(PIXEL, root / "new"))
    return root / "new", in_format_1(root / "new", root / "old")


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stage1")
    run(compose_train(["experiment=shapes_vae", *SMALL_DATA, *SMALL_VAE], root / "new"))
    return root / "new", in_format_1(root / "new", root / "old")


@pytest.fixture(scope="module")
def stage2(stage1, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run folder, its copy in format 1, latent cache) of latent diffusion on the format-1 stage-1 run."""
    root = tmp_path_factory.mktemp("stage2")
    run(compose_train(stage2_overrides(stage1[1], root / "cache"), root / "new"))
    return root / "new", in_format_1(root / "new", root / "old"), root / "cache"


def test_an_old_pixel_checkpoint_on_a_zero_terminal_snr_schedule_loads_and_samples_the_same(pixel, tmp_path):
    new_dir, old_dir = pixel
    old_hparams = torch.load(last(old_dir), map_location="cpu", weights_only=False)["hyper_parameters"]
    assert old_hparams["schedule"]["rescale_zero_terminal_snr"] is True and "zero_terminal_snr" not in old_hparams["schedule"]
    new, old = DiffusionModule.load(new_dir), DiffusionModule.load(old_dir)
    assert dict(old.hparams) == dict(new.hparams) and old.hparams["schedule"]["zero_terminal_snr"] is True
    assert old.diffusion.schedule.alphas_cumprod[-1] == 0
    assert_same_weights(old, new)
    assert torch.equal(old.sample(4, seed=3), new.sample(4, seed=3))
    assert_same_weights(DiffusionModule.load_from_checkpoint(last(old_dir), weights_only=False), new)

    images = {}
    for name, ckpt in (("new", new_dir), ("old", old_dir)):              # ddpm-sample ckpt_path=...
        run_sample(compose_app("sample", [f"ckpt_path={ckpt}", "num_samples=3", "device=cpu"], tmp_path / name))
        images[name] = torch.load(tmp_path / name / "samples.pt")["images"]
    assert torch.equal(images["old"], images["new"])


def test_an_old_stage1_checkpoint_gives_the_same_autoencoder(stage1, stage2):
    new_dir, old_dir = stage1
    assert_same_weights(from_run(str(old_dir)).model, from_run(str(new_dir)).model)
    assert_same_weights(AutoencoderModule.load_from_checkpoint(last(old_dir), weights_only=False),
                        AutoencoderModule.load_from_checkpoint(last(new_dir), weights_only=False))
    # stage 2 trained on the old run holds the new run's autoencoder
    assert_same_weights(DiffusionModule.load(stage2[0]).autoencoder.model, from_run(str(new_dir)).model)


def test_an_old_latent_checkpoint_loads_samples_and_resumes_the_same(stage1, stage2, tmp_path):
    new_dir, old_dir, cache = stage2
    old_ckpt = torch.load(last(old_dir), map_location="cpu", weights_only=False)
    assert "vae" in old_ckpt["hyper_parameters"] and any(k.startswith("vae.vae.") for k in old_ckpt["state_dict"])
    new, old = DiffusionModule.load(new_dir), DiffusionModule.load(old_dir)
    assert dict(old.hparams) == dict(new.hparams) and old.hparams["latent"]["cached"]
    assert_same_weights(old, new)
    assert torch.equal(old.sample(3, seed=1, prompts="a red circle"), new.sample(3, seed=1, prompts="a red circle"))

    resumed = {}
    for name, run_dir in (("new", new_dir), ("old", old_dir)):          # ddpm-train ckpt_path=<run>
        shutil.copytree(run_dir, tmp_path / name)
        run(compose_train([*stage2_overrides(stage1[1], cache), "trainer.max_epochs=2",
                           f"ckpt_path={tmp_path / name}"], tmp_path / name))
        resumed[name] = torch.load(last(tmp_path / name), map_location="cpu", weights_only=False)
    assert resumed["old"]["global_step"] == resumed["new"]["global_step"] == 4
    assert resumed["old"]["ddpm_lab"]["format"] == FORMAT
    for key in ("state_dict", "current_model_state"):                  # EMA weights, live weights
        assert resumed["old"][key].keys() == resumed["new"][key].keys()
        for name, value in resumed["new"][key].items():
            assert torch.equal(resumed["old"][key][name], value), f"{key}.{name}"
