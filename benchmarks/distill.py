"""Few-step students on the digits: progressive distillation, consistency distillation and reflow
against their teachers; FD (reference features) over --num-samples samples and several seeds, excess
FD = FD - floor (held-out vs training digits), sampling and distillation wall times; JSON and a table.

    python benchmarks/distill.py [--teacher <digits_ddpm run>/checkpoints/last.ckpt]
        [--flow-teacher <flow run or ckpt>] [--cfg-teacher <digits_cfg run>/checkpoints/last.ckpt]
        [--num-samples 1000] [--seeds 0 1 2]

--teacher is the DDPM teacher of progressive and consistency distillation; the default is the
`make train` model (`ddpm-train experiment=digits_ddpm logger=csv`). Reflow needs a flow teacher:
--flow-teacher, or one trained here with `ddpm-train experiment=digits_flow logger=csv` (50 epochs,
capped at 6 minutes). Each distillation is `ddpm-train stage=distill distill=<method> teacher=...`
(run in-process) with the options printed; its run folder is under --out-dir.
--cfg-teacher (`ddpm-train experiment=digits_cfg logger=csv`): its progressive student's class accuracy
at 4 steps against the guided teacher's at 20 calls (the reference classifier, every class in turn);
its rounds stop at 4 steps, the student measured.
The consistency student's two-step times are also chosen as Song et al. choose them, by search:
every pair of its training grid's times (the first among the five highest) scored by FD on
--cd-search-seeds (10 and 11, not the measured seeds); the best pair is then measured on --seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import load_run, write_json

from ddpm_lab.checkpoint_io import checkpoint_file, run_dir_of
from ddpm_lab.evaluate import data_name
from ddpm_lab.metrics.distances import RealReference, class_accuracy
from ddpm_lab.metrics.reference import reference_extractor, reference_name
from ddpm_lab.modules import DiffusionModule


def train(overrides: list[str], out: Path) -> float:
    """Run ddpm-train with these overrides into `out`; its wall time in seconds."""
    from hydra import compose, initialize_config_dir

    from ddpm_lab.cli import CONF_DIR
    from ddpm_lab.train import run

    print("ddpm-train " + " ".join(overrides), flush=True)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={out}", f"paths.log_dir={out.parent}"])
    start = time.perf_counter()
    run(cfg)
    return time.perf_counter() - start


def training_seconds(ckpt: str, default: float) -> float:
    """A run's training time: from run.json's creation to its checkpoint's last write (else `default`)."""
    path = checkpoint_file(ckpt)
    info = run_dir_of(path) / "run.json"
    try:
        created = time.mktime(time.strptime(json.loads(info.read_text())["created"], "%Y-%m-%dT%H:%M:%S"))
        return path.stat().st_mtime - created
    except (OSError, ValueError, KeyError):
        return default


def measure(module: DiffusionModule, real: RealReference, floor: float, seeds: list[int], n: int,
            classifier=None, **opts) -> dict:
    """FD over `n` samples for each seed (same x_T per seed across rows), its mean excess, wall time;
    for a class-conditional model (every class in turn) the reference classifier's accuracy too."""
    fds, seconds, accs = [], [], []
    labels = module.sampling_labels(n)
    for seed in seeds:
        start = time.perf_counter()
        fake = module.sample(n, seed=seed, batch_size=500, **opts)
        seconds.append(time.perf_counter() - start)
        fds.append(real.fd(fake))
        if labels is not None and classifier is not None:
            accs.append(class_accuracy(classifier, fake, labels))
    mean = sum(fds) / len(fds)
    # wall time: the fastest of the seeds' runs (the machine is shared: the others met more load)
    out = {"fd": fds, "fd_mean": mean, "excess": mean - floor, "seconds": min(seconds), "all_seconds": seconds,
           "options": opts}
    if accs:
        out.update(accuracy=accs, accuracy_mean=sum(accs) / len(accs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the make train checkpoint: <run of ddpm-train experiment=digits_ddpm>/checkpoints/last.ckpt")
    parser.add_argument("--flow-teacher", default=None)
    parser.add_argument("--cfg-teacher", default=None,
                        help="a class-conditional teacher (ddpm-train experiment=digits_cfg logger=csv): its progressive "
                             "student's class accuracy at 4 steps against the teacher's at 20 calls")
    parser.add_argument("--teacher-seconds", type=float, default=360.0,
                        help="the teacher's stated training time (make train: ~6 min on 2 cores), used when its "
                             "run folder does not tell and reported beside the measured one")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", default=["progressive", "consistency", "reflow"],
                        choices=["progressive", "consistency", "reflow"],
                        help="the unconditional distillations (none: only the --cfg-teacher one)")
    parser.add_argument("--start-steps", type=int, default=16)
    parser.add_argument("--steps-per-round", type=int, default=300)
    parser.add_argument("--cd-steps", type=int, default=1000)
    parser.add_argument("--cd-points", type=int, default=16, help="the consistency grid's num_points")
    parser.add_argument("--cd-search-seeds", type=int, nargs="*", default=[10, 11],
                        help="seeds of the search for the consistency student's two-step times (none: no search)")
    parser.add_argument("--reflow-pairs", type=int, default=2000)
    parser.add_argument("--reflow-steps", type=int, default=500)
    parser.add_argument("--common", nargs="*", default=["logger=csv", "optim.lr=2e-4", "optim.warmup_steps=20",
                                                          "callbacks.ema.decay=0.99", "trainer.limit_val_batches=1"])
    parser.add_argument("--out-dir", default="outputs/bench/distill")
    args = parser.parse_args()
    out = Path(args.out_dir).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")

    teacher, train_images, held_out = load_run(args.teacher)
    info = teacher.hparams["data_info"]
    extractor, classifier, _ = reference_extractor(reference_name(data_name(info), info["image_shape"][-1]))
    real = RealReference(extractor, train_images)
    floor = real.fd(held_out)
    n, seeds = args.num_samples, args.seeds
    result = {"teacher": args.teacher, "floor": floor, "num_samples": n, "seeds": seeds, "rows": [], "runs": {}}
    rows = result["rows"]

    def row(name: str, module: DiffusionModule, **opts) -> dict:
        steps = opts["steps"]
        r = {"row": name, "steps": steps, **measure(module, real, floor, seeds, n, classifier, **opts)}
        acc = f"  accuracy {r['accuracy_mean']:.3f}" if "accuracy_mean" in r else ""
        print(f"{name:<34} {steps:>3}  FD {r['fd_mean']:7.3f}  excess {r['excess']:7.3f}  "
              f"{r['seconds']:6.1f} s / {n}{acc}", flush=True)
        rows.append(r)
        return r

    print(f"floor (held-out vs train) FD {floor:.3f}", flush=True)
    row("teacher DPM-Solver++(2M)", teacher, sampler="dpmpp_2m", steps=20, spacing="linspace")
    row("teacher DPM-Solver++(2M)", teacher, sampler="dpmpp_2m", steps=4, spacing="linspace")
    row("teacher DDIM (trailing)", teacher, sampler="ddim", steps=4, spacing="trailing", eta=0.0)
    teacher_seconds = training_seconds(args.teacher, args.teacher_seconds)
    result["teacher_train_seconds"] = teacher_seconds
    result["stated_teacher_seconds"] = args.teacher_seconds

    def progressive(teacher_ckpt: str, name: str, steps_measured: tuple[int, ...]) -> None:
        run_dir = out / f"{name}-{stamp}"
        seconds = train(["stage=distill", "distill=progressive", f"teacher={teacher_ckpt}",
                         f"distill.start_steps={args.start_steps}", f"distill.final_steps={min(steps_measured)}",
                         f"distill.steps_per_round={args.steps_per_round}", *args.common], run_dir)
        result["runs"][name] = {"dir": str(run_dir), "seconds": seconds}
        for steps in steps_measured:        # the round's checkpoint (the last round's: last.ckpt)
            found = [*sorted((run_dir / "checkpoints").glob(f"round*-{steps}steps.ckpt")),
                     run_dir / "checkpoints" / "last.ckpt"]
            student = DiffusionModule.load(found[0])        # its own sampler: DDIM, `steps` steps
            if student.sampler.steps == steps:
                row(f"{name} student", student, **student.sampler.options())

    if "progressive" in args.methods:
        progressive(args.teacher, "progressive", (4, 2, 1))

    if args.cfg_teacher:        # class-conditional: accuracy at 4 steps vs the guided teacher at 20 calls
        cfg_teacher = DiffusionModule.load(args.cfg_teacher)
        result["cfg_teacher"] = args.cfg_teacher
        result["cfg_teacher_train_seconds"] = training_seconds(args.cfg_teacher, args.teacher_seconds)
        row("cfg teacher DPM-Solver++(2M)", cfg_teacher, sampler="dpmpp_2m", steps=20, spacing="linspace")
        row("cfg teacher DDIM (trailing)", cfg_teacher, sampler="ddim", steps=4, spacing="trailing", eta=0.0)
        progressive(args.cfg_teacher, "progressive_cfg", (4,))

    if "consistency" in args.methods:
        run_dir = out / f"consistency-{stamp}"
        seconds = train(["stage=distill", "distill=consistency", f"teacher={args.teacher}",
                         f"distill.steps={args.cd_steps}", f"distill.num_points={args.cd_points}", *args.common], run_dir)
        result["runs"]["consistency"] = {"dir": str(run_dir), "seconds": seconds}
        student = DiffusionModule.load(run_dir)
        for steps in (4, 2, 1):
            row("consistency student", student, **{**student.sampler.options(), "steps": steps})
        if args.cd_search_seeds:
            times = search_two_step_times(student, real, args.cd_search_seeds, n, args.cd_points)
            result["cd_search"] = {"seeds": args.cd_search_seeds, **times}
            row(f"consistency student at {times['best']}", student,
                **{**student.sampler.options(), "steps": 2, "times": times["best"]})

    if "reflow" in args.methods:
        flow_teacher = args.flow_teacher
        if flow_teacher is None:
            flow_dir = out / f"flow-teacher-{stamp}"
            result["flow_teacher_train_seconds"] = train(["experiment=digits_flow", "logger=csv"], flow_dir)
            flow_teacher = str(flow_dir)
        else:
            result["flow_teacher_train_seconds"] = training_seconds(flow_teacher, args.teacher_seconds)
        result["flow_teacher"] = flow_teacher
        flow = DiffusionModule.load(flow_teacher)
        row("flow teacher Euler", flow, sampler="flow_euler", steps=20)
        row("flow teacher Euler", flow, sampler="flow_euler", steps=4)
        run_dir = out / f"reflow-{stamp}"
        seconds = train(["stage=distill", "distill=reflow", f"teacher={flow_teacher}",
                         f"distill.num_pairs={args.reflow_pairs}", f"distill.steps={args.reflow_steps}",
                         *args.common], run_dir)
        result["runs"]["reflow"] = {"dir": str(run_dir), "seconds": seconds}
        student = DiffusionModule.load(run_dir)
        for steps in (4, 2, 1):
            row("reflow student (Euler)", student, **{**student.sampler.options(), "steps": steps})

    summarise(result)
    write_json(out / "distill.json", result)


def search_two_step_times(student: DiffusionModule, real: RealReference, seeds: list[int], n: int,
                          num_points: int) -> dict:
    """Song et al.'s choice of the multistep times by search: every pair tau_1 > tau_2 of the
    student's training grid with tau_1 among its five highest times, scored by the mean FD over
    `seeds` (seeds other than the measured ones); the best pair and every score."""
    from ddpm_lab.diffusion.samplers.consistency_loop import consistency_grid

    grid = consistency_grid(student.diffusion, num_points, "trailing")[:-1]
    scores = []
    for i, first in enumerate(grid[:5]):
        for second in grid[i + 1:]:
            fds = [real.fd(student.sample(n, seed=seed, batch_size=500, steps=2, times=[first, second]))
                   for seed in seeds]
            scores.append({"times": [first, second], "fd": sum(fds) / len(fds)})
    best = min(scores, key=lambda score: score["fd"])
    print(f"two-step times searched on seeds {seeds}: best {best['times']} (FD {best['fd']:.3f}) of {len(scores)}",
          flush=True)
    return {"best": best["times"], "scores": scores}


def summarise(result: dict) -> None:
    """The issue's floors, as ratios of excess FD, and the wall-time ratios."""
    rows = result["rows"]

    def find(name: str, steps: int) -> dict | None:
        return next((r for r in rows if r["row"].startswith(name) and r["steps"] == steps), None)

    checks = {}
    for method in ("progressive", "consistency", "reflow"):
        s4, s2 = find(f"{method} student", 4), find(f"{method} student", 2)
        if s4 is None or s2 is None:
            continue
        if method == "reflow":       # against its own (flow) teacher: Euler at 20 and at 4 steps
            ref20, best4 = find("flow teacher", 20), find("flow teacher", 4)["excess"]
        else:
            ref20 = find("teacher DPM-Solver++", 20)
            best4 = min(find("teacher DPM-Solver++", 4)["excess"], find("teacher DDIM", 4)["excess"])
        checks[method] = {
            "4 steps / teacher 20 calls (<= 1.5)": s4["excess"] / ref20["excess"],
            "4 steps / teacher best 4-step (<= 0.8)": s4["excess"] / best4,
            "2 steps / teacher 20 calls (<= 2.5)": s2["excess"] / ref20["excess"],
            "sampling speed-up, 4 steps vs teacher 20 (>= 4)": ref20["seconds"] / s4["seconds"],
            "distillation / teacher training time (<= 2)": result["runs"][method]["seconds"] / result[
                "flow_teacher_train_seconds" if method == "reflow" else "teacher_train_seconds"],
            "distillation / stated teacher time (--teacher-seconds)":
                result["runs"][method]["seconds"] / result["stated_teacher_seconds"],
        }
    searched, ref20 = find("consistency student at", 2), find("teacher DPM-Solver++", 20)
    if searched is not None and "consistency" in checks:
        checks["consistency"]["2 steps at the searched times / teacher 20 calls (<= 2.5)"] = (
            searched["excess"] / ref20["excess"])
    cfg4, cfg20 = find("progressive_cfg student", 4), find("cfg teacher DPM-Solver++", 20)
    if cfg4 is not None and cfg20 is not None:
        checks["progressive_cfg"] = {
            "accuracy, 4 steps - teacher 20 calls (>= -0.03)": cfg4["accuracy_mean"] - cfg20["accuracy_mean"],
            "distillation / teacher training time (<= 2)":
                result["runs"]["progressive_cfg"]["seconds"] / result["cfg_teacher_train_seconds"],
        }
    result["checks"] = checks
    print(f"\nfloor FD {result['floor']:.3f}; teacher training {result['teacher_train_seconds']:.0f} s")
    print(f"{'row':<34} {'steps':>5} {'FD (mean)':>10} {'excess':>8} {'s/1000':>8}")
    for r in rows:
        print(f"{r['row']:<34} {r['steps']:>5} {r['fd_mean']:>10.3f} {r['excess']:>8.3f} {r['seconds']:>8.1f}")
    for method, c in checks.items():
        print(f"\n{method} (distillation {result['runs'][method]['seconds']:.0f} s)")
        for k, v in c.items():
            print(f"  {k}: {v:.2f}")
    print("\n| model | steps (network calls) | FD, seeds " + ", ".join(map(str, result["seeds"]))
          + " | mean | excess FD | s / " + str(result["num_samples"]) + " samples |\n|---|---|---|---|---|---|")
    for r in rows:
        fds = ", ".join(f"{v:.3f}" for v in r["fd"])
        acc = f" (accuracy {r['accuracy_mean']:.3f})" if "accuracy_mean" in r else ""
        print(f"| {r['row']}{acc} | {r['steps']} | {fds} | {r['fd_mean']:.3f} | {r['excess']:.3f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
