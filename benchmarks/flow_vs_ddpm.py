"""Flow matching vs DDPM, UNet vs diffusion transformer, on the same digits and the same training
time: FD (reference features) and wall time at 4, 10, 20 and 50 network calls.

    python benchmarks/flow_vs_ddpm.py [--minutes 6] [--num-samples 1000] [--nfe 4 10 20 50]
                                      [--models ddpm_unet flow_unet flow_dit] [--reuse]
                                      [--overrides net.dim=96 ...]

Each model is trained by `ddpm-train` for --minutes of wall time (trainer.max_time; run it on an
otherwise idle machine, one model after the other), then sampled with each of its candidate
samplers at every NFE budget; the table gives every row and the best sampler per budget. The
number of network calls is counted (a forward hook on the network), not assumed: Heun takes
2 calls per step but 1 on its last. FD is against the 1,617 training digits; the floor is the
180 held-out digits against the same. --reuse samples runs already trained in --out-dir.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import load_run, write_json

from ddpm_lab.checkpoint_io import read_checkpoint
from ddpm_lab.evaluate import data_name
from ddpm_lab.metrics.distances import RealReference
from ddpm_lab.metrics.reference import reference_extractor, reference_name

MODELS = {
    "ddpm_unet": ["experiment=digits_ddpm"],
    "flow_unet": ["experiment=digits_flow"],
    "flow_dit": ["experiment=digits_flow", "net=dit_small"],
}
# candidate samplers: name -> (sample() options, steps for an NFE budget)
DDPM_SAMPLERS = {
    "ddim": ({"sampler": "ddim", "eta": 0.0, "spacing": "trailing"}, lambda nfe: nfe),
    "dpmpp_2m": ({"sampler": "dpmpp_2m", "spacing": "linspace"}, lambda nfe: nfe),
}
FLOW_SAMPLERS = {
    "flow_euler": ({"sampler": "flow_euler"}, lambda nfe: nfe),
    "flow_heun": ({"sampler": "flow_heun"}, lambda nfe: (nfe + 1) // 2),
    "flow_dpmpp": ({"sampler": "diffusers", "scheduler": "DPMSolverMultistepScheduler"}, lambda nfe: nfe),
}


def train(name: str, run_dir: Path, minutes: float, extra: list[str]) -> None:
    hhmmss = time.strftime("%H:%M:%S", time.gmtime(minutes * 60))
    cmd = [sys.executable, "-m", "ddpm_lab.train", *MODELS[name], *extra, "logger=csv",
           f"trainer.max_time=00:{hhmmss}", "trainer.max_epochs=100000",
           "callbacks.sample_grid.every_n_epochs=0", f"hydra.run.dir={run_dir}"]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


class CallCounter:
    """Counts the network's forward calls (a doubled guidance batch is one call)."""

    def __init__(self, net) -> None:
        self.calls = 0
        net.register_forward_hook(self.hook)

    def hook(self, *_) -> None:
        self.calls += 1


def evaluate(name: str, ckpt: Path, nfes: list[int], num_samples: int, seed: int) -> dict:
    module, train_images, held_out = load_run(str(ckpt))
    info = module.hparams["data_info"]
    extractor = reference_extractor(reference_name(data_name(info), info["image_shape"][-1]))[0]
    real = RealReference(extractor, train_images)
    counter = CallCounter(module.net)
    flow = type(module.diffusion).__name__ == "FlowMatching"
    rows = []
    for sampler, (options, steps_for) in (FLOW_SAMPLERS if flow else DDPM_SAMPLERS).items():
        for nfe in nfes:
            counter.calls = 0
            start = time.perf_counter()
            fake = module.sample(num_samples, seed=seed, batch_size=num_samples, steps=steps_for(nfe), **options)
            seconds = time.perf_counter() - start
            fd = real.fd(fake)
            rows.append({"sampler": sampler, "budget": nfe, "nfe": counter.calls, "fd": fd, "seconds": seconds})
            print(f"{name:<10} {sampler:<11} NFE {counter.calls:>3} (budget {nfe:>3})  FD {fd:8.3f}  {seconds:6.1f} s",
                  flush=True)
    return {"ckpt": str(ckpt), "global_step": read_checkpoint(ckpt)["global_step"], "rows": rows,
            "floor_fd_held_out": real.fd(held_out),
            "parameters": sum(p.numel() for p in module.net.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 10, 20, 50])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="outputs/bench/flow_vs_ddpm")
    parser.add_argument("--reuse", action="store_true", help="sample the runs already in --out-dir")
    parser.add_argument("--overrides", nargs="*", default=[], help="ddpm-train overrides for every model")
    args = parser.parse_args()

    out_dir = Path(args.out_dir)
    result = {"minutes": args.minutes, "num_samples": args.num_samples, "seed": args.seed,
              "overrides": args.overrides, "models": {}}
    for name in args.models:
        run_dir = out_dir / name
        if not args.reuse:
            train(name, run_dir, args.minutes, args.overrides)
    for name in args.models:
        ckpt = out_dir / name / "checkpoints" / "last.ckpt"
        result["models"][name] = evaluate(name, ckpt, args.nfe, args.num_samples, args.seed)
    write_json(out_dir / "flow_vs_ddpm.json", result)
    print_table(result, args.nfe)


def print_table(result: dict, nfes: list[int]) -> None:
    print(f"\nbest sampler per budget: FD ({result['num_samples']} samples) [NFE, sampler]")
    print(f"{'model':<10} {'steps':>6} " + " ".join(f"{f'budget {n}':>24}" for n in nfes))
    for name, model in result["models"].items():
        cells = []
        for n in nfes:
            best = min((r for r in model["rows"] if r["budget"] == n), key=lambda r: r["fd"])
            cells.append(f"{best['fd']:7.2f} [{best['nfe']:>2}, {best['sampler']}]".rjust(24))
        print(f"{name:<10} {model['global_step']:>6} " + " ".join(cells))
    floors = {round(m["floor_fd_held_out"], 3) for m in result["models"].values()}
    print(f"floor (180 held-out vs train): FD {', '.join(map(str, sorted(floors)))}")


if __name__ == "__main__":
    main()
