"""Text-to-video end to end: training on moving shapes, exact resume, ddpm-sample's clip files,
image-to-video, ddpm-eval's video judge, and the mistakes a user can make with clips."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from ddpm_lab.errors import UserError
from ddpm_lab.evaluate import evaluate
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.sample import run as sample_run
from ddpm_lab.train import run
from tests.helpers import compose_app, compose_train
from tests.test_resume import assert_same_training_state, last

FRAMES = 4
VIDEO = ["experiment=moving_shapes_flow", "logger=csv", "data.num_clips=64", "data.batch_size=8",
         f"data.frames={FRAMES}", "net.dim=48", "net.depth=2", "net.heads=2", "net.text.dim=32",
         "net.text.layers=1", "trainer.limit_val_batches=1", "trainer.max_epochs=100", "sampler.steps=2",
         "callbacks.sample_grid.num_samples=2", "callbacks.sample_grid.every_n_epochs=0", "optim.warmup_steps=2",
         "+image_to_video.p_first_frame=0.5"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("video")
    run(compose_train([*VIDEO, "trainer.max_steps=6"], out))
    return out


def test_video_checkpoint_samples_clips_and_the_final_gif(video_run):
    module = DiffusionModule.load(video_run)
    assert module.is_video and module.image_shape == (3, FRAMES, 16, 16)
    clips = module.sample(2, prompts="a red square moving up fast", steps=2)
    assert clips.shape == (2, 3, FRAMES, 16, 16) and clips.abs().max() <= 1
    gif = Image.open(video_run / "samples" / "final.gif")
    assert gif.n_frames == FRAMES


def test_video_run_resumed_after_max_steps_equals_the_uninterrupted_run(video_run, tmp_path):
    run(compose_train([*VIDEO, "trainer.max_steps=3"], tmp_path))
    run(compose_train([*VIDEO, "trainer.max_steps=6", f"ckpt_path={tmp_path}"], tmp_path))
    assert_same_training_state(last(video_run), last(tmp_path))


def test_ddpm_sample_writes_a_gif_per_clip_a_grid_and_a_frame_strip(video_run, tmp_path):
    prompts = ["a red square moving up fast", "a blue circle moving left"]
    out = sample_run(compose_app("sample", [f"ckpt_path={video_run}", "num_samples=4", f"prompt={prompts}",
                                            "fps=5"], tmp_path))
    gifs = sorted((tmp_path / "clips").glob("*.gif"))
    assert [g.name for g in gifs] == [f"clip_{i:03d}.gif" for i in range(4)]
    assert all(Image.open(g).n_frames == FRAMES for g in gifs)
    grid = Image.open(out["grid"])
    assert grid.n_frames == FRAMES and grid.info["duration"] == 200
    assert grid.size == (2 * (64 + 2) + 2, 2 * (64 + 2) + 2)       # 2 prompts x 2 seeds, upscaled 4x
    assert Image.open(out["frames"]).size == (FRAMES * (64 + 2) + 2, 4 * (64 + 2) + 2)
    saved = torch.load(out["tensors"], weights_only=False)
    assert saved["images"].shape == (4, 3, FRAMES, 16, 16) and saved["fps"] == 5


def test_image_to_video_starts_from_the_given_frame(video_run, tmp_path):
    module = DiffusionModule.load(video_run)
    frame = torch.rand(1, 3, 16, 16) * 2 - 1
    with_frame = module.sample_outputs(2, prompts="a red circle", first_frames=frame, steps=2)["images"]
    without = module.sample_outputs(2, prompts="a red circle", steps=2)["images"]
    assert not torch.equal(with_frame, without)
    Image.fromarray(((frame[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()).save(tmp_path / "f.png")
    out = sample_run(compose_app("sample", [f"ckpt_path={video_run}", "num_samples=2", "prompt=a red circle",
                                            f"first_frame={tmp_path / 'f.png'}"], tmp_path / "s"))
    saved = torch.load(out["tensors"], weights_only=False)
    assert (saved["first_frames"] - frame).abs().max() < 1 / 127
    data = sample_run(compose_app("sample", [f"ckpt_path={video_run}", "num_samples=2", "first_frame=data"],
                                  tmp_path / "d"))
    assert torch.load(data["tensors"], weights_only=False)["first_frames"].shape == (2, 3, 16, 16)


@pytest.mark.parametrize("overrides, message", [
    (["prompt=a purple circle moving left"], "unknown word(s) 'purple'"),
    (["first_frame=/no/such.png"], "first_frame='/no/such.png': not a readable image file"),
])
def test_bad_video_sampling_input_is_one_clear_error(video_run, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sample_run(compose_app("sample", [f"ckpt_path={video_run}", "num_samples=2", *overrides], tmp_path))
    assert not (tmp_path / "samples.pt").exists()


def test_mp4_without_the_extra_writes_nothing(video_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(UserError, match=r"format=mp4 needs the optional video extra"):
        sample_run(compose_app("sample", [f"ckpt_path={video_run}", "num_samples=2", "format=mp4"], tmp_path))
    assert not list(tmp_path.glob("**/*.pt")) and not list(tmp_path.glob("**/*.gif"))


@pytest.mark.parametrize("option", ["format=gif", "fps=4", "first_frame=data"])
def test_video_options_on_an_image_checkpoint_are_refused(tiny_checkpoint, tmp_path, option):
    with pytest.raises(UserError, match=f"{option.split('=')[0]}=.*this checkpoint samples images"):
        sample_run(compose_app("sample", [f"ckpt_path={tiny_checkpoint}", "num_samples=2", option], tmp_path))
    assert not (tmp_path / "samples.pt").exists()


def test_ddpm_eval_judges_clips_beside_real_clips_and_controls(video_run, tmp_path):
    result = evaluate(compose_app("eval", [f"ckpt_path={video_run}", "num_samples=8", "guidance.scales=[0,3]"],
                                  tmp_path))
    assert [row["guidance_scale"] for row in result["guidance_sweep"]] == [0.0, 3.0]
    real, static = result["reference"]["real"], result["reference"]["static"]
    assert real["shape_colour"] == 1.0 and real["direction"] == 1.0 and static["speed"] == 0.0
    assert 0 <= result["model"]["shape_colour"] <= 1 and result["model"]["count"] == 8
    assert (tmp_path / "metrics.json").is_file() and Image.open(tmp_path / "samples.gif").n_frames == FRAMES


def test_sample_clips_go_to_wandb_as_videos(tmp_path):
    overrides = [o for o in VIDEO if o != "logger=csv"]
    run(compose_train([*overrides, "logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                       "callbacks.sample_grid.every_n_epochs=1"], tmp_path))
    videos = sorted((tmp_path / "wandb").glob("offline-run-*/files/media/videos/**/*.gif"))
    assert len(videos) == 2                                  # epoch 0 and the final clips
    assert all(Image.open(v).n_frames == FRAMES for v in videos)


def test_image_to_video_on_image_data_is_one_clear_error_before_any_folder(tmp_path):
    with pytest.raises(UserError, match="image_to_video needs video clips, and data=digits holds images"):
        run(compose_train(["debug=fast", "net=unet_tiny", "+image_to_video.p_first_frame=0.5"], tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_video_data_on_an_image_network_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="holds video clips .* use net=dit_video or net=wan"):
        run(compose_train(["data=moving_shapes", "net=unet_tiny", "debug=fast"], tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_first_frame_on_a_text_to_video_model_and_label_on_video_eval_are_refused(video_run, tmp_path):
    t2v = tmp_path / "t2v"
    run(compose_train([o for o in VIDEO if not o.startswith("+image_to_video")] + ["trainer.max_steps=1"], t2v))
    with pytest.raises(UserError, match="first_frame: this checkpoint is a text-to-video model"):
        sample_run(compose_app("sample", [f"ckpt_path={t2v}", "num_samples=2", "first_frame=data"], tmp_path / "s"))
    with pytest.raises(UserError, match="label=3: ddpm-eval samples a video checkpoint"):
        evaluate(compose_app("eval", [f"ckpt_path={video_run}", "num_samples=4", "label=3"], tmp_path / "e"))
    assert not list(tmp_path.glob("[se]/**/*.pt")) and not list(tmp_path.glob("e/**/metrics.json"))
