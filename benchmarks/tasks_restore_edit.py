"""Restoration by DDNM (x4 / x2 super-resolution, denoising at sigma 1) and editing by inversion
(class swap, round trip) on the held-out digits, beside their baselines, in one run.

    python benchmarks/tasks_restore_edit.py \
        [--ckpt <digits_ddpm run>/checkpoints/last.ckpt] [--cfg-ckpt <digits_cfg run>/checkpoints/last.ckpt] [--steps 50]

The checkpoints: `ddpm-train experiment=digits_ddpm logger=csv` (unconditional, `make train`) and
`ddpm-train experiment=digits_cfg logger=csv` (class-conditional, classifier-free guidance).
Restoration: the reference classifier's accuracy on the results, FD (reference features) against
the training split and PSNR against the truth, beside nearest and bilinear upsampling of y (super-
resolution) and the noisy input clipped to [-1, 1] (denoising). Editing: each held-out digit
inverted under its own label up to t0 (each of --edit-t0; 1 = to noise) and regenerated from there
as (label + 1) mod 10; for each t0 the share the classifier reads as the new class, and the share
nearer (pixel L2) to the source than a fresh sample of the new class (the checkpoint's own sampler
at its guidance scale; one per digit), with the x0 clipping of the checkpoint's sampler (eps
re-derived from the clipped x0) and, for --edit-t0-unclipped, without; fresh DDIM samples of the
new class with x0 clipping (eps paired or re-derived) and without; the round trip (same label,
w = 1, t0 = 1) PSNR at 50 and 200 steps. Fixed seeds; grids (input, result, truth) go to docs/.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from _common import load_run, write_json

from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.diffusion.operators import AveragePool
from ddpm_lab.metrics.distances import RealReference, min_samples
from ddpm_lab.metrics.reference import reference_extractor
from ddpm_lab.tasks.base import TaskInputs
from ddpm_lab.tasks.edit import EditByInversion
from ddpm_lab.tasks.restore import Denoise, SuperResolution
from ddpm_lab.viz import save_grid

MAKE = {"ckpt": "ddpm-train experiment=digits_ddpm logger=csv",
        "cfg_ckpt": "ddpm-train experiment=digits_cfg logger=csv"}


def psnr(x: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2), over the whole set."""
    mse = ((x - truth) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def held_out(module, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` (None: all) held-out images of the checkpoint's data, with labels."""
    from hydra.utils import instantiate
    dm = instantiate(module.hparams["data_info"]["data"])
    dm.setup("fit")
    val = stack_dataset(dm.val_set)
    return val.image[:limit], val.label[:limit]


class Judge:
    """Accuracy, FD and PSNR of image sets against the truth and the training split."""

    def __init__(self, train: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor):
        extractor, self.classifier, _ = reference_extractor("digits16")
        self.real, self.truth, self.labels = RealReference(extractor, train), truth, labels
        self.fd_ok = len(truth) >= min_samples(extractor)       # FD needs more images than features

    @torch.no_grad()
    def reads(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return (self.classifier(images).argmax(1) == labels).float().mean().item()

    def row(self, name: str, images: torch.Tensor, **extra) -> dict:
        row = {"method": name, "accuracy": self.reads(images, self.labels),
               "fd": self.real.fd(images) if self.fd_ok else float("nan"), "psnr": psnr(images, self.truth), **extra}
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "method")
        print(f"  {name:<28} {shown}", flush=True)
        return row


def grid(path: str, *rows: torch.Tensor, n: int = 8) -> None:
    save_grid(torch.cat([r[:n] for r in rows]), path, nrow=n, upscale=4)


def restoration(args, judge: Judge, module, images: torch.Tensor) -> dict:
    out = {}
    inputs = TaskInputs(images, judge.labels)
    for factor in args.factors:
        print(f"x{factor} super-resolution (DDNM, {args.steps} steps)", flush=True)
        start = time.time()
        result = SuperResolution(factor=factor, steps=args.steps).run(module, inputs, torch.Generator().manual_seed(args.seed))
        seconds = time.time() - start
        y = AveragePool(factor).A(images)
        bilinear = F.interpolate(y, scale_factor=factor, mode="bilinear", align_corners=False).clamp(-1, 1)
        out[f"superres_x{factor}"] = [
            judge.row("nearest upsampling (A^+ y)", result.inputs),
            judge.row("bilinear upsampling", bilinear),
            judge.row("DDNM", result.results, seconds=seconds, **result.metrics)]
        grid(f"{args.figures}/tasks_superres_x{factor}.png", result.inputs, result.results, images)
    print(f"denoising at sigma {args.sigma} (DDNM+, {args.steps} steps)", flush=True)
    start = time.time()
    result = Denoise(sigma=args.sigma, steps=args.steps).run(module, inputs, torch.Generator().manual_seed(args.seed))
    seconds = time.time() - start
    out["denoise"] = [judge.row("noisy input (clipped)", result.inputs),
                      judge.row("DDNM+", result.results, seconds=seconds)]
    grid(f"{args.figures}/tasks_denoise.png", result.inputs, result.results, images)
    return out


def editing(args, cfg_ckpt: str) -> dict:
    module, train, _ = load_run(cfg_ckpt)
    images, labels = held_out(module, args.num_images)
    judge = Judge(train, images, labels)
    inputs = TaskInputs(images, labels)
    new = (labels + 1) % 10
    out = {"guidance_scale": module.guidance.scale, "rows": [], "sweep": []}
    # the checkpoint's own sampler (DDPM, 100 steps, its guidance scale): one fresh sample of the new
    # class per digit, the yardstick of "nearer the source"
    fresh = module.sample(len(images), seed=args.seed, labels=new, steps=100)
    d_fresh = (fresh - images).flatten(1).norm(dim=1)
    for name, x in (("source", images), ("fresh sample of the new class", fresh)):
        out["rows"].append(judge.row(name, x, reads_new_class=judge.reads(x, new),
                                     mean_l2_to_source=(x - images).flatten(1).norm(dim=1).mean().item()))
    # deterministic DDIM at the same guidance: x0 clipping with and without eps re-derived from the
    # clipped x0 (use_clipped_model_output), and no clipping
    out["ddim_samples"] = []
    for name, options in (("DDIM, clip x0", {"clip_x0": True}),
                          ("DDIM, clip x0, eps from the clipped x0",
                           {"clip_x0": True, "use_clipped_model_output": True}),
                          ("DDIM, no clipping", {"clip_x0": False})):
        x = module.sample(len(images), seed=args.seed, labels=new, sampler="ddim", steps=args.edit_steps, eta=0.0,
                          **options)
        out["ddim_samples"].append(judge.row(f"fresh sample, {name}", x, reads_new_class=judge.reads(x, new),
                                             **options))
    print(f"class swap by inversion (target next, {args.edit_steps} steps over the whole way, guidance "
          f"{module.guidance.scale}), inverted up to t0 = {args.edit_t0}", flush=True)
    shown = {}
    runs = [(t0, None) for t0 in args.edit_t0] + [(t0, False) for t0 in args.edit_t0_unclipped]
    for t0, clip in runs:
        start = time.time()
        edit = EditByInversion(target="next", steps=args.edit_steps, t0=t0, clip_x0=clip).run(
            module, inputs, torch.Generator().manual_seed(args.seed))
        seconds = time.time() - start
        d_edit = (edit.results - images).flatten(1).norm(dim=1)
        name = f"edit by inversion, t0 = {t0:g}" + ("" if edit.metrics["clip_x0"] else ", no x0 clipping")
        out["sweep"].append(judge.row(name, edit.results, t0=t0, clip_x0=edit.metrics["clip_x0"],
                                      reads_new_class=judge.reads(edit.results, new),
                                      nearer_than_fresh=(d_edit < d_fresh).float().mean().item(),
                                      mean_l2_to_source=d_edit.mean().item(), seconds=seconds))
        if clip is None and t0 in args.figure_t0:
            shown[t0] = edit.results
    grid(f"{args.figures}/tasks_edit.png", images, *shown.values(), fresh)
    n = args.round_trip_images
    sub = TaskInputs(images[:n], labels[:n])
    out["round_trip"] = {}
    for steps in (50, 200):
        same = EditByInversion(target="same", guidance_scale=1.0, steps=steps, t0=1.0, clip_x0=False).run(
            module, sub, torch.Generator())
        out["round_trip"][steps] = psnr(same.results, sub.images)
        print(f"  round trip (own label, w = 1) at {steps} steps: PSNR {out['round_trip'][steps]:.2f} dB "
              f"on {n} digits", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help=f"made by: {MAKE['ckpt']}")
    parser.add_argument("--cfg-ckpt", default=None, help=f"made by: {MAKE['cfg_ckpt']}")
    parser.add_argument("--steps", type=int, default=50, help="DDNM reverse steps")
    parser.add_argument("--edit-steps", type=int, default=50, help="inversion and regeneration steps (whole way)")
    parser.add_argument("--edit-t0", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0],
                        help="how far up each edit inverts (task.t0; 1 = to noise), x0 clipped as the checkpoint's sampler")
    parser.add_argument("--edit-t0-unclipped", type=float, nargs="*", default=[0.5, 1.0],
                        help="the same without x0 clipping (task.clip_x0=false)")
    parser.add_argument("--figure-t0", type=float, nargs="*", default=[0.3, 0.5, 1.0],
                        help="the edits shown in tasks_edit.png (rows: source, these, a fresh sample)")
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--num-images", type=int, default=None, help="the first N held-out digits (all: 180)")
    parser.add_argument("--round-trip-images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=["restore", "edit"], default=None)
    parser.add_argument("--figures", default="docs")
    parser.add_argument("--out", default="outputs/bench/tasks_restore_edit.json")
    args = parser.parse_args()
    if args.skip != "restore" and not args.ckpt:
        parser.error(f"--ckpt is required for the restoration rows ({MAKE['ckpt']})")
    if args.skip != "edit" and not args.cfg_ckpt:
        parser.error(f"--cfg-ckpt is required for the editing rows ({MAKE['cfg_ckpt']})")
    torch.manual_seed(args.seed)
    print(f"checkpoints: {args.ckpt} ({MAKE['ckpt']}), {args.cfg_ckpt} ({MAKE['cfg_ckpt']})")
    result = {"ckpt": args.ckpt, "cfg_ckpt": args.cfg_ckpt, "steps": args.steps, "edit_steps": args.edit_steps,
              "sigma": args.sigma, "seed": args.seed}
    start = time.time()
    if args.skip != "restore":
        module, train, _ = load_run(args.ckpt)
        images, labels = held_out(module, args.num_images)
        result["num_held_out"] = len(images)
        result["restoration"] = restoration(args, Judge(train, images, labels), module, images)
    if args.skip != "edit":
        result["editing"] = editing(args, args.cfg_ckpt)
    result["seconds"] = time.time() - start
    print(f"total {result['seconds']:.0f} s")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
