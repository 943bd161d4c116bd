"""ddpm-sample: images from a checkpoint (grid PNG + tensors, optionally the trajectory figure),
and ddpm-forward: the forward-process figure. Both are Hydra apps with a testable `run(cfg)`.
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
from ddpm_lab.modules import DiffusionModule
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


def run(cfg: DictConfig) -> dict[str, str]:
    """Sample `num_samples` images; returns the paths written."""
    check_config(cfg, "sample")
    ckpt_path = checkpoint_of(cfg)
    module = DiffusionModule.load(ckpt_path, pick_device(cfg.device))
    check_prediction(cfg, module)
    sampler = chosen_sampler(cfg, module)
    out = output_dir(cfg)
    guidance = cfg.get("guidance") or {}
    result = module.sample(cfg.num_samples, seed=cfg.seed, batch_size=cfg.batch_size,
                           return_trajectory=cfg.trajectory, progress=True, labels=cfg.get("label"),
                           prompts=cfg.get("prompt"),
                           guidance_scale=guidance.get("scale"), guidance_rescale=guidance.get("rescale"),
                           **sampler.options())
    images, trajectory = result if cfg.trajectory else (result, None)
    paths = {"grid": str(save_grid(images, out / "samples.png", upscale=4)),
             "tensors": str(out / "samples.pt")}
    atomic_save({"images": images, "seed": cfg.seed, "ckpt_path": str(ckpt_path),
                "label": cfg.get("label"), "prompt": cfg.get("prompt"),
                "sampler": dataclasses.asdict(sampler)}, paths["tensors"])
    if trajectory is not None:
        paths["trajectory"] = str(save_trajectory_figure(trajectory, out / "trajectory.png",
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
