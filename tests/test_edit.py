"""ddpm-edit: SDEdit's start from t0, the app end to end on the tiny checkpoint (inpainting keeps
the known pixels exactly), and bad input as one line with exit status 2 through the CLI path."""

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lab.diffusion import FlowMatching, GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.samplers import Trajectory
from ddpm_lab.diffusion.samplers.start import grid_from, noise_to, start_time
from ddpm_lab.diffusion.sdedit import sdedit
from ddpm_lab.edit import main, run
from ddpm_lab.errors import UserError
from ddpm_lab.tasks.inpaint import check_pixel_ddpm
from ddpm_lab.tasks.masks import make_mask
from ddpm_lab.tasks.sdedit import stroke_painting
from tests.helpers import compose_app
from tests.test_samplers_vs_diffusers import toy_model


@pytest.fixture(scope="module")
def ddpm():
    return GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))


def test_noising_to_t0_is_q_xt_given_x0(ddpm):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)
    assert start_time(ddpm, 0.5) == 499 and start_time(ddpm, 1.0) == 999 and start_time(ddpm, 1e-4) == -1
    torch.testing.assert_close(noise_to(ddpm, x0, 499, noise), ddpm.q_sample(x0, torch.full((4,), 499), noise))
    flow = FlowMatching()
    assert start_time(flow, 0.3) == 0.3
    torch.testing.assert_close(noise_to(flow, x0, 0.3, noise), flow.q_sample(x0, 0.3, noise))
    # the mean and variance of the draw are those of q(x_t | x_0) = N(sqrt(abar) x0, 1 - abar)
    draws = noise_to(ddpm, torch.full((20000,), 0.7), 299, torch.randn(20000, generator=g))
    abar = ddpm.alphas_cumprod[299].item()
    assert abs(draws.mean() - 0.7 * abar ** 0.5) < 0.02 and abs(draws.var() - (1 - abar)) < 0.02


def test_t0_is_the_vp_sde_time_of_the_sdedit_paper():
    """On the linear schedule (beta 1e-4 to 0.02, T = 1000) the start timestep of t0 has the abar of
    the VP-SDE at time t0 (beta_min 0.1, beta_max 20; SDEdit's VP setting):
    abar(t0) = exp(-t0^2 (beta_max - beta_min) / 2 - t0 beta_min)."""
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    for t0 in (0.1, 0.3, 0.5, 0.7, 1.0):
        vp = math.exp(-0.5 * t0 ** 2 * (20 - 0.1) - t0 * 0.1)
        assert abs(float(diffusion.alphas_cumprod[start_time(diffusion, t0)]) / vp - 1) < 0.07, t0


def test_sdedit_starts_at_t0_on_the_samplers_grid(ddpm):
    guide = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    traj = Trajectory()
    sdedit(toy_model, guide, ddpm, 0.5, torch.Generator().manual_seed(2), sampler="ddim", steps=50, callback=traj)
    assert traj.times[0] == 499 and traj.times[-1] == -1
    assert traj.times[1:-1] == [t for t in range(480, -1, -20)]        # DDIM's leading grid below t0
    assert grid_from([999, 500, 0, -1], -1) == [-1] and grid_from([1.0, 0.5, 0.0], 0.5) == [0.5, 0.0]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_sdedit_at_t0_near_zero_returns_the_guide(ddpm, sampler):
    guide = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    out = sdedit(toy_model, guide, ddpm, 1e-4, torch.Generator().manual_seed(0), sampler=sampler, steps=20)
    assert torch.equal(out, guide)
    flow_out = sdedit(toy_model, guide, FlowMatching(), 1e-4, torch.Generator().manual_seed(0),
                      sampler="flow_euler", steps=20)
    assert (flow_out - guide).abs().max() < 1e-3          # one Euler step of length 1e-4
    far = sdedit(toy_model, guide, ddpm, 1.0, torch.Generator().manual_seed(0), sampler=sampler, steps=20)
    assert (far - guide).abs().mean() > 0.1


def test_stroke_painting_is_flat_and_quantised():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    p = stroke_painting(x, 4, 3)
    assert set(p.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(p, p[..., ::4, ::4].repeat_interleave(4, -1).repeat_interleave(4, -2))


def test_inpainting_refuses_flow_and_latent_checkpoints():
    base = dict(is_video=False, image_shape=(1, 16, 16), autoencoder=None)
    with pytest.raises(UserError, match="needs a DDPM checkpoint .* this one is flow matching - use task=sdedit"):
        check_pixel_ddpm(SimpleNamespace(**base, diffusion=FlowMatching()), "inpainting (RePaint)")
    with pytest.raises(UserError, match="latent checkpoint"):
        check_pixel_ddpm(SimpleNamespace(**{**base, "autoencoder": object()}, diffusion=None), "inpainting")


def test_edit_inpaint_end_to_end_keeps_known_pixels(tiny_checkpoint, tmp_path):
    cfg = compose_app("edit", [f"ckpt_path={tiny_checkpoint}", "num_images=6", "task=inpaint", "task.mask=center",
                               "task.steps=8", "task.jump_length=2", "task.jump_n_sample=2"], tmp_path)
    record = run(cfg)
    for name in ("inputs.png", "results.png", "figure.png", "results.pt", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert {"psnr", "psnr_input", "accuracy", "accuracy_input", "accuracy_truth", "task_metrics"} <= set(saved)
    assert saved["task_metrics"]["model_calls_per_image"] == 14 and saved["num_images"] == 6
    out = torch.load(tmp_path / "results.pt")
    known = make_mask("center", (16, 16))
    assert (out["results"] - out["truth"])[..., known].abs().max() <= 1e-6
    assert (out["results"] - out["truth"])[..., ~known].abs().max() > 0.1
    assert (out["inputs"][..., ~known] == 0).all()


def test_edit_sdedit_on_an_image_folder(tiny_checkpoint, tmp_path):
    for label in ("0", "1"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 20, 3), 60 * i + 100 * int(label), np.uint8)).save(
                tmp_path / "imgs" / label / f"{i}.png")
    cfg = compose_app("edit", [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'imgs'}", "task=sdedit",
                               "task.t0=0.2", "task.corrupt=stroke", "task.sampler=ddim", "task.steps=10"],
                      tmp_path / "e")
    record = run(cfg)
    out = torch.load(tmp_path / "e" / "results.pt")
    assert out["truth"].shape == (4, 1, 16, 16) and out["labels"].tolist() == [0, 0, 1, 1]
    assert record["task_metrics"]["t0"] == 0.2 and "accuracy" in record


@pytest.mark.parametrize("args, message", [
    (["ckpt_path={missing}"], "ckpt_path"),
    (["input={missing}"], "input="),
    (["input={empty}"], "holds no images"),
    (["task.mask=diagonal"], "task.mask='diagonal' must be one of bottom_half, left_half, center, random_pixels"),
    (["task=sdedit", "task.t0=1.5"], "task.t0=1.5 must lie in (0, 1]"),
    (["task=nonexistent"], "task='nonexistent' is not allowed; choose one of: denoise, edit, inpaint, inpaint_ddnm, sdedit, superres"),
])
def test_edit_bad_input_is_one_line_and_exit_2(tiny_checkpoint, tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty"}
    argv = [f"ckpt_path={tiny_checkpoint}", *[a.format(**paths) for a in args], f"hydra.run.dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", ["ddpm-edit", *argv])
    with pytest.raises(SystemExit) as stop:
        main()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("ddpm-edit: error: ") and message.format(**paths) in err[0], err
    assert not (tmp_path / "run" / "metrics.json").exists()
