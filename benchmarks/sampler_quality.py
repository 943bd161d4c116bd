"""Sample quality vs network calls: FD (reference features) and wall time of DDPM, DDIM (eta 0 and
1) and DPM-Solver++(2M) (ODE and SDE) at several NFE, on one trained digits checkpoint; JSON and a plot.

    python benchmarks/sampler_quality.py --ckpt outputs/train/runs/<run>/checkpoints/last.ckpt \
        [--num-samples 250] [--nfe 10 20 50 100] [--ddpm-nfe 10 20 50 100 1000] [--spacing trailing]

Every sampler starts from the same x_T (--seed, default 0). FD is against the 1,617 training digits; the
floor is the 180 held-out digits against the same (FD is biased upward at small counts, so compare
rows at the same count, not with FD values measured on more samples). Timestep spacing is the
checkpoint's sampler config unless --spacing names one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import load_run, write_json

from ddpm_lab.diffusion.samplers import SPACINGS
from ddpm_lab.evaluate import data_name
from ddpm_lab.metrics.distances import RealReference
from ddpm_lab.metrics.reference import reference_extractor, reference_name
from ddpm_lab.viz import pyplot, save_figure

SAMPLERS = {"ddpm": {"sampler": "ddpm"}, "ddim_eta0": {"sampler": "ddim", "eta": 0.0},
            "ddim_eta1": {"sampler": "ddim", "eta": 1.0}, "dpmpp_2m": {"sampler": "dpmpp_2m"},
            "dpmpp_2m_sde": {"sampler": "dpmpp_2m_sde"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num-samples", type=int, default=250)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--ddpm-nfe", type=int, nargs="+", default=[10, 20, 50, 100, 1000])
    parser.add_argument("--seed", type=int, default=0, help="x_T and noise seed (the same for every sampler)")
    parser.add_argument("--spacing", choices=SPACINGS, default=None,
                        help="timestep spacing (default: the checkpoint's sampler.spacing)")
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    parser.add_argument("--out", default="outputs/bench/sampler_quality.json")
    args = parser.parse_args()

    module, train, held_out = load_run(args.ckpt)
    info = module.hparams["data_info"]
    extractor = reference_extractor(reference_name(data_name(info), info["image_shape"][-1]))[0]
    real = RealReference(extractor, train)        # the training split's features, extracted once
    floor = real.fd(held_out)
    rows = []
    spacing = args.spacing or module.sampler.spacing
    for name in args.samplers:
        opts = dict(SAMPLERS[name], spacing=spacing)
        for nfe in (args.ddpm_nfe if name == "ddpm" else args.nfe):
            start = time.perf_counter()
            fake = module.sample(args.num_samples, seed=args.seed, batch_size=args.num_samples, steps=nfe, **opts)
            seconds = time.perf_counter() - start
            fd = real.fd(fake)
            rows.append({"sampler": name, "nfe": nfe, "fd": fd, "seconds": seconds})
            print(f"{name:<10} NFE {nfe:>5}  FD {fd:8.3f}  {seconds:7.1f} s", flush=True)
    result = {"ckpt": args.ckpt, "num_samples": args.num_samples, "seed": args.seed, "spacing": spacing, "num_train": len(train),
              "floor_fd_held_out": floor, "num_held_out": len(held_out), "rows": rows}
    out = write_json(args.out, result)
    plot(result, out.with_suffix(".png"))
    print(f"floor (180 held-out vs train): FD {floor:.3f}; wrote {out} and {out.with_suffix('.png')}")


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in SAMPLERS:
        rows = [r for r in result["rows"] if r["sampler"] == name]
        if not rows:
            continue
        ax1.plot([r["nfe"] for r in rows], [r["fd"] for r in rows], "o-", label=name)
        ax2.plot([r["nfe"] for r in rows], [r["seconds"] for r in rows], "o-", label=name)
    ax1.axhline(result["floor_fd_held_out"], color="gray", ls="--", label="floor (180 held-out)")
    for ax, label in ((ax1, f"FD ({result['num_samples']} samples, reference features)"), (ax2, "wall time (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("network calls (NFE)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    ax1.set_yscale("log")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


if __name__ == "__main__":
    main()
