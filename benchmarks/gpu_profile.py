"""Where the time of one training step of the DDPM paper's CIFAR-10 network goes on one GPU
(net=unet_ddpm_cifar10 on 32x32 MNIST, batch 128): a companion to benchmarks/gpu.py.

A plain PyTorch step (Algorithm 1, AdamW, norm clipping, foreach EMA) timed per variant: fp32,
bf16-mixed, channels_last, fused AdamW, torch.compile (default and CUDA-graph modes), the forward +
backward alone, batch 256; our Lightning step for the best variants; and torch.profiler tables
(the kernels by GPU time, the GPU's busy share of the wall time) for eager and compiled steps.

    python benchmarks/gpu_profile.py --out outputs/bench/gpu_profile [--budget 420]
    python benchmarks/gpu_profile.py --device cpu --tiny   (a smoke run on a tiny network)

Variants run in one process in order, each under what is left of --budget; <out>/profile.json is
rewritten after each row and each profile table goes to <out>/profile_<name>.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import open_dict
from torch.optim.swa_utils import get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {   # name: (bf16, channels_last, fused AdamW, compile mode or None, what is timed, batch factor)
    "fp32": (False, False, False, None, "step", 1),
    "bf16": (True, False, False, None, "step", 1),
    "bf16+cl": (True, True, False, None, "step", 1),
    "bf16+cl+fused": (True, True, True, None, "step", 1),
    "bf16+cl fwd+bwd": (True, True, False, None, "fwd+bwd", 1),
    "bf16+cl+fused batch x2": (True, True, True, None, "step", 2),
    "bf16+cl+fused+compile": (True, True, True, "default", "step", 1),
    "bf16+cl+fused+compile batch x2": (True, True, True, "default", "step", 2),
    "bf16+cl+fused+compile reduce-overhead": (True, True, True, "reduce-overhead", "step", 1),
    "ours bf16+cl+fused+compile reduce-overhead": (True, True, True, "reduce-overhead", "lightning", 1),
    "bf16+fused+compile reduce-overhead": (True, False, True, "reduce-overhead", "step", 1),
    "ours bf16+cl+fused+compile": (True, True, True, "default", "lightning", 1),
    "ours bf16+cl+fused": (True, True, True, None, "lightning", 1),
    "bf16+fused+compile": (True, False, True, "default", "step", 1),
    "bf16+cl forward": (True, True, False, None, "forward", 1),
}
PROFILED = ("bf16+cl+fused", "bf16+cl+fused+compile", "bf16+cl+fused+compile reduce-overhead")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(args):
    from hydra import compose, initialize_config_dir
    from train_step import make_module

    from ddpm_lab.cli import CONF_DIR
    from ddpm_lab.data.mnist import load_mnist_tensors

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=mnist_ddpm", f"net={args.net}", "paths.output_dir=."])
    images = load_mnist_tensors(32)[0]
    return cfg, images, make_module


def plain_step(module, cfg, x0, bf16: bool, fused: bool, what: str, device: str):
    """A closure running one plain training step (or only its forward / forward + backward)."""
    net, diffusion = module.net.train(), module.diffusion
    sqrt_ab = diffusion.sqrt_alphas_cumprod.float().to(device)
    sqrt_1mab = diffusion.sqrt_one_minus_alphas_cumprod.float().to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas),
                            **({"fused": True} if fused else {}))
    ema = [p.detach().clone() for p in params]
    ema_update = get_ema_multi_avg_fn(cfg.callbacks.ema.decay)

    def loss_fn():
        t = torch.randint(0, diffusion.num_steps, (len(x0),), device=device)
        noise = torch.randn_like(x0)
        x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1mab[t].view(-1, 1, 1, 1) * noise
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            return torch.nn.functional.mse_loss(net(x_t, t).float(), noise)

    def step():
        if what == "forward":
            with torch.no_grad():
                return loss_fn()
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if what == "step":
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema_update(ema, [p.detach() for p in params], None)
        return loss
    return step


def time_steps(step, steps: int, warmup: int, device: str) -> float:
    """Median seconds per step over `steps` after `warmup` (each step synchronised)."""
    for _ in range(warmup):
        step()
    sync(device)
    gaps = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        gaps.append(time.perf_counter() - start)
    return statistics.median(gaps)


def profile_table(step, steps: int, device: str, path: Path) -> dict:
    """torch.profiler over `steps` steps: the table by GPU (or CPU) self time, and the busy share."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    wall = (time.perf_counter() - start) / steps
    averages = prof.key_averages()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    kernels = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]   # not the ops that launch them
    busy = sum(e.self_device_time_total for e in kernels) / steps / 1e6 if device == "cuda" else float("nan")
    path.write_text(averages.table(sort_by=key, row_limit=40, max_name_column_width=70) + "\n"
                    + f"wall per step {1000 * wall:.2f} ms; GPU kernel time per step {1000 * busy:.2f} ms\n")
    return {"profiled_wall_ms": 1000 * wall, "gpu_kernel_ms": 1000 * busy, "gpu_busy_share": busy / wall}


def ours_row(cfg, batch, channels_last: bool, mode: str | None, args) -> dict:
    """Our Lightning step (train_step.run_lightning, with the EMA callback) with fused AdamW, the
    network prepared as ddpm-train's `channels_last` and `compile` (an inductor mode) do."""
    from train_step import run_lightning

    from ddpm_lab.build import prepare_network

    ours_cfg = cfg.copy()
    with open_dict(ours_cfg):
        ours_cfg.optim.optimizer.fused = True
    try:
        sec = run_lightning(ours_cfg, batch, 30, True, "gpu" if args.device == "cuda" else "cpu", "bf16-mixed",
                            lambda module: prepare_network(module, {"channels_last": channels_last, "compile": mode}),
                            num_workers=2 if args.device == "cuda" else 0)
        row = {"ms_per_step": 1000 * sec, "images_per_s": len(batch) / sec}
        print(f"{'ours ' + str(mode) + (' cl' if channels_last else ''):<40}{row['ms_per_step']:>9.2f}{row['images_per_s']:>9.0f}", flush=True)
    except Exception as error:
        row = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        print(f"ours failed: {row['error']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/gpu_profile")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--budget", type=float, default=420)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    args.net = "unet_tiny" if args.tiny else "unet_ddpm_cifar10"
    batch, steps, warmup = (8, 3, 2) if args.tiny else (128, 20, 5)
    deadline = time.perf_counter() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg, images, make_module = build(args)
    name_of_gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    result = {"gpu": name_of_gpu, "torch": torch.__version__, "net": args.net, "batch": batch, "rows": {}}

    def save():
        (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"{name_of_gpu}; torch {torch.__version__}; {args.net}; batch {batch}", flush=True)
    print(f"{'variant':<40}{'ms/step':>9}{'img/s':>9}{'peak GiB':>10}{'setup s':>9}", flush=True)
    for name, (bf16, cl, fused, mode, what, factor) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        if deadline - time.perf_counter() < (60 if mode or what == "lightning" else 25):
            print(f"{name:<40} skipped (budget)", flush=True)
            continue
        set_up = time.perf_counter()
        if what == "lightning":
            result["rows"][name] = ours_row(cfg, images[:batch], cl, mode, args)
            save()
            continue
        try:
            torch.manual_seed(0)
            x0 = images[: batch * factor].to(args.device)
            module = make_module(cfg, x0.cpu()).to(args.device)
            if cl:
                module.to(memory_format=torch.channels_last)
                x0 = x0.contiguous(memory_format=torch.channels_last)
            if mode:
                module.net.compile(mode=mode)
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step = plain_step(module, cfg, x0, bf16, fused, what, args.device)
            sec = time_steps(step, steps, warmup + (3 if mode else 0), args.device)
            row = {"ms_per_step": 1000 * sec, "images_per_s": len(x0) / sec, "timed": what,
                   "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
                   "setup_s": time.perf_counter() - set_up - (steps + warmup) * sec}
            if name in PROFILED and deadline - time.perf_counter() > 30:
                row.update(profile_table(step, 5, args.device, out / f"profile_{name.replace('+', '_').replace(' ', '_')}.txt"))
        except Exception as error:   # one variant failing must not lose the others
            row = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        result["rows"][name] = row
        save()
        if "error" in row:
            print(f"{name:<40} failed: {row['error']}", flush=True)
        else:
            peak = row["peak_gib"] or float("nan")
            print(f"{name:<40}{row['ms_per_step']:>9.2f}{row['images_per_s']:>9.0f}{peak:>10.2f}"
                  f"{row['setup_s']:>9.1f}" + (f"   GPU busy {row['gpu_busy_share']:.2f}" if "gpu_busy_share" in row else ""),
                  flush=True)
        del module, step
        torch.cuda.empty_cache() if args.device == "cuda" else None


if __name__ == "__main__":
    main()
