"""The restoration tasks (DDNM: super-resolution, denoising, masked inpainting) and editing by
inversion (ddpm_lab/tasks/restore.py, edit.py) on a trained checkpoint and on a module whose
network is an exact Gaussian-mixture denoiser; their config files and rules; bad options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm_lab.config_check.rules import check_value
from ddpm_lab.config_check.tasks import TASK
from ddpm_lab.diffusion.operators import AveragePool
from ddpm_lab.errors import UserError
from ddpm_lab.tasks.base import TaskInputs
from ddpm_lab.tasks.edit import EditByInversion
from ddpm_lab.tasks.restore import Denoise, InpaintDDNM, SuperResolution
from tests.test_ddnm import image_mixture

CONF = Path(__file__).resolve().parent.parent / "conf" / "task"


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from ddpm_lab.data import DigitsDataModule
    from ddpm_lab.modules import DiffusionModule

    module = DiffusionModule.load(tiny_checkpoint)
    dm = DigitsDataModule(image_size=module.image_shape[-1])
    dm.setup("fit")
    val = dm.val_set.columns
    return module, TaskInputs(val.image[:4], val.label[:4])


class MixtureNet(torch.nn.Module):
    """A 4x4 image mixture's exact eps (DDPM) or velocity (flow) as a class-conditional network."""

    def __init__(self, gmm, diffusion):
        super().__init__()
        self.num_classes = len(gmm.weights)
        self.fn = gmm.flow_denoiser(diffusion) if diffusion.__class__.__name__ == "FlowMatching" \
            else gmm.output_fn(diffusion)

    def forward(self, x, t, cond=None):
        return self.fn(x.flatten(1).double(), t, cond).reshape(x.shape).to(x.dtype)


def mixture_module(process: str):
    """A class-conditional DiffusionModule on 4x4 images whose network is exact."""
    from ddpm_lab.modules import DiffusionModule

    diffusion = {"_target_": "ddpm_lab.diffusion.FlowMatching"} if process == "flow" else \
        {"_target_": "ddpm_lab.diffusion.GaussianDiffusion", "prediction": "eps"}
    module = DiffusionModule(
        net={"_target_": "ddpm_lab.nets.MLPDenoiser", "dim": 16, "num_classes": 3},
        schedule={"_target_": "ddpm_lab.diffusion.NoiseSchedule.from_name", "name": "linear", "num_steps": 1000},
        diffusion=diffusion, sampler={"_target_": "ddpm_lab.diffusion.samplers.Sampler", "name": "ddim"},
        data_info={"image_shape": [1, 4, 4], "name": "mixture"},
        guidance={"_target_": "ddpm_lab.diffusion.guidance.Guidance", "condition": "label", "scale": 2.0})
    gmm = image_mixture(4)
    module.net = MixtureNet(gmm, module.diffusion)
    x0, labels = gmm.sample(12, torch.Generator().manual_seed(1))
    return module, gmm, TaskInputs(x0.reshape(-1, 1, 4, 4).clamp(-1, 1).float(), labels)


# ----- restoration on the trained checkpoint ------------------------------------------------------
def test_restoration_tasks_on_a_trained_checkpoint(tiny):
    """x4 super-resolution and masked inpainting keep A x = y (1e-5) on the network's real outputs;
    the known pixels come back exactly; what the method saw is y shown as an image."""
    module, inputs = tiny
    images = inputs.images
    result = SuperResolution(factor=4, steps=3).run(module, inputs, gen())
    assert result.metrics["max_abs_Ax_minus_y"] <= 1e-5
    pool = AveragePool(4)
    assert torch.allclose(result.inputs, pool.pinv(pool.A(images)))
    assert result.results.shape == images.shape and result.results.abs().max() <= 1
    result = InpaintDDNM(mask="bottom_half", steps=3).run(module, inputs, gen())
    assert result.metrics["max_abs_Ax_minus_y"] <= 1e-5
    top = images.shape[-2] // 2
    assert (result.results[..., :top, :] - images[..., :top, :]).abs().max() <= 1e-6
    assert (result.inputs[..., top:, :] == 0).all()
    result = Denoise(sigma=0.5, steps=3).run(module, inputs, gen())
    assert result.metrics == {} and not torch.equal(result.inputs, images)


def test_restoration_errors(tiny):
    module, inputs = tiny
    with pytest.raises(UserError, match="task.factor=3 does not divide the image size 16x16"):
        SuperResolution(factor=3).run(module, inputs, gen())
    with pytest.raises(UserError, match="task.factor=1 must be an integer >= 2"):
        SuperResolution(factor=1)
    with pytest.raises(UserError, match="task.sigma=-0.5 must be a number >= 0"):
        Denoise(sigma=-0.5)
    with pytest.raises(UserError, match="task.eta=0 with task.sigma=1.0"):
        Denoise(sigma=1.0, eta=0.0)
    with pytest.raises(UserError, match="task.steps=5000 must be an integer in \\[1, 1000\\]"):
        SuperResolution(steps=5000).run(module, inputs, gen())
    with pytest.raises(UserError, match="input images of shape \\(1, 8, 8\\); this checkpoint's images are"):
        SuperResolution(factor=2).run(module, TaskInputs(torch.zeros(2, 1, 8, 8)), gen())
    with pytest.raises(UserError, match="mask: not allowed|mask='diagonal' is not allowed"):
        InpaintDDNM(mask="diagonal").run(module, inputs, gen())


def latent_module():
    """A class-conditional latent DiffusionModule (untrained): 3x8x8 images, 4x4x4 latents."""
    from ddpm_lab.autoencoders import autoencoder_kl
    from ddpm_lab.modules import DiffusionModule

    kl = autoencoder_kl(image_size=8, in_channels=3, downsample=2, base_channels=8, norm_num_groups=4)
    net = {"_target_": "ddpm_lab.nets.UNet", "image_size": 4, "in_channels": 4, "base_channels": 8,
           "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1, "norm_groups": 4,
           "num_classes": 3}
    return DiffusionModule(
        net=net, schedule={"_target_": "ddpm_lab.diffusion.NoiseSchedule.from_name", "name": "linear", "num_steps": 1000},
        diffusion={"_target_": "ddpm_lab.diffusion.GaussianDiffusion"},
        sampler={"_target_": "ddpm_lab.diffusion.samplers.Sampler", "name": "ddim", "clip_x0": False},
        data_info={"image_shape": [3, 8, 8]}, guidance={"_target_": "ddpm_lab.diffusion.guidance.Guidance",
                                                         "condition": "label", "scale": 2.0},
        latent={"config": dict(kl.config), "scale": 0.7, "shift": 0.1, "source": "test", "cached": True}).eval()


def test_latent_checkpoints_edit_but_do_not_restore():
    """Editing inverts the image's VAE latent and decodes the regeneration; DDNM refuses latents."""
    module = latent_module()
    inputs = TaskInputs(torch.rand(2, 3, 8, 8, generator=gen()) * 2 - 1, torch.tensor([0, 2]))
    result = EditByInversion(target="next", steps=3).run(module, inputs, gen())
    assert result.results.shape == (2, 3, 8, 8) and torch.equal(result.target_labels, torch.tensor([1, 0]))
    with pytest.raises(UserError, match="latent diffusion checkpoint; DDNM's operator A acts on pixels"):
        SuperResolution(factor=2).run(module, inputs, gen())


# ----- editing by inversion ------------------------------------------------------------------------
@pytest.mark.parametrize("process", ["ddpm", "flow"])
def test_edit_round_trip_and_class_swap(process):
    """With an exact class-conditional denoiser: regenerating under the image's own class returns
    it (PSNR >= 25 dB at 50 steps); under the next class the result belongs to that class."""
    module, gmm, inputs = mixture_module(process)
    same = EditByInversion(target="same", guidance_scale=1.0, steps=50, t0=1.0, clip_x0=False).run(module, inputs, gen())
    psnr = 10 * math.log10(4.0 / ((same.results - inputs.images) ** 2).mean().item())
    assert psnr >= 25, psnr
    assert torch.equal(same.target_labels, inputs.labels)
    swap = EditByInversion(target="next", steps=50, t0=1.0, clip_x0=False).run(module, inputs, gen())
    expected = (inputs.labels + 1) % 3
    assert torch.equal(swap.target_labels, expected) and swap.metrics["guidance_scale"] == 2.0
    assert (gmm.classify(swap.results.flatten(1).double()) == expected).float().mean() >= 0.75
    one = EditByInversion(label=2, steps=10).run(module, inputs, gen())
    assert (one.target_labels == 2).all()
    # inverted only half way: the round trip still returns the image, and the swap stays nearer the
    # source than the one from noise
    half_same = EditByInversion(target="same", guidance_scale=1.0, steps=50, t0=0.5, clip_x0=False).run(
        module, inputs, gen())
    assert 10 * math.log10(4.0 / ((half_same.results - inputs.images) ** 2).mean().item()) >= 25
    half = EditByInversion(target="next", steps=50, t0=0.5, clip_x0=False).run(module, inputs, gen())
    assert half.metrics["t0"] == 0.5 and half.metrics["mean_l2_to_source"] < swap.metrics["mean_l2_to_source"]
    assert one.metrics["t0"] == 0.5 and one.metrics["clip_x0"] == module.sampler.clip_x0   # the defaults


def test_edit_errors(tiny):
    module, inputs = tiny
    with pytest.raises(UserError, match="this checkpoint is unconditional"):
        EditByInversion(target="next").run(module, inputs, gen())
    with pytest.raises(UserError, match="give exactly one of task.label, task.prompt or task.target"):
        EditByInversion(label=1, target="next")
    with pytest.raises(UserError, match="task.target='prev' is not allowed"):
        EditByInversion(target="prev")
    conditional, _, mixture_inputs = mixture_module("ddpm")
    with pytest.raises(UserError, match="label=7 is outside the 3 classes"):
        EditByInversion(label=7).run(conditional, mixture_inputs, gen())
    with pytest.raises(UserError, match="task.target=next maps each image's label"):
        EditByInversion(target="next").run(conditional, TaskInputs(mixture_inputs.images), gen())
    with pytest.raises(UserError, match="prompt='a red circle': this checkpoint is conditioned on class labels"):
        EditByInversion(prompt="a red circle").run(conditional, mixture_inputs, gen())


# ----- configs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("superres", SuperResolution), ("denoise", Denoise),
                                       ("inpaint_ddnm", InpaintDDNM), ("edit", EditByInversion)])
def test_task_configs_build_their_class_and_pass_their_rules(name, cls):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    check_value(TASK, "task", cfg)
    assert isinstance(instantiate(cfg), cls)


@pytest.mark.parametrize("name, change, message", [
    ("superres", {"factor": 1}, "task.factor=1"),
    ("superres", {"scale": 2}, "task"),
    ("denoise", {"sigma": -1}, "task.sigma=-1"),
    ("denoise", {"eta": 2}, "task.eta=2"),
    ("inpaint_ddnm", {"known_fraction": 1.5}, "task.known_fraction=1.5"),
    ("edit", {"target": "prev"}, "task.target='prev' is not allowed"),
    ("edit", {"label": -1}, "task.label=-1"),
    ("edit", {"steps": 0}, "task.steps=0"),
])
def test_task_rules_name_the_bad_key(name, change, message):
    cfg = {**OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")), **change}
    with pytest.raises(UserError, match=message.replace(".", "\\.").replace("(", "\\(")):
        check_value(TASK, "task", cfg)
