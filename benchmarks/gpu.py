"""The DDPM paper's CIFAR-10 network (net=unet_ddpm_cifar10, 35.7M parameters) at full speed on one
GPU, at 32x32 with batch 128, in one run:

  speed     training images/s of our Lightning step and of a plain PyTorch loop on the same network
            (benchmarks/train_step.py, with EMA), in fp32, bf16-mixed and bf16 + channels_last; peak memory
  compile   bf16 + fused AdamW + torch.compile in inductor's reduce-overhead mode (CUDA graphs), as
            `ddpm-train compile=reduce-overhead +optim.optimizer.fused=true` runs it (ours, plain)
  sampling  `sample()` (DDPM) wall time against NFE x one forward (benchmarks/sampling.py), fp32 and bf16
  train     experiment=mnist_ddpm with this network, trainer=gpu (bf16-mixed), for --train-seconds
  eval      ddpm-eval of that run: FD in the mnist32 reference features beside the floor

    python benchmarks/gpu.py [--out outputs/bench/gpu] [--budget 570]     (make bench-gpu)
    bash benchmarks/gpu.sh                       (the device machine: installs the carried .whl/ first)
    python benchmarks/gpu.py --device cpu --tiny (a smoke run of every phase on a tiny network)

Each phase runs in its own process under a time limit inside --budget seconds in all, so a phase
that runs out is reported and the others still run. Rows are printed as they are measured and
<out>/gpu.json is rewritten after each one; each phase's log is <out>/<phase>.log.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

PHASES = {"speed": 120, "compile": 210, "sampling": 40, "train": None, "eval": 60}   # seconds (train: see below)
GOALS = {"bf16 img/s": 5376, "ours/plain": 1.03, "sampler/floor": 1.02}
EAGER = {"fp32": ("32-true", False), "bf16": ("bf16-mixed", False), "bf16+channels_last": ("bf16-mixed", True)}
CUDA_GRAPHS = {"bf16+fused+CUDA graphs": ("bf16-mixed", False, "reduce-overhead", True)}


def emit(line: str) -> None:
    """A table row on the terminal (a phase's library output goes to its log)."""
    TABLE.write(line + "\n")
    TABLE.flush()


TABLE = sys.stdout


def update_json(path: Path, key: str, value) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


def settings(args) -> dict:
    """Sizes of the real run (one H100) or of the --tiny smoke run."""
    if args.tiny:
        return {"net": "unet_tiny", "batch": 8, "steps": 8, "repeats": 1, "sample_batch": 4, "nfe": 3,
                "eval_samples": 130}
    return {"net": "unet_ddpm_cifar10", "batch": 128, "steps": 50, "repeats": 1, "sample_batch": 256, "nfe": 100,
            "eval_samples": 1500}


# ----- phases run in a child process -----------------------------------------------------------
def compose_cfg(net: str):
    from hydra import compose, initialize_config_dir

    from ddpm_lab.cli import CONF_DIR
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["experiment=mnist_ddpm", f"net={net}", "paths.output_dir=."])


def measure_step(loop: str, cfg, batch, s: dict, args, precision: str, channels_last: bool,
                 compile_value, fused: bool) -> dict:
    """One training loop's ms/step, images/s and peak memory (train_step.py's loops, with EMA); the
    network prepared as ddpm-train's `channels_last` and `compile` do, AdamW fused with `fused`."""
    from omegaconf import open_dict
    from train_step import run_lightning, run_plain

    from ddpm_lab.build import prepare_network

    def prepare(module):
        prepare_network(module, {"channels_last": channels_last, "compile": compile_value})

    cuda = args.device == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if loop == "ours":
        cfg = cfg.copy()
        if fused:
            with open_dict(cfg):
                cfg.optim.optimizer.fused = True
        sec = run_lightning(cfg, batch, s["steps"], True, "gpu" if cuda else "cpu", precision, prepare,
                            num_workers=2 if cuda else 0)
    else:
        sec = run_plain(cfg, batch, s["steps"], True, args.device, precision.startswith("bf16"), prepare, fused)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"ms_per_step": 1000 * sec, "images_per_s": len(batch) / sec, "peak_gib": peak}


def speed_rows(variants: dict, args, json_key: str, loops=("ours", "plain")) -> None:
    """Rows of (variant, loop) measurements, interleaved over the repeats; the median per cell."""
    from ddpm_lab.data.mnist import load_mnist_tensors

    s = settings(args)
    cfg = compose_cfg(s["net"])
    batch = load_mnist_tensors(32)[0][: s["batch"]]
    out = Path(args.out) / "gpu.json"
    rows = {}
    emit(f"{'variant':<28}{'loop':<7}{'ms/step':>9}{'img/s':>9}{'peak GiB':>10}{'ours/plain':>12}")
    for name, (precision, channels_last, compile_value, fused) in variants.items():
        runs: dict[str, list[dict]] = {loop: [] for loop in loops}
        for _ in range(s["repeats"] if compile_value is None else 1):
            for loop in loops:
                runs[loop].append(measure_step(loop, cfg, batch, s, args, precision, channels_last, compile_value,
                                               fused))
        row = {loop: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for loop, rs in runs.items()}
        if "plain" in row:
            row["ours_over_plain"] = row["ours"]["ms_per_step"] / row["plain"]["ms_per_step"]
        rows[name] = row
        update_json(out, json_key, {"batch": s["batch"], "net": s["net"], "steps": s["steps"], "rows": rows})
        for loop in loops:
            r = row[loop]
            ratio = f"{row['ours_over_plain']:>12.3f}" if loop == "plain" else ""
            emit(f"{name:<28}{loop:<7}{r['ms_per_step']:>9.1f}{r['images_per_s']:>9.0f}{r['peak_gib']:>10.2f}{ratio}")


def phase_speed(args) -> None:
    speed_rows({k: (p, cl, None, False) for k, (p, cl) in EAGER.items()}, args, "speed")


def phase_compile(args) -> None:
    speed_rows(CUDA_GRAPHS, args, "compile")


class Autocast(torch.nn.Module):
    """The network under bf16 autocast, returning float32 (the sampler's dtype)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, cond=None):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.net(x, t, cond).float()


def phase_sampling(args) -> None:
    from sampling import time_forward, time_ours
    from train_step import make_module

    s = settings(args)
    cfg = compose_cfg(s["net"])
    shape = (s["sample_batch"], 1, 32, 32)
    module = make_module(cfg, torch.zeros(shape)).to(args.device).eval()
    x = torch.randn(shape, device=args.device)
    result = {"shape": list(shape), "nfe": s["nfe"], "sampler": "ddpm"}
    emit(f"{'sampling':<12}{'forward ms':>11}{'NFE x fwd s':>13}{'sample() s':>12}{'/ floor':>9}{'peak GiB':>10}")
    for name, net in (("fp32", module.net), ("bf16", Autocast(module.net))):
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs = [(time_forward(net, x, args.device), time_ours(net, module.diffusion, shape, s["nfe"], args.device))
                for _ in range(3)]
        fwd, wall = (statistics.median(r[i] for r in runs) for i in (0, 1))
        floor = s["nfe"] * fwd
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
        result[name] = {"forward_ms": 1000 * fwd, "floor_s": floor, "sample_s": wall,
                        "sample_over_floor": wall / floor, "peak_gib": peak}
        update_json(Path(args.out) / "gpu.json", "sampling", result)
        emit(f"{name:<12}{1000 * fwd:>11.2f}{floor:>13.3f}{wall:>12.3f}{wall / floor:>9.3f}{peak:>10.2f}")


# ----- the driver ------------------------------------------------------------------------------
def train_command(args, run_dir: Path) -> list[str]:
    s = settings(args)
    seconds = int(args.train_seconds)
    return [sys.executable, "-m", "ddpm_lab.train", "experiment=mnist_ddpm", f"net={s['net']}", "logger=csv",
            f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}", "++trainer.benchmark=true",
            f"trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}", "trainer.max_epochs=100000",
            "trainer.check_val_every_n_epoch=100000", f"data.batch_size={s['batch']}",
            f"data.num_workers={2 if args.device == 'cuda' else 0}", "optim.lr=2e-4", "optim.warmup_steps=200",
            "callbacks.ema.decay=0.999", "callbacks.sample_grid.every_n_epochs=0", f"sampler.steps={s['nfe']}",
            f"hydra.run.dir={run_dir}"]


def eval_command(args, run_dir: Path, eval_dir: Path) -> list[str]:
    s = settings(args)
    return [sys.executable, "-m", "ddpm_lab.evaluate", f"ckpt_path={run_dir}/checkpoints/last.ckpt",
            f"num_samples={s['eval_samples']}", "batch_size=500", f"sampler.steps={s['nfe']}",
            f"device={args.device}", f"hydra.run.dir={eval_dir}"]


def report_train(args, run_dir: Path) -> None:
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    step = max(int(r["step"]) for r in rows if r.get("step"))
    loss = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    batch = settings(args)["batch"]
    result = {"steps": step, "seconds": args.train_seconds, "images_per_s": step * batch / args.train_seconds,
              "last_loss": loss[-1] if loss else None, "run_dir": str(run_dir)}
    update_json(Path(args.out) / "gpu.json", "train", result)
    emit(f"mnist_ddpm: {step} steps of {batch} in {args.train_seconds:.0f} s (max_time) = "
         f"{result['images_per_s']:.0f} img/s with data loading, EMA, logging; last loss {result['last_loss']}")


def report_eval(args, eval_dir: Path) -> None:
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    update_json(Path(args.out) / "gpu.json", "eval", metrics)
    for key, value in metrics["model"].items():
        if not key.endswith("_std"):
            floor = metrics["floor"].get(key)
            emit(f"eval {key:<8} model {value:.4f}   floor {floor if floor is None else round(floor, 4)}"
                 f"   ({metrics['num_generated']} generated, {metrics['sampler']['name']} "
                 f"{metrics['sampler']['steps']} steps, {metrics['sample_seconds']} s)")
    for name in ("samples.png", "metrics.json"):
        (Path(args.out) / f"eval_{name}").write_bytes((eval_dir / name).read_bytes())


def run_phase(name: str, command: list[str], limit: float, out: Path) -> str:
    """Run one phase's command (output to <out>/<name>.log, table rows to the terminal); at the
    limit its whole process group is killed."""
    emit(f"\n== {name} (limit {limit:.0f} s)")
    start = time.perf_counter()
    table_fd = os.dup(TABLE.fileno())
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                pass_fds=(table_fd,), env={**os.environ, "GPU_BENCH_TABLE_FD": str(table_fd)})
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else f"failed (exit {rc}; see {name}.log)"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = "timed out"
    os.close(table_fd)
    seconds = time.perf_counter() - start
    update_json(out / "gpu.json", f"phase_{name}", {"status": status, "seconds": round(seconds, 1)})
    emit(f"== {name}: {status} in {seconds:.0f} s")
    return status


def summary(out: Path) -> None:
    data = json.loads((out / "gpu.json").read_text())
    best = [(name, row["ours"]["images_per_s"], row.get("ours_over_plain"))
            for key in ("speed", "compile")
            for name, row in (data.get(key) or {}).get("rows", {}).items() if name.startswith("bf16")]
    emit(f"\nGPU: {data.get('gpu')}   (goals: bf16 >= {GOALS['bf16 img/s']} img/s, ours/plain <= "
         f"{GOALS['ours/plain']}, sampler/floor <= {GOALS['sampler/floor']})")
    for name, ips, ratio in best:
        emit(f"  ours {name:<28} {ips:>7.0f} img/s   ours/plain {ratio if ratio is None else round(ratio, 3)}")
    for name, row in ((k, v) for k, v in (data.get("sampling") or {}).items() if isinstance(v, dict)):
        emit(f"  sampler {name}: {row['sample_over_floor']:.3f} x (NFE x forward)")
    ev = data.get("eval")
    for key in (k for k in (ev or {}).get("model", {}) if k.startswith("fd") and not k.endswith("_std")):
        emit(f"  mnist_ddpm {key} {ev['model'][key]:.4f}   floor {ev['floor'].get(key)}")


def main() -> None:
    global TABLE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny network and sizes (smoke run)")
    parser.add_argument("--budget", type=float, default=570, help="seconds for all phases together")
    parser.add_argument("--train-seconds", type=float, default=None, help="mnist_ddpm's max_time (default 100; 20 tiny)")
    parser.add_argument("--phase", choices=list(PHASES), help="run one phase here (the driver's children)")
    args = parser.parse_args()
    args.train_seconds = args.train_seconds or (20 if args.tiny else 100)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True      # fixed shapes: cuDNN picks its fastest kernels
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.phase:
        TABLE = os.fdopen(int(os.environ["GPU_BENCH_TABLE_FD"]), "w") if "GPU_BENCH_TABLE_FD" in os.environ else sys.stdout
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        globals()[f"phase_{args.phase}"](args)
        return
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    (out / "gpu.json").write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "settings": settings(args)}) + "\n")
    emit(f"device: {gpu}; torch {torch.__version__}; net={settings(args)['net']}; budget {args.budget:.0f} s")
    deadline = time.perf_counter() + args.budget
    own = [sys.executable, __file__, "--out", str(out), "--device", args.device] + (["--tiny"] if args.tiny else [])
    runs = Path(os.environ.get("DDPM_LAB_OUTPUTS", "outputs")) / "gpu_bench" / time.strftime("%Y%m%d-%H%M%S")
    run_dir, eval_dir = runs / "train", runs / "eval"
    for name, limit in PHASES.items():
        limit = args.train_seconds + (60 if args.tiny else 40) if name == "train" else limit * (3 if args.tiny else 1)
        limit = min(limit, deadline - time.perf_counter())
        if limit < 10:
            emit(f"\n== {name}: skipped (budget spent)")
            continue
        if name == "train":
            if run_phase(name, train_command(args, run_dir), limit, out) == "ok":
                report_train(args, run_dir)
        elif name == "eval":
            if (run_dir / "checkpoints" / "last.ckpt").is_file() and run_phase(
                    name, eval_command(args, run_dir, eval_dir), limit, out) == "ok":
                report_eval(args, eval_dir)
        else:
            run_phase(name, own + ["--phase", name], limit, out)
    summary(out)


if __name__ == "__main__":
    main()
