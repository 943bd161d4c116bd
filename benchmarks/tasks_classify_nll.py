"""The diffusion classifier's accuracy and the bits/dim of the held-out digits, beside baselines.

    python benchmarks/tasks_classify_nll.py \
        --ckpt <digits_ddpm run>/checkpoints/last.ckpt --cfg-ckpt <digits_cfg run>/checkpoints/last.ckpt

The checkpoints: `ddpm-train experiment=digits_ddpm logger=csv` (unconditional, `make train`) and
`ddpm-train experiment=digits_cfg logger=csv` (class-conditional, classifier-free guidance).

- Diffusion classifier (Li et al. 2023) on the held-out digits with the class-conditional model:
  K (t, noise) draws per image shared by the 10 classes, accuracy at K = 1, 2, 4, ..., --draws
  (from the first k draws of the same run), network calls per image.
- Bits/dim (variational bound, images quantised to 256 levels) with the unconditional model, for
  each reverse variance of --variances (fixed_large sigma_t^2 = beta_t, fixed_small beta~_t): the
  held-out split, as many training images (the gap), and the held-out digits with their pixel
  positions shuffled by one fixed permutation; the independent-pixel baseline (per-pixel 256-bin
  histograms of the quantised training split, add-alpha smoothed, on the held-out split); the
  Monte-Carlo estimates (importance and uniform t) against the full sum over all T on a few images.
Fixed seeds; the JSON goes to outputs/bench/tasks_classify_nll.json.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import load_run, write_json
from hydra.utils import instantiate

from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.diffusion.likelihood import (
    BINS,
    VariationalBound,
    bits_per_dim,
    full_sum,
    monte_carlo,
    quantise,
)
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.tasks.classify import accuracy_by_draws, classify
from ddpm_lab.tasks.nll import image_bits_per_dim

TRAIN_COMMANDS = {"ckpt": "ddpm-train experiment=digits_ddpm logger=csv",
                  "cfg_ckpt": "ddpm-train experiment=digits_cfg logger=csv"}


def levels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as 8-bit levels 0..255 (the same quantisation as the bound's)."""
    return ((quantise(images) + 1) / 2 * (BINS - 1)).round().long().flatten(1)


def independent_pixel_bpd(train: torch.Tensor, test: torch.Tensor, alpha: float) -> float:
    """Bits/dim of `test` under a product of per-pixel categoricals over the 256 levels, each the
    training split's histogram of that pixel plus `alpha` in every bin."""
    train_levels, test_levels = levels(train), levels(test)
    counts = torch.zeros(train_levels.shape[1], BINS, dtype=torch.float64)
    counts.scatter_add_(1, train_levels.T, torch.ones_like(train_levels.T, dtype=torch.float64))
    probs = (counts + alpha) / (counts.sum(1, keepdim=True) + alpha * BINS)
    logp = probs.log().gather(1, test_levels.T)                  # (D, N)
    return float(-logp.mean() / math.log(2))


def nll_section(args, module, train, held_out) -> dict:
    n = min(args.nll_images, len(held_out))
    permutation = torch.randperm(held_out[0].numel(), generator=torch.Generator().manual_seed(0))
    shuffled = held_out[:n].flatten(1)[:, permutation].reshape(held_out[:n].shape)
    out = {"baseline": {f"alpha={a:g}": independent_pixel_bpd(train, held_out, a) for a in args.alphas},
           "num_images": n, "draws": args.nll_draws}
    print(f"\nindependent-pixel baseline on the {len(held_out)} held-out digits (per-pixel 256-bin histograms of "
          f"the {len(train)} training digits): " + ", ".join(f"{k}: {v:.4f}" for k, v in out["baseline"].items()))
    for variance in args.variances:
        rows = out[variance] = {}
        print(f"\nbits/dim, reverse variance {variance}, Monte Carlo with importance t, {args.nll_draws} draws "
              f"per image, {n} images per row:")
        print(f"{'images':<22}{'bits/dim':>10}{'MC s.e.':>9}{'image s.e.':>11}{'prior':>10}{'decoder':>9}{'seconds':>9}")
        for name, images in (("held-out", held_out[:n]), ("train", train[:n]), ("held-out, shuffled", shuffled)):
            start = time.perf_counter()
            r = image_bits_per_dim(module, images, draws=args.nll_draws, variance=variance, seed=0,
                                   batch_size=args.batch_size)
            r.pop("per_image")
            r["seconds"] = round(time.perf_counter() - start, 1)
            rows[name] = r
            print(f"{name:<22}{r['bpd']:>10.4f}{r['se']:>9.4f}{r['image_se']:>11.4f}{r['prior']:>10.2e}"
                  f"{r['decoder']:>9.4f}{r['seconds']:>9.1f}", flush=True)
        rows["gap"] = rows["held-out"]["bpd"] - rows["train"]["bpd"]
        rows["shuffled_minus_held_out"] = rows["held-out, shuffled"]["bpd"] - rows["held-out"]["bpd"]
        print(f"gap (held-out - train) {rows['gap']:.4f}; shuffled - held-out {rows['shuffled_minus_held_out']:.4f}")
        rows["exact_vs_mc"] = exact_vs_mc(args, module, held_out, variance)
    return out


def exact_vs_mc(args, module, held_out, variance: str) -> dict:
    """The full sum over all T and both Monte-Carlo forms on the same few images."""
    x = quantise(held_out[:args.exact_images]).to(module.device)
    bound, dims = VariationalBound(module.diffusion, variance), x[0].numel()
    with torch.no_grad():
        start = time.perf_counter()
        exact = full_sum(bound, module.net, x, torch.Generator().manual_seed(1), args.batch_size)
        rows = {"exact": {"bpd": float(bits_per_dim(exact["total"].mean(), dims)), "calls_per_image": bound.num_steps,
                          "seconds": round(time.perf_counter() - start, 1)}}
        for t_sampling in ("importance", "uniform"):
            mc = monte_carlo(bound, module.net, x, args.nll_draws, torch.Generator().manual_seed(2), args.batch_size,
                             t_sampling=t_sampling)
            se = float(bits_per_dim(mc["se"].pow(2).sum().sqrt() / len(x), dims))
            bpd = float(bits_per_dim(mc["total"].mean(), dims))
            rows[t_sampling] = {"bpd": bpd, "se": se, "z": (bpd - rows["exact"]["bpd"]) / se,
                                "calls_per_image": args.nll_draws}
    print(f"\nMonte Carlo vs the full sum on {len(x)} held-out images ({variance}):")
    for name, r in rows.items():
        extra = f"  s.e. {r['se']:.4f}  (MC - exact) / s.e. = {r['z']:+.2f}" if "se" in r else ""
        print(f"{name:<12}{r['bpd']:>9.4f} bits/dim  {r['calls_per_image']:>5} calls per image{extra}")
    return {"num_images": len(x), **rows}


def classify_section(args) -> dict:
    module = DiffusionModule.load(args.cfg_ckpt)
    dm = instantiate(module.hparams["data_info"]["data"])
    dm.setup("fit")
    held_out = stack_dataset(dm.val_set)
    n = min(args.classify_images, len(held_out.image))
    start = time.perf_counter()
    r = classify(module, held_out.image[:n], draws=args.draws, seed=0, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k < args.draws] + [args.draws]
    by_draws = accuracy_by_draws(r["errors"], held_out.label[:n], ks)
    classes = r["errors"].shape[1]
    print(f"\ndiffusion classifier, {n} held-out digits, {classes} classes, K draws shared by the classes:")
    print(f"{'K':>5}{'accuracy':>10}{'calls/image':>13}")
    for k, acc in by_draws.items():
        print(f"{k:>5}{acc:>10.4f}{k * classes:>13}")
    print(f"({seconds:.0f} s for K = {args.draws})")
    return {"num_images": n, "num_classes": classes, "accuracy_by_draws": {str(k): v for k, v in by_draws.items()},
            "calls_per_image": args.draws * classes, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="the make train checkpoint: <run of ddpm-train experiment=digits_ddpm>/checkpoints/last.ckpt")
    parser.add_argument("--cfg-ckpt", required=True, help="<run of ddpm-train experiment=digits_cfg>/checkpoints/last.ckpt")
    parser.add_argument("--draws", type=int, default=32, help="classifier: K draws per image")
    parser.add_argument("--classify-images", type=int, default=180)
    parser.add_argument("--nll-images", type=int, default=180)
    parser.add_argument("--nll-draws", type=int, default=32)
    parser.add_argument("--exact-images", type=int, default=8)
    parser.add_argument("--variances", nargs="+", default=["fixed_large", "fixed_small"],
                        choices=["fixed_large", "fixed_small"], help="the bound's reverse variance: beta_t, beta~_t")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.1, 1.0],
                        help="baseline smoothing: alpha added to every bin (first: the headline)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--skip", nargs="*", default=[], choices=["nll", "classify"])
    parser.add_argument("--out", default="outputs/bench/tasks_classify_nll.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    for key, command in TRAIN_COMMANDS.items():
        print(f"--{key.replace('_', '-')} {getattr(args, key)}   (made by: {command})")
    module, train, held_out = load_run(args.ckpt)
    result = {"args": vars(args), "train_commands": TRAIN_COMMANDS, "threads": torch.get_num_threads()}
    if "nll" not in args.skip:
        result["nll"] = nll_section(args, module, train, held_out)
    if "classify" not in args.skip:
        result["classify"] = classify_section(args)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
