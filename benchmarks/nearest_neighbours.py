"""How close samples come to the training images: memorisation vs generalisation per sampler.

    python benchmarks/nearest_neighbours.py --ckpt <run>/checkpoints/last.ckpt [--num-samples 1000] \
        [--runs ddpm:100 ddim_eta0:100 dpmpp_2m:20 dpmpp_2m_sde:20]

For every sample, the pixel L2 distance to its nearest training image (the training split the FD of
sampler_quality.py is measured against); the held-out images give the distance a new digit has. A
sampler whose samples sit much nearer the training set than held-out digits do reproduces training
images, which an FD against the training set rewards.
"""

from __future__ import annotations

import argparse

import torch
from _common import load_run, write_json
from sampler_quality import SAMPLERS


def nearest_distances(images: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Per image, the L2 distance (pixels in [-1, 1]) to its nearest training image."""
    return torch.cdist(images.flatten(1).double(), train.flatten(1).double()).min(dim=1).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--runs", nargs="+", default=["ddpm:100", "ddim_eta0:100", "dpmpp_2m:20", "dpmpp_2m_sde:20"],
                        help="sampler:NFE pairs (samplers: " + ", ".join(SAMPLERS) + ")")
    parser.add_argument("--out", default="outputs/bench/nearest_neighbours.json")
    args = parser.parse_args()

    module, train, held_out = load_run(args.ckpt)
    reference = nearest_distances(held_out, train)
    p10 = reference.quantile(0.1).item()       # 90% of new digits are farther from the training set
    rows = [{"run": "held-out digits", "n": len(held_out), "median": reference.median().item(),
             "share_below_held_out_p10": 0.1}]
    print(f"{'held-out digits':<18} median NN distance {rows[0]['median']:.3f}  (10th percentile {p10:.3f})")
    for spec in args.runs:
        name, nfe = spec.split(":")
        fake = module.sample(args.num_samples, seed=0, batch_size=args.num_samples, steps=int(nfe), **SAMPLERS[name])
        d = nearest_distances(fake, train)
        row = {"run": spec, "n": len(fake), "median": d.median().item(),
               "share_below_held_out_p10": (d < p10).double().mean().item()}
        rows.append(row)
        print(f"{spec:<18} median NN distance {row['median']:.3f}  share nearer than held-out p10 "
              f"{row['share_below_held_out_p10']:.3f}", flush=True)
    write_json(args.out, {"ckpt": args.ckpt, "num_train": len(train), "held_out_p10": p10, "rows": rows})


if __name__ == "__main__":
    main()
