"""diffusers both ways: our UNet <-> UNet2DModel (the weight map), ddpm-export to a DDPMPipeline /
DDIMPipeline folder that diffusers alone samples as ddpm-sample does, and diffusers folders
sampled, imported (ddpm-import) and used as initial weights (ddpm-train init_from)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel
from omegaconf import OmegaConf

from ddpm_lab.checkpoint_io import read_checkpoint
from ddpm_lab.diffusers_export import export_pipeline
from ddpm_lab.evaluate import evaluate
from ddpm_lab.export import run as export
from ddpm_lab.export import run_import
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.nets import UNet
from ddpm_lab.nets.unet_diffusers_map import (
    diffusers_config,
    unet_from_diffusers,
    unet_to_diffusers,
)
from ddpm_lab.pretrained import load_initial_weights, load_model
from ddpm_lab.sample import run as sample
from ddpm_lab.train import run as train
from tests.helpers import REPO, compose_app, compose_train, user_error

# google/ddpm-cifar10-32's unet/config.json (the DDPM authors' network as diffusers converted it)
GOOGLE_CIFAR10 = {"block_out_channels": (128, 256, 256, 256), "layers_per_block": 2,
                  "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                  "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False,
                  "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 32, "act_fn": "silu",
                  "time_embedding_type": "positional", "center_input_sample": False,
                  "mid_block_scale_factor": 1, "sample_size": 32, "in_channels": 3, "out_channels": 3}
# a UNet2DModel of net=unet_tiny's structure (16x16 grey images)
TINY_DIFFUSERS = {"sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": (16, 32),
                  "down_block_types": ("DownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "UpBlock2D"),
                  "layers_per_block": 1, "attention_head_dim": None, "downsample_padding": 1,
                  "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6, "norm_num_groups": 8}


def net_config(name: str, image_size: int, channels: int, **changes) -> dict:
    cfg = OmegaConf.load(REPO / "conf" / "net" / f"{name}.yaml")
    cfg.image_size, cfg.in_channels = image_size, channels
    return {**OmegaConf.to_container(cfg), **changes}


def build_net(cfg: dict) -> UNet:
    return UNet(**{k: v for k, v in cfg.items() if k != "_target_"}).eval()


@pytest.mark.parametrize("name, size, channels, changes", [
    ("unet_ddpm_cifar10", 32, 3, {}),
    ("unet_small", 16, 1, {"num_classes": 10}),         # attention at 4x4, a class embedding
])
def test_weight_map_round_trip(name, size, channels, changes):
    torch.manual_seed(0)
    ours = build_net(net_config(name, size, channels, **changes))
    theirs = unet_to_diffusers(ours)
    if name == "unet_ddpm_cifar10":
        assert {k: theirs.config[k] for k in GOOGLE_CIFAR10} == GOOGLE_CIFAR10
        assert sum(p.numel() for p in theirs.parameters()) == 35_746_307
    x, t = torch.randn(2, channels, size, size), torch.tensor([0, 937])
    labels = torch.tensor([3, 10]) if changes else None          # 10: the null class
    with torch.no_grad():
        a, b = ours(x, t, labels), theirs(x, t, class_labels=labels).sample
    assert a.abs().mean() > 1e-2
    assert (a - b).abs().max() < 1e-5
    # and back: the same structure and the very same tensors, so the same outputs
    back = unet_from_diffusers(theirs)
    assert back.architecture == ours.architecture
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


def test_text_unet_does_not_map():
    cfg = net_config("unet_tiny", 16, 1, text={"max_tokens": 4, "dim": 8, "layers": 1, "heads": 1,
                                              "vocabulary": ["red", "blue"]})
    with user_error("cross-attention, which diffusers' UNet2DModel lacks"):
        diffusers_config(build_net(cfg))


def test_export_samples_the_same_images(tiny_checkpoint, tmp_path):
    """ddpm-export of the tiny digits model: DDPMPipeline.from_pretrained with diffusers alone, given
    the generator ddpm-sample seeds (the same x_T and the same per-step noise), makes its images;
    ddpm-sample ckpt_path=<the folder> samples them too."""
    out = tmp_path / "pipeline"
    export(compose_app("export", [f"ckpt_path={tiny_checkpoint}", f"out={out}"], tmp_path / "o"))
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    seed, steps, n = 3, 5, 4
    ours = torch.load(sample(compose_app("sample", [f"ckpt_path={tiny_checkpoint}", f"num_samples={n}",
                                                    f"seed={seed}", f"sampler.steps={steps}"], tmp_path / "s1"))
                      ["tensors"])["images"]
    pipe = DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=n, generator=torch.Generator().manual_seed(seed * 1_000_003),
                  num_inference_steps=steps, output_type="pt").images
    assert ours.std() > 0.1
    assert ((ours + 1) / 2 - theirs).abs().max() < 1e-4
    again = torch.load(sample(compose_app("sample", [f"ckpt_path={out}", f"num_samples={n}", f"seed={seed}",
                                                     f"sampler.steps={steps}"], tmp_path / "s2"))["tensors"])["images"]
    assert (again - ours).abs().max() < 1e-5


def random_module(sampler: dict, prediction: str, schedule: str = "linear", diffusion: dict | None = None,
                  net: str = "unet_tiny", **kwargs) -> DiffusionModule:
    torch.manual_seed(1)
    return DiffusionModule(
        net=net_config(net, 16, 1), data_info={"name": "digits", "image_shape": [1, 16, 16]},
        schedule={"_target_": "ddpm_lab.diffusion.NoiseSchedule.from_name", "name": schedule, "num_steps": 100},
        diffusion=diffusion or {"_target_": "ddpm_lab.diffusion.GaussianDiffusion", "prediction": prediction},
        sampler={"_target_": "ddpm_lab.diffusion.samplers.Sampler", **sampler}, **kwargs).eval()


@pytest.mark.parametrize("sampler, prediction, schedule, net", [
    ({"name": "ddim", "steps": 4, "eta": 0.0}, "v", "cosine", "unet_tiny"),      # deterministic: x_T alone
    ({"name": "ddpm", "steps": 4, "variance": "fixed_large", "spacing": "linspace", "clip_x0": False}, "x0",
     "linear", "unet_tiny"),
    ({"name": "ddpm", "steps": 3}, "eps", "linear", "diffusers_unet2d"),           # the UNet2DModel adapter
])
def test_exported_scheduler_samples_as_ours(tmp_path, sampler, prediction, schedule, net):
    """The exported scheduler holds our betas, prediction type, spacing, variance and clipping; the
    folder samples the same in ddpm_lab again."""
    module = random_module(sampler, prediction, schedule, net=net)
    export_pipeline(module).save_pretrained(tmp_path)
    pipe = (DDIMPipeline if sampler["name"] == "ddim" else DDPMPipeline).from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    ours = module.sample(3, seed=5)
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(5 * 1_000_003),
                  num_inference_steps=sampler["steps"], output_type="pt").images
    assert ((ours + 1) / 2 - theirs).abs().max() < 1e-4
    again = load_model(tmp_path)
    # a scheduler config holds no number of steps: ddpm_lab's default for the sampler (DDPM all, DDIM 50)
    assert type(again.net) is type(module.net) and again.sampler.replace(steps=sampler["steps"]) == module.sampler
    assert (again.sample(3, seed=5, steps=sampler["steps"]) - ours).abs().max() < 1e-5


@pytest.mark.parametrize("change, message", [
    ({"diffusion": {"_target_": "ddpm_lab.diffusion.FlowMatching"}, "sampler": {"name": "flow_euler"}},
     "flow-matching model"),
    ({"guidance": {"_target_": "ddpm_lab.diffusion.guidance.Guidance", "condition": "label"}},
     "label-conditional"),
])
def test_export_of_what_diffusers_cannot_hold(change, message):
    module = random_module(change.pop("sampler", {"name": "ddpm"}), "v", **change)
    with user_error(message):
        export_pipeline(module)


def test_export_does_not_overwrite(tiny_checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with user_error("exists and is not empty; give a new folder, or overwrite=true"):
        export(compose_app("export", [f"ckpt_path={tiny_checkpoint}", f"out={out}"], tmp_path / "o"))
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    export(compose_app("export", [f"ckpt_path={tiny_checkpoint}", f"out={out}", "overwrite=true"], tmp_path / "o"))
    assert (out / "model_index.json").is_file() and not (out / "notes.txt").exists()


def test_import_samples_and_starts_fine_tuning(tmp_path):
    """A DDPMPipeline folder of a random UNet2DModel: ddpm-import writes a checkpoint that samples what
    the pipeline samples, and whose weights a net=unet_tiny run starts from."""
    torch.manual_seed(2)
    folder = tmp_path / "pipe"
    scheduler = DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    DDPMPipeline(unet=UNet2DModel(**TINY_DIFFUSERS), scheduler=scheduler).save_pretrained(folder)
    ckpt = tmp_path / "imported.ckpt"
    run_import(compose_app("import", [f"folder={folder}", f"out={ckpt}", "data=digits"], tmp_path / "o"))
    hparams = read_checkpoint(ckpt)["hyper_parameters"]
    assert hparams["schedule"]["name"] == "cosine" and hparams["data_info"]["data"]["_target_"].endswith("DigitsDataModule")
    ours = torch.load(sample(compose_app("sample", [f"ckpt_path={ckpt}", "num_samples=3", "seed=4",
                                                    "sampler.steps=3"], tmp_path / "s"))["tensors"])["images"]
    pipe = DDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, generator=torch.Generator().manual_seed(4 * 1_000_003), num_inference_steps=3,
                  output_type="pt").images
    assert ((ours + 1) / 2 - theirs).abs().max() < 1e-4
    fd = evaluate(compose_app("eval", [f"ckpt_path={ckpt}", "num_samples=70", "batch_size=70", "metrics=[fd]",
                                       "sampler.steps=2"], tmp_path / "e"))["model"]["fd"]
    assert fd > 0
    with user_error("names no data set to compare its samples with"):
        evaluate(compose_app("eval", [f"ckpt_path={folder}"], tmp_path / "e2"))
    net = build_net(net_config("unet_tiny", 16, 1))
    load_initial_weights(net, ckpt, "unet_tiny")
    module = DiffusionModule.load(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), module.net.state_dict().values(),
                                                 strict=True))
    train(compose_train(["debug=fast", "net=unet_tiny", f"init_from={folder}", "++trainer.fast_dev_run=true",
                         "logger=csv"], tmp_path / "tune"))
    with user_error("its network does not fit net=unet_small"):
        load_initial_weights(build_net(net_config("unet_small", 16, 1)), folder, "unet_small")
    with user_error("exists; give a new file, or overwrite=true"):
        run_import(compose_app("import", [f"folder={folder}", f"out={ckpt}"], tmp_path / "o"))


def test_not_a_diffusers_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("x")
    with user_error("is not a diffusers pipeline or model folder (no model_index.json or config.json)"):
        run_import(compose_app("import", [f"folder={tmp_path / 'stuff'}", f"out={tmp_path / 'a.ckpt'}"], tmp_path))
    with user_error("not a diffusers pipeline or model folder either"):
        sample(compose_app("sample", [f"ckpt_path={tmp_path / 'stuff'}"], tmp_path / "s"))
