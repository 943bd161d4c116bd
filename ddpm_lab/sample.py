"""ddpm-sample: images from a checkpoint (grid PNG + tensors, optionally the trajectory figure)
or, from a video checkpoint, clips (one GIF or MP4 per clip, a tiled grid of prompts x seeds, a
PNG strip of frames); and ddpm-forward: the forward-process figure. Both are Hydra apps with a
testable `run(cfg)`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm_lab.checkpoint_io import atomic_save
from ddpm_lab.checkpoints import checkpoint_of
from ddpm_lab.cli import CONF_DIR, user_errors
from ddpm_lab.config_check import check_config
from ddpm_lab.config_check.apps import DEVICES
from ddpm_lab.diffusion import GaussianDiffusion
from ddpm_lab.diffusion.samplers import Sampler
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.pretrained import load_model
from ddpm_lab.video_files import check_format, clip_grid_rows, save_clip, save_frame_strip
from ddpm_lab.viz import pick_frames, save_grid, save_strip_figure, save_trajectory_figure


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise choice_error("device", name, DEVICES)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def chosen_sampler(cfg: DictConfig, module) -> Sampler:
    """The checkpoint's sampler with the command line's `sampler.*` choices on top (null keeps the
    checkpoint's; a preset, `sampler=ddim`, sets all its keys), checked by `Sampler`."""
    chosen = {k: v for k, v in (cfg.get("sampler") or {}).items() if k != "_target_"}
    return module.sampler.replace(**chosen)


def check_prediction(cfg: DictConfig, module) -> None:
    wanted = cfg.get("prediction")
    if wanted is not None and wanted != module.diffusion.prediction:
        raise UserError(f"prediction={wanted!r} but the checkpoint was trained to predict "
                        f"{module.diffusion.prediction!r}; a checkpoint samples with its own prediction type")


def prompts_of(cfg: DictConfig) -> str | list[str] | None:
    """`prompt`: one prompt, or one per sample; k prompts for k x m samples repeat each prompt m
    times (rows of prompts x seeds)."""
    prompt = cfg.get("prompt")
    if prompt is None or isinstance(prompt, str):
        return prompt
    prompt, n = list(prompt), cfg.num_samples
    return [p for p in prompt for _ in range(n // len(prompt))] if n % len(prompt) == 0 else prompt


def video_options(cfg: DictConfig, module) -> dict:
    """format, fps and first_frame: for video checkpoints only."""
    given = [k for k in ("format", "fps", "first_frame") if cfg.get(k) is not None]
    if not module.is_video:
        if given:
            raise UserError(f"{given[0]}={cfg.get(given[0])!r}: this checkpoint samples images "
                            f"(data={module.hparams['data_info'].get('name')}), not video clips; "
                            f"leave {', '.join(given)} out")
        return {}
    if cfg.get("first_frame") is not None:
        module.require_image_to_video()
    fmt = cfg.get("format") or "gif"
    check_format(fmt)
    fps = cfg.get("fps") or module.fps
    return {"format": fmt, "fps": float(fps), "first_frame": cfg.get("first_frame")}


def first_frames_of(source: str | None, module, num_samples: int, seed: int) -> torch.Tensor | None:
    """Images in [-1, 1] to start clips from: a PNG file, or `data` (the first frames of held-out clips)."""
    if source is None:
        return None
    c, _, h, w = module.image_shape
    if source == "data":
        datamodule = instantiate(module.hparams["data_info"]["data"])
        datamodule.setup("fit")
        clips = datamodule.val_set.columns.image
        index = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed))[:num_samples]
        return clips[index.repeat(num_samples // len(index) + 1)[:num_samples], :, 0]
    from PIL import Image

    path = Path(str(source)).expanduser()
    try:
        image = Image.open(path).convert("RGB" if c == 3 else "L")
    except (OSError, ValueError) as err:
        raise UserError(f"first_frame={str(source)!r}: not a readable image file ({err}); give a PNG "
                        f"of {w}x{h} pixels, or first_frame=data") from None
    if image.size != (w, h):
        raise UserError(f"first_frame={str(source)!r} is {image.size[0]}x{image.size[1]} pixels; this model's "
                        f"frames are {w}x{h}")
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(h, w, c).permute(2, 0, 1)
    return (x.float() / 127.5 - 1)[None]


def write_clips(clips: torch.Tensor, out: Path, video: dict, prompts: list[str] | None) -> dict[str, str]:
    """One file per clip (clips/), the tiled grid (rows: prompts, columns: seeds) and the PNG strip."""
    fmt, fps = video["format"], video["fps"]
    for i, clip in enumerate(clips):
        save_clip(clip, out / "clips" / f"clip_{i:03d}.{fmt}", fps, upscale=4, fmt=fmt)
    nrow = clip_grid_rows(len(clips), prompts)
    return {"clips": str(out / "clips"),
            "grid": str(save_clip(clips, out / f"samples.{fmt}", fps, nrow=nrow, upscale=4, fmt=fmt)),
            "frames": str(save_frame_strip(clips[:16], out / "frames.png", upscale=4))}


def run(cfg: DictConfig) -> dict[str, str]:
    """Sample `num_samples` images (clips, from a video checkpoint); returns the paths written."""
    check_config(cfg, "sample")
    ckpt_path = checkpoint_of(cfg)
    module = load_model(ckpt_path, pick_device(cfg.device))
    check_prediction(cfg, module)
    sampler = chosen_sampler(cfg, module)
    video = video_options(cfg, module)
    prompts = prompts_of(cfg)
    first = first_frames_of(video.get("first_frame"), module, cfg.num_samples, cfg.seed)
    out = output_dir(cfg)
    guidance = cfg.get("guidance") or {}
    result = module.sample_outputs(cfg.num_samples, seed=cfg.seed, batch_size=cfg.batch_size,
                                   return_trajectory=cfg.trajectory, progress=True, labels=cfg.get("label"),
                                   prompts=prompts, first_frames=first, guidance_scale=guidance.get("scale"),
                                   guidance_rescale=guidance.get("rescale"), **sampler.options())
    images, trajectory = result["images"], result.get("trajectory")
    if module.is_video:
        paths = write_clips(images, out, video, [prompts] * len(images) if isinstance(prompts, str) else prompts)
    else:
        paths = {"grid": str(save_grid(images, out / "samples.png", upscale=4))}
    paths["tensors"] = str(out / "samples.pt")
    atomic_save({"images": images, "latents": result.get("latents"), "seed": cfg.seed, "ckpt_path": str(ckpt_path),
                 "label": cfg.get("label"), "prompt": cfg.get("prompt"), "first_frames": first,
                 "sampler": dataclasses.asdict(sampler), **({"fps": video["fps"]} if video else {})},
                paths["tensors"])
    if trajectory is not None:
        frames = trajectory[:, :, :, 0] if module.is_video else trajectory      # clips: their first frames
        paths["trajectory"] = str(save_trajectory_figure(frames, out / "trajectory.png",
                                                         cfg.trajectory_rows, cfg.trajectory_frames))
    print(f"ddpm-sample: wrote {', '.join(paths.values())}")
    return paths


def run_forward(cfg: DictConfig) -> Path:
    """The data-to-noise figure: x_t ~ q(x_t | x_0) for evenly spaced t (one noise per image)."""
    check_config(cfg, "forward")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(datamodule.train_set), generator=gen)[: cfg.num_images].tolist()
    x0 = torch.stack([datamodule.train_set[i].image for i in idx]).double()
    diffusion = GaussianDiffusion(instantiate(cfg.schedule))
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    ts = pick_frames(diffusion.num_steps, cfg.num_frames)
    frames = torch.stack([diffusion.q_sample(x0, torch.full((len(x0),), t), noise) for t in ts])
    path = save_strip_figure(frames.clamp(-1, 1).float(), [f"t={t + 1}" for t in ts],
                             output_dir(cfg) / "forward.png",
                             f"Forward process q(x_t | x_0), {diffusion.schedule.name} schedule")
    print(f"ddpm-forward: wrote {path}")
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
@user_errors("ddpm-sample")
def main(cfg: DictConfig) -> None:
    run(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="forward")
@user_errors("ddpm-forward")
def forward_main(cfg: DictConfig) -> None:
    run_forward(cfg)


if __name__ == "__main__":
    main()
