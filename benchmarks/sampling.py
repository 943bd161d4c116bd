"""Sampler overhead: wall time of `sample(...)` vs NFE x one network forward (the floor), and ours
vs diffusers' DDPMPipeline with the same UNet2DModel, steps and batch.

    python benchmarks/sampling.py [--steps 100] [--batch-size 64] [--repeats 3]

The network is randomly initialised (speed does not depend on the weights). Runs are interleaved
and repeated; medians are reported, and ratios are the figures that count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import write_json
from diffusers import DDPMPipeline, DDPMScheduler

from ddpm_lab.diffusion import GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.samplers import sample
from ddpm_lab.nets.diffusers import DiffusersUNet2D


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_forward(net, x, device: str, n: int = 20) -> float:
    t = torch.full((len(x),), 500, device=device)
    for _ in range(3):
        net(x, t)
    sync(device)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        net(x, t)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def time_ours(net, diffusion, shape, steps: int, device: str) -> float:
    start = time.perf_counter()
    sample(net, shape, diffusion, sampler="ddpm", steps=steps, device=device, clip_x0=True,
           generator=torch.Generator().manual_seed(0))
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def time_pipeline(pipe, batch_size: int, steps: int, device: str) -> float:
    start = time.perf_counter()
    pipe(batch_size=batch_size, num_inference_steps=steps, output_type="np",
         generator=torch.Generator(device="cpu").manual_seed(0))
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/bench/sampling.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = DiffusersUNet2D(image_size=args.image_size, in_channels=1, block_out_channels=(32, 64, 64),
                          layers_per_block=2, attention_levels=(False, True, False), norm_num_groups=8)
    net = net.to(args.device).eval()
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    pipe = DDPMPipeline(unet=net.unet, scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)
    shape = (args.batch_size, 1, args.image_size, args.image_size)
    x = torch.randn(shape, device=args.device)
    runs: dict[str, list[float]] = {"forward": [], "ours": [], "diffusers": []}
    for _ in range(args.repeats):
        runs["forward"].append(time_forward(net, x, args.device))
        runs["ours"].append(time_ours(net, diffusion, shape, args.steps, args.device))
        runs["diffusers"].append(time_pipeline(pipe, args.batch_size, args.steps, args.device))
    med = {k: statistics.median(v) for k, v in runs.items()}
    floor = args.steps * med["forward"]
    result = {"device": args.device, "torch": torch.__version__, "steps": args.steps, "shape": list(shape),
              "forward_ms": 1000 * med["forward"], "floor_s": floor, "ours_s": med["ours"],
              "diffusers_pipeline_s": med["diffusers"],
              "ours_over_floor": med["ours"] / floor, "diffusers_over_floor": med["diffusers"] / floor,
              "ours_over_diffusers": med["ours"] / med["diffusers"]}
    print(f"\nDDPM sampling, {args.device}, {args.steps} steps, batch {shape}, median of {args.repeats}")
    print(f"{'':<26}{'seconds':>10}{'/ floor':>10}")
    print(f"{'NFE x forward (floor)':<26}{floor:>10.3f}{1:>10.3f}")
    print(f"{'ours (sample)':<26}{med['ours']:>10.3f}{med['ours'] / floor:>10.3f}")
    print(f"{'diffusers DDPMPipeline':<26}{med['diffusers']:>10.3f}{med['diffusers'] / floor:>10.3f}")
    print(f"ours / diffusers = {med['ours'] / med['diffusers']:.3f}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
