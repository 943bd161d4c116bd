"""Latent diffusion's training step: cached latents vs running the encoder every step, and latent
vs pixel diffusion at the same image size (32x32 shapes with prompts).

    python benchmarks/latent_step.py [--steps 30] [--repeats 3] [--vae <stage-1 run folder>]

- latent, cached:    experiment=shapes_ldm (the batch holds the VAE's posterior moments)
- latent, cached + EMA: the same, each step followed by the EMA update of callbacks.ema
  (ForeachEMA, as Lightning calls it after each optimizer step; `ema_update_ms` times it alone)
- latent, encoding:  the same with latents.cache=false (the frozen encoder runs on every batch)
- pixel:             experiment=shapes_text at data.image_size=32 (its own UNet on the pixels)

Each step is forward + backward + AdamW step of the DiffusionModule's training_step, batch 64.
Step time is the median over the steps after warm-up; the three are interleaved and repeated so a
busy machine affects them alike. The timing does not depend on the VAE's weights: without --vae an
untrained `vae=f4` AutoencoderKL is written as a diffusers folder and loaded with vae=pretrained.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import write_json
from hydra import compose, initialize_config_dir

from ddpm_lab.autoencoders import autoencoder_kl
from ddpm_lab.build import build
from ddpm_lab.callbacks.ema import ForeachEMA
from ddpm_lab.cli import CONF_DIR

WARMUP = 3


def setup(overrides: list[str], ema: bool = False):
    """(module, batch, optimizer, the EMA's update or None) of a configured training step."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    module, datamodule = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    opt = module.configure_optimizers()["optimizer"]
    module.train()
    update = None
    if ema:
        callback = ForeachEMA(decay=cfg.callbacks.ema.decay)
        callback.setup(None, module, "fit")        # builds the AveragedModel, as Trainer.fit does
        average = callback._average_model

        def update() -> None:
            average.update_parameters(module)
    return module, batch, opt, update


def time_steps(module, batch, opt, update, steps: int) -> float:
    stamps = []
    for i in range(steps + WARMUP):
        loss = module.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if update is not None:
            update()
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps[WARMUP - 1:], stamps[WARMUP:])]
    return statistics.median(gaps)


def time_calls(fn, calls: int) -> float:
    """Median seconds of `fn()` over `calls` calls."""
    gaps = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        gaps.append(time.perf_counter() - start)
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vae", default=None, help="a stage-1 run folder (default: an untrained f4 VAE)")
    parser.add_argument("--out", default="outputs/bench/latent_step.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    if args.vae:
        vae = [f"vae.path={args.vae}"]
    else:
        autoencoder_kl(image_size=32, in_channels=3).save_pretrained(tmp / "vae")
        vae = ["vae=pretrained", f"vae.path={tmp / 'vae'}"]
    common = ["data.num_images=2000", "logger=none", f"paths.output_dir={tmp / 'run'}"]
    ldm = ["experiment=shapes_ldm", *common, *vae, f"latents.cache_dir={tmp / 'cache'}"]
    setups = {"latent, cached": setup(ldm),
              "latent, cached + EMA": setup(ldm, ema=True),
              "latent, encoding every step": setup([*ldm, "latents.cache=false"]),
              "pixel": setup(["experiment=shapes_text", *common, "data.image_size=32"])}
    times = {name: [] for name in setups}
    for _ in range(args.repeats):
        for name, (module, batch, opt, update) in setups.items():
            times[name].append(time_steps(module, batch, opt, update, args.steps))
    result = {name: {"step_ms": round(1000 * min(t), 2), "runs_ms": [round(1000 * x, 2) for x in t]}
              for name, t in times.items()}
    result["ema_update_ms"] = round(1000 * time_calls(setups["latent, cached + EMA"][3], 10 * args.steps), 3)
    cached = result["latent, cached"]["step_ms"]
    result["ratios"] = {"cached + EMA / cached": round(result["latent, cached + EMA"]["step_ms"] / cached, 3),
                        "encoding every step / cached": round(result["latent, encoding every step"]["step_ms"] / cached, 2),
                        "pixel / latent cached": round(result["pixel"]["step_ms"] / cached, 2)}
    shapes = {name: list(m.sample_shape) for name, (m, *_) in setups.items()}
    result["diffusion_shapes"] = shapes
    result["threads"] = torch.get_num_threads()
    print(f"{'setup':32s} {'step (ms)':>10s}   diffusion shape")
    for name in setups:
        print(f"{name:32s} {result[name]['step_ms']:10.1f}   {shapes[name]}")
    print(f"EMA update alone: {result['ema_update_ms']:.3f} ms")
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.2f}x")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
