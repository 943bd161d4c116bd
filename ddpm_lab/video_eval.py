"""ddpm-eval on a video checkpoint: sample clips for full prompts ("a small red circle moving left
fast", every shape, colour, size, direction and speed in turn) and score them with the video judge
(ddpm_lab/metrics/video.py) at one or several guidance scales, beside the same scores of real
held-out clips (the ceiling) and of the controls that must fail (static, shuffled, reversed,
independent frames)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm_lab.checkpoint_io import atomic_write_bytes
from ddpm_lab.data.moving_captions import CHOICES, attributes_to_captions
from ddpm_lab.errors import UserError
from ddpm_lab.metrics.reference import load_reference, reference_name
from ddpm_lab.metrics.video import judge_clips, judge_real_and_controls, summarise
from ddpm_lab.sample import chosen_sampler
from ddpm_lab.video_files import save_clip, save_frame_strip

SHOWN = ("shape_colour", "size", "direction", "speed", "identity", "median_residual_px")


def evaluation_attributes(num_clips: int, seed: int) -> torch.Tensor:
    """(N, 5) attributes cycling through every combination (3 x 4 x 2 x 4 x 2 = 192) in an order
    drawn from `seed`: every prompt equally often (up to one)."""
    axes = [torch.arange(len(choices)) for choices in CHOICES.values()]
    combos = torch.cartesian_prod(*axes)
    order = torch.randperm(len(combos), generator=torch.Generator().manual_seed(seed))
    return combos[order].repeat(num_clips // len(combos) + 1, 1)[:num_clips]


def real_clips(data_config: dict, num_clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out clips (then training clips, when more are asked for) with their attributes."""
    datamodule = instantiate(data_config)
    if not hasattr(datamodule, "val_attributes"):
        raise UserError(f"ddpm-eval scores clips of data=moving_shapes; this checkpoint's data is "
                        f"{data_config.get('_target_')}")
    datamodule.setup("fit")
    clips = torch.cat([datamodule.val_set.columns.image, datamodule.train_set.columns.image])[:num_clips]
    attrs = torch.cat([datamodule.val_attributes, datamodule.train_attributes])[:num_clips]
    return clips, attrs


def evaluate_video(cfg: DictConfig, module, ckpt_path: str | Path, out: Path) -> dict:
    """Judge the checkpoint's clips (metrics.json, samples.gif, frames.png under `out`)."""
    if not module.guidance.conditional or module.guidance.condition != "text":
        raise UserError("ddpm-eval scores a video checkpoint's clips against their prompts: it needs a "
                        "text-conditioned model (guidance=text)")
    if cfg.get("label") is not None:
        raise UserError(f"label={cfg.get('label')}: ddpm-eval samples a video checkpoint for every prompt of "
                        f"the clips in turn; leave label out")
    size = module.image_shape[-1]
    classifier, record = load_reference(reference_name("shapes", size))
    attrs = evaluation_attributes(cfg.num_samples, cfg.seed)
    prompts = attributes_to_captions(attrs)
    real, real_attrs = real_clips(module.hparams["data_info"]["data"], cfg.num_samples)
    guidance = cfg.get("guidance") or {}
    scales = list(guidance.get("scales") or []) or [guidance.get("scale")]
    sampler = chosen_sampler(cfg, module)
    sweep, clips = [], None
    for scale in scales:
        start = time.perf_counter()
        clips = module.sample(cfg.num_samples, seed=cfg.seed, batch_size=cfg.batch_size, progress=True,
                              prompts=prompts, guidance_scale=scale, guidance_rescale=guidance.get("rescale"),
                              **sampler.options())
        row = summarise(judge_clips(clips, attrs, classifier))
        row["sample_seconds"] = round(time.perf_counter() - start, 2)
        row["guidance_scale"] = module.guidance.scale if scale is None else float(scale)
        sweep.append(row)
    result = {"ckpt_path": str(ckpt_path), "judge": f"reference classifier {record['name']} on every frame, "
              f"centroid line fit", "sampler": dataclasses.asdict(sampler), "seed": cfg.seed,
              "num_generated": cfg.num_samples, "model": sweep[0], "reference": judge_real_and_controls(
                  real, real_attrs, seed=cfg.seed, classifier=classifier)}
    if len(scales) > 1:
        result["guidance_sweep"] = sweep
    fps = module.fps
    save_clip(clips[:32], out / "samples.gif", fps, nrow=8, upscale=4)
    save_frame_strip(clips[:16], out / "frames.png", upscale=4)
    atomic_write_bytes(out / "metrics.json", (json.dumps(result, indent=2) + "\n").encode())
    print_video_report(result)
    return result


def print_video_report(result: dict) -> None:
    print(f"\nddpm-eval (video): {result['ckpt_path']}\njudge: {result['judge']}")
    print(f"{'clips':<22}" + "".join(f"{k:>20}" for k in SHOWN))
    rows = [(f"model (w={row['guidance_scale']:g})", row) for row in result.get("guidance_sweep", [result["model"]])]
    rows += [(name if name != "real" else "real (held-out)", row) for name, row in result["reference"].items()]
    for name, row in rows:
        print(f"{name:<22}" + "".join(f"{row[k]:>20.4f}" for k in SHOWN))
