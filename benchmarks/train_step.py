"""Training-step overhead: ddpm_lab's Lightning step vs a plain PyTorch loop (and, with
--net diffusers_unet2d, vs a diffusers-style loop on the same UNet2DModel).

Same network (the digits experiment's UNet), same batch, same optimizer, gradient clipping and LR
warm-up; both with and without an EMA of the weights (our configured EMAWeightAveraging callback vs
torch.optim.swa_utils.AveragedModel with the same decay). Per-step time is the steady-state median over the steps after
warm-up; runs are interleaved and repeated so that a busy machine affects both alike. The figure
that counts is the ratio ours / plain.

    python benchmarks/train_step.py [--net unet_small|diffusers_unet2d] [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from _common import write_json
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from ddpm_lab.build import build_module
from ddpm_lab.cli import CONF_DIR
from ddpm_lab.data.batch import Batch, BatchDataset
from ddpm_lab.data.digits import load_digits_tensors
from ddpm_lab.modules import DiffusionModule

WARMUP = 5


class StepTimer(L.Callback):
    def __init__(self):
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())


def per_step(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1:])]
    return statistics.median(gaps)


def make_module(cfg, batch) -> DiffusionModule:
    class _DM:  # the data module's shape information only
        image_shape = tuple(batch.shape[1:])
        num_classes = 10
    return build_module(cfg, _DM())


def run_lightning(cfg, batch, steps, ema: bool, device: str, precision: str = "32-true",
                  prepare=None, num_workers: int = 0) -> float:
    """Seconds per step of our module under Lightning's Trainer (`precision`; `prepare(module)`
    first, e.g. channels_last or torch.compile; the batch read by a loader of `num_workers`)."""
    torch.manual_seed(0)
    module = make_module(cfg, batch)
    if prepare is not None:
        prepare(module)
    loader = DataLoader(BatchDataset(Batch(image=batch.repeat(steps, 1, 1, 1))), batch_size=len(batch),
                        num_workers=num_workers)
    timer = StepTimer()
    callbacks = [timer] + ([instantiate(cfg.callbacks.ema)] if ema else [])
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, precision=precision,
                        enable_progress_bar=True, gradient_clip_val=1.0, callbacks=callbacks,
                        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=10)
    trainer.fit(module, train_dataloaders=loader)
    return per_step(timer.stamps)


def timed_hand_loop(model, loss_fn, x0, steps: int, optim: dict, ema_decay: float | None, device: str,
                    bf16: bool = False, fused: bool = False) -> float:
    """The loop a researcher writes by hand: loss (under bf16 autocast with `bf16`), AdamW (fused
    with `fused`), clipping, LR warm-up, optional foreach EMA."""
    o = optim
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"], betas=tuple(o["betas"]),
                            **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (o["warmup_steps"] + 1)))
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
    stamps = []
    for _ in range(steps):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if averaged is not None:
            averaged.update_parameters(model)
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return per_step(stamps)


def run_plain(cfg, batch, steps, ema: bool, device: str, bf16: bool = False, prepare=None,
              fused: bool = False) -> float:
    """Algorithm 1 written out in plain PyTorch on our network (`prepare(module)` first)."""
    torch.manual_seed(0)
    module = make_module(cfg, batch).to(device)
    if prepare is not None:
        prepare(module)
    net, diffusion = module.net.train(), module.diffusion
    sqrt_ab = diffusion.sqrt_alphas_cumprod.float().to(device)
    sqrt_1mab = diffusion.sqrt_one_minus_alphas_cumprod.float().to(device)

    def loss_fn(x0):
        t = torch.randint(0, diffusion.num_steps, (len(x0),), device=device)
        noise = torch.randn_like(x0)
        x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1mab[t].view(-1, 1, 1, 1) * noise
        return torch.nn.functional.mse_loss(net(x_t, t), noise)

    decay = cfg.callbacks.ema.decay if ema else None
    return timed_hand_loop(net, loss_fn, batch.to(device), steps, module.optim, decay, device, bf16, fused)


def run_diffusers_style(cfg, batch, steps, ema: bool, device: str) -> float:
    """The diffusers training-example loop: UNet2DModel + DDPMScheduler.add_noise + AdamW."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    module = make_module(cfg, batch).to(device)
    unet = module.net.unet.train()
    scheduler = DDPMScheduler(num_train_timesteps=module.diffusion.num_steps, beta_schedule="linear")

    def loss_fn(x0):
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), device=device)
        return torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)

    decay = cfg.callbacks.ema.decay if ema else None
    return timed_hand_loop(unet, loss_fn, batch.to(device), steps, module.optim, decay, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--experiment", default="digits_ddpm")
    parser.add_argument("--net", default="unet_small",
                        help="net config; diffusers_unet2d adds the diffusers-style loop on the same network")
    parser.add_argument("--out", default="outputs/bench/train_step.json")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={args.experiment}", f"net={args.net}",
                                               "paths.output_dir=."])
    batch = load_digits_tensors(cfg.data.image_size)[0][: args.batch_size]
    accel = "gpu" if args.device == "cuda" else "cpu"
    loops = {"plain": lambda ema: run_plain(cfg, batch, args.steps, ema, args.device),
             "ours": lambda ema: run_lightning(cfg, batch, args.steps, ema, accel)}
    if args.net == "diffusers_unet2d":
        loops["diffusers"] = lambda ema: run_diffusers_style(cfg, batch, args.steps, ema, args.device)
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for ema in (False, True):
            for name, loop in loops.items():
                times.setdefault(name + ("+ema" if ema else ""), []).append(loop(ema))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "image_shape": list(batch.shape[1:]), "steps": args.steps,
        "repeats": args.repeats, "net": OmegaConf.to_container(cfg.net, resolve=True),
        "ms_per_step": {k: 1000 * v for k, v in med.items()},
        "ratio_ours_over_plain": med["ours"] / med["plain"],
        "ratio_ours_over_plain_with_ema": med["ours+ema"] / med["plain+ema"],
    }
    if "diffusers" in med:
        result["ratio_ours_over_diffusers"] = med["ours"] / med["diffusers"]
        result["ratio_ours_over_diffusers_with_ema"] = med["ours+ema"] / med["diffusers+ema"]
    print(f"\ntraining step, {args.device}, batch {args.batch_size} x {tuple(batch.shape[1:])}, "
          f"median of {args.repeats} runs x {args.steps - WARMUP - 1} steps")
    print(f"{'loop':<16}{'ms/step':>10}{'ours/this':>12}   (net={args.net})")
    for k in med:
        ours = med["ours+ema" if k.endswith("+ema") else "ours"]
        print(f"{k:<16}{1000 * med[k]:>10.1f}{ours / med[k]:>12.3f}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
