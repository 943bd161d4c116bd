"""Flow matching through training, resume, ddpm-sample and ddpm-eval: the same paths as DDPM."""

from __future__ import annotations

import re

import pytest
import torch

from ddpm_lab.errors import UserError
from ddpm_lab.evaluate import evaluate
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.sample import run as sample_run
from ddpm_lab.train import run
from tests.helpers import compose_app, compose_train, last_error_line, run_cli
from tests.test_resume import BASE, assert_same_training_state, last

FLOW = ["diffusion=flow", "sampler=flow_euler", "sampler.steps=2", "diffusion.time_sampling=logit_normal"]
STEPS = ["trainer.max_epochs=100"]


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    run(compose_train([*BASE, *FLOW, *STEPS, "trainer.max_steps=10"], out))
    return out


def test_flow_checkpoint_holds_the_flow_process_and_samples(flow_run):
    module = DiffusionModule.load(flow_run)
    assert type(module.diffusion).__name__ == "FlowMatching"
    assert module.sampler.name == "flow_euler"
    images = module.sample(3, steps=3)
    assert images.shape == (3, 1, 16, 16) and torch.isfinite(images).all()
    heun = module.sample(3, sampler="flow_heun", steps=2)
    assert not torch.equal(images, heun)


def test_flow_run_resumed_after_max_steps_equals_the_uninterrupted_run(flow_run, tmp_path):
    run(compose_train([*BASE, *FLOW, *STEPS, "trainer.max_steps=6"], tmp_path))
    run(compose_train([*BASE, *FLOW, *STEPS, "trainer.max_steps=10", f"ckpt_path={tmp_path}"], tmp_path))
    assert_same_training_state(last(flow_run), last(tmp_path))


def test_ddpm_sample_takes_a_flow_checkpoint_with_nothing_else_named(flow_run, tmp_path):
    cfg = compose_app("sample", [f"ckpt_path={flow_run}", "num_samples=4"], tmp_path / "s")
    sample_run(cfg)
    saved = torch.load(next((tmp_path / "s").glob("**/*.pt")), weights_only=False)
    assert saved["sampler"]["name"] == "flow_euler"


@pytest.mark.parametrize("override, key", [
    ("sampler=ddim", "sampler.name=ddim"),
    ("sampler.name=dpmpp_2m", "sampler.name=dpmpp_2m"),
])
def test_a_ddpm_sampler_on_a_flow_checkpoint_is_a_clear_error(flow_run, tmp_path, override, key):
    cfg = compose_app("sample", [f"ckpt_path={flow_run}", "num_samples=4", override], tmp_path / "s")
    with pytest.raises(UserError, match=re.escape(key)):
        sample_run(cfg)
    assert not list((tmp_path / "s").glob("**/*.pt"))


def test_a_flow_sampler_on_a_ddpm_checkpoint_is_a_clear_error_from_the_cli(tiny_checkpoint, tmp_path):
    proc = run_cli("ddpm-sample", f"ckpt_path={tiny_checkpoint}", "sampler=flow_euler",
                   f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "sampler.name=flow_euler" in last_error_line(proc)


def test_ddpm_eval_measures_a_flow_checkpoint(flow_run, tmp_path):
    cfg = compose_app("eval", [f"ckpt_path={flow_run}", "num_samples=80", "sampler.steps=2"], tmp_path / "e")
    result = evaluate(cfg)
    assert result["sampler"]["name"] == "flow_euler" and result["model"]["fd"] > 0


def test_flow_training_with_a_sampler_of_the_other_process_fails_before_any_folder(tmp_path):
    with pytest.raises(UserError, match="sampler.name=ddpm"):
        run(compose_train([*BASE, "diffusion=flow"], tmp_path / "run"))
    assert not (tmp_path / "run").exists()
