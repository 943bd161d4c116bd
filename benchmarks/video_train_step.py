"""Training-step time of the video networks: net=dit_video with full and with factorised
space-time attention and net=wan (diffusers' Wan 2.1 transformer) on pixel clips, and net=dit_video
on the latents of the same clips under vae=wan_tiny (4 channels, time / 2, space / 4: a 9 x 32 x 32
clip is 4 x 5 x 8 x 8; patch 2, as experiment=moving_shapes_ldm), the cached-latent step of stage 2.

One step is the flow-matching loss (x_s = (1 - s) x0 + s eps, target eps - x0, MSE;
`ddpm_lab.diffusion.FlowMatching.training_losses`) on random clips (N, 3, F, size, size) (or
latents), backward
and an AdamW step; unconditional (no text). The figure is the median step time after warm-up,
the networks interleaved step by step (one step of each in turn) so that a busy machine slows them
alike. Beside the median wall time, the fastest step (on a shared CPU, other processes' threads
can slow a step many times over; the fastest is the least disturbed) and the process's CPU time per
step (all threads).

    python benchmarks/video_train_step.py [--device cpu|cuda] [--size 16] [--frames 8] [--batch 32]
                                          [--steps 15] [--out outputs/bench/video_train_step.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _common import write_json
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm_lab.cli import CONF_DIR
from ddpm_lab.diffusion import FlowMatching

WARMUP = 2     # untimed steps of each network first
# row name -> (net config, overrides, latent: on vae=wan_tiny latents)
NETS = {"dit_video, full": ("dit_video", {"attention": "full"}, False),
        "dit_video, factorised": ("dit_video", {"attention": "factorised"}, False),
        "wan": ("wan", {}, False),
        "dit_video, factorised, latent": ("dit_video", {"attention": "factorised", "patch_size": 2}, True),
        "dit_video, full, latent": ("dit_video", {"attention": "full", "patch_size": 2}, True)}
LATENT_CHANNELS, SPACE, TIME = 4, 4, 2      # vae=wan_tiny


def input_shape(latent: bool, frames: int, size: int) -> tuple[int, int, int, int]:
    """A pixel clip (3, F, S, S), or its wan_tiny latent (4, 1 + (F - 1) // 2, S / 4, S / 4)."""
    if not latent:
        return (3, frames, size, size)
    return (LATENT_CHANNELS, 1 + (frames - 1) // TIME, size // SPACE, size // SPACE)


def net_config(name: str, shape: tuple[int, ...], overrides: dict) -> dict:
    """conf/net/<name>.yaml for inputs of `shape` (C, F, H, W)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"net={name}", f"data.image_size={shape[-1]}", "paths.output_dir=."])
    return {**OmegaConf.to_container(cfg.net, resolve=True), "in_channels": shape[0], **overrides}


def make_step(config: dict, clips: torch.Tensor) -> Callable[[], None]:
    """One flow-matching training step (loss, backward, AdamW) of the network `config` on `clips`."""
    torch.manual_seed(0)
    net = instantiate(config).to(clips.device).train()
    flow = FlowMatching()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step() -> None:
        loss = flow.training_losses(net, clips).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if clips.device.type == "cuda":
            torch.cuda.synchronize()
    return step


def timed(step: Callable[[], None]) -> tuple[float, float]:
    """Wall and CPU seconds of one call of `step`."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", type=int, default=16, help="clip height and width")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15, help="timed steps of each network")
    parser.add_argument("--out", default="outputs/bench/video_train_step.json")
    args = parser.parse_args()

    shapes = {row: input_shape(latent, args.frames, args.size) for row, (_, _, latent) in NETS.items()}
    configs = {row: net_config(name, shapes[row], overrides) for row, (name, overrides, _) in NETS.items()}
    inputs = {row: torch.rand(args.batch, *shape, device=args.device) * 2 - 1 for row, shape in shapes.items()}
    steps = {row: make_step(config, inputs[row]) for row, config in configs.items()}
    for step in steps.values():
        for _ in range(WARMUP):
            step()
    times: dict[str, list[tuple[float, float]]] = {row: [] for row in configs}
    for _ in range(args.steps):
        for row, step in steps.items():
            times[row].append(timed(step))
    med = {row: statistics.median(wall for wall, _ in v) for row, v in times.items()}
    cpu = {row: statistics.median(c for _, c in v) for row, v in times.items()}
    best = {row: min(wall for wall, _ in v) for row, v in times.items()}
    params = {row: sum(p.numel() for p in instantiate(c).parameters()) for row, c in configs.items()}
    result = {
        "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch": args.batch, "clip_shape": [3, args.frames, args.size, args.size], "steps": args.steps,
        "input_shapes": {row: list(shape) for row, shape in shapes.items()},
        "nets": configs, "parameters": params, "ms_per_step": {row: 1000 * v for row, v in med.items()},
        "fastest_ms_per_step": {row: 1000 * v for row, v in best.items()},
        "cpu_ms_per_step": {row: 1000 * v for row, v in cpu.items()},
        "ms_per_step_all": {row: [round(1000 * wall, 1) for wall, _ in v] for row, v in times.items()},
    }
    print(f"\nflow-matching training step, {args.device}, batch {args.batch} clips of {args.frames} x "
          f"{args.size} x {args.size}, median of {args.steps} steps each, interleaved\n")
    print("| net | input | parameters | ms / step (median) | fastest step, ms | CPU ms / step |")
    print("|---|---|---:|---:|---:|---:|")
    for row in configs:
        shape = "x".join(map(str, shapes[row]))
        print(f"| {row} | {shape} | {params[row]:,} | {1000 * med[row]:.1f} | {1000 * best[row]:.1f} | "
              f"{1000 * cpu[row]:.1f} |")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
