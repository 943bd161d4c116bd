"""Config blocks stated once in conf/: the v-prediction / zero-terminal-SNR / min-SNR recipe that
experiments pull in (conf/recipe/v_zero_snr.yaml), and the sampling keys ddpm-sample and
ddpm-eval share (conf/shared/checkpoint_sampling.yaml). Each composes into every config that
uses it, and nothing repeats it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ddpm_lab.cli import CONF_DIR
from ddpm_lab.runs import flat

CONF = Path(CONF_DIR)
RECIPE = "/recipe: v_zero_snr"
RECIPE_USERS = {"digits_v_zero_snr", "shapes_cfg", "shapes_text"}     # shapes_ldm: through shapes_text


def composed(app: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose(app, overrides=overrides), resolve=False)


def shared_values(name: str) -> dict:
    values = yaml.safe_load((CONF / name).read_text())
    values.pop("defaults", None)
    return flat(values)


def test_the_recipe_is_in_one_file_that_the_experiments_name():
    texts = {p.stem: p.read_text() for p in (CONF / "experiment").glob("*.yaml")}
    assert {name for name, text in texts.items() if RECIPE in text} == RECIPE_USERS
    for name, text in texts.items():
        for part in ("zero_terminal_snr", "loss_weighting", "min_snr_gamma", "prediction:", "spacing:"):
            assert part not in text, f"experiment/{name}.yaml repeats {part} (recipe/v_zero_snr.yaml has it)"


@pytest.mark.parametrize("name", ["moving_shapes_flow", "moving_shapes_wan", "moving_shapes_ldm"])
def test_the_video_experiments_predict_x0_with_the_velocity_loss(name):
    cfg = flat(composed("train", [f"experiment={name}"]))
    assert (cfg["diffusion.prediction"], cfg["diffusion.loss_weighting"]) == ("x0", "velocity")
    assert cfg["diffusion._target_"].endswith("FlowMatching") and cfg["net.position_embedding"] is True


@pytest.mark.parametrize("overrides", [[f"experiment={name}"] for name in sorted(RECIPE_USERS | {"shapes_ldm"})]
                         + [["experiment=digits_ddpm", "+recipe=v_zero_snr"]])
def test_recipe_users_compose_the_recipe(overrides):
    cfg = flat(composed("train", overrides))
    for key, value in shared_values("recipe/v_zero_snr.yaml").items():
        assert cfg[key] == value, key
    assert cfg["sampler.name"] == "dpmpp_2m" and cfg["schedule.name"] == "linear"


SAMPLING = ["seed", "device", "label", "guidance.scale", "guidance.rescale", "prediction",
            *(f"sampler.{k}" for k in ("name", "steps", "eta", "spacing", "variance", "clip_x0", "scheduler", "shift",
                                       "use_clipped_model_output", "times"))]
NLL_KEYS = ("exact", "draws", "t_sampling", "num_images", "variance", "clip_x0", "batch_size")
OWN_KEYS = {
    "sample": ["task_name", "ckpt_path", "num_samples", "batch_size", "prompt", "trajectory", "trajectory_rows",
               "trajectory_frames", "format", "fps", "first_frame"],
    "eval": ["task_name", "ckpt_path", "num_samples", "batch_size", "metrics", "kid_subset_size", "feature",
             "inception_weights", "guidance.scales", *[f"nll.{k}" for k in NLL_KEYS],
             *[f"classify.{k}" for k in ("draws", "num_images", "batch_size")]],
}


@pytest.mark.parametrize("app", ["sample", "eval"])
def test_sample_and_eval_compose_the_shared_sampling_keys(app):
    cfg = flat(composed(app, ["ckpt_path=x"]))
    assert set(cfg) == {*SAMPLING, *OWN_KEYS[app], "paths.log_dir", "paths.output_dir"}
    assert {k: cfg[k] for k in SAMPLING} == shared_values("shared/checkpoint_sampling.yaml")
    assert cfg["seed"] == 0 and cfg["device"] == "auto" and cfg["sampler.name"] is None
    preset = flat(composed(app, ["ckpt_path=x", "sampler=ddim"]))          # a preset goes over the nulls
    assert preset["sampler.name"] == "ddim" and preset["sampler.steps"] == 50
