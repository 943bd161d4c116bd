"""Kill and resume: a `ddpm-train` run SIGKILLed at random moments, resumed with ckpt_path=<run> each time.

    python benchmarks/kill_resume.py [--kills 5] [--write-kills 2] [--max-steps 100] [--seed 0]

The real console script runs as a subprocess (its own process group) on a tiny config whose
ModelCheckpoint writes after every training step (`last.ckpt`, and the best checkpoint when val/loss
has improved). Each attempt is SIGKILLed once it has made progress (written a new `last.ckpt`):
kind "step" at a random delay after that, kind "write" the moment a temporary checkpoint file
(`.<name>.ckpt.tmp-<host>-<pid>`, ddpm_lab/checkpoint_io.py) appears in the checkpoints folder, after
letting a random number of writes go. After each kill every `*.ckpt` under the run folder is
loaded with torch.load, and the run is resumed with the same overrides plus `ckpt_path=<run folder>`.
A kill is survived when the resume after it starts from the step in `last.ckpt` (run.json records
each resume's step) and writes a later `last.ckpt`; after the last kill the resume runs to the
end, with exit status 0 and the final `last.ckpt` at global_step == max_steps. Temporary files
left by a kill are counted, not loaded (they are not `*.ckpt`); the resume's next write of the
same checkpoint removes them. The moments come from a seeded
RNG; what a kill hits still depends on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from _common import write_json

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / ".venv" / "bin" / "ddpm-train"
POLL_S = 0.001
TEMP = ".tmp-"          # AtomicCheckpointIO's temporary files: .<name>.tmp-<host>-<pid>


def overrides(max_steps: int) -> list[str]:
    """A tiny, fast config whose ModelCheckpoint writes after every training step."""
    return ["net=unet_tiny", "logger=csv", "data.batch_size=16", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=1", "trainer.max_epochs=-1", f"trainer.max_steps={max_steps}",
            "sampler.steps=2", "~callbacks.sample_grid", "+callbacks.model_checkpoint.every_n_train_steps=1"]


@dataclass
class Kill:
    """One SIGKILL, what it left on disk, and the resume after it."""

    number: int
    kind: str                          # "step" (random delay) or "write" (a temporary file appeared)
    killed: str                        # the process killed: "fresh" run or "resume"
    delay_s: float | None = None       # step: seconds after the attempt's first new last.ckpt
    writes_let_go: int | None = None   # write: temporary files let go before the one killed in
    killed_in: str | None = None       # write: the temporary file that triggered the kill
    tmp_at_kill: list[str] = field(default_factory=list)   # temporary files in checkpoints/ at the kill
    cut: dict[str, int] = field(default_factory=dict)      # temporary files this kill left: name -> bytes
    step: int | None = None            # global_step of last.ckpt after the kill (the resume's start)
    checkpoints: int = 0               # *.ckpt files under the run folder after the kill
    unloadable: list[str] = field(default_factory=list)
    resumed_from: int | None = None    # global_step run.json records for the resume after this kill
    reached: int | None = None         # last.ckpt's step when that resume was killed or ended
    resumed_ok: bool | None = None
    note: str = ""


def temp_names(folder: Path) -> set[str]:
    try:
        return {n for n in os.listdir(folder) if TEMP in n}
    except FileNotFoundError:
        return set()


def temp_files(run: Path) -> dict[str, int]:
    """Temporary files anywhere in the run folder (relative path -> bytes)."""
    return {str(p.relative_to(run)): p.stat().st_size for p in sorted(run.rglob(f"*{TEMP}*")) if p.is_file()}


def global_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def load_all(run: Path) -> tuple[int, list[str]]:
    """(number of *.ckpt files under the run folder, those torch.load fails on, with the error)."""
    paths = sorted(run.rglob("*.ckpt"))
    bad = []
    for path in paths:
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # any failure to load is the finding
            bad.append(f"{path.relative_to(run)}: {type(err).__name__}: {err}")
    return len(paths), bad


def resume_steps(run: Path) -> list[int | None]:
    """The global_step of each resume recorded in run.json, in order."""
    try:
        info = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return []
    return [r.get("global_step") for r in info.get("resumes", [])]


def stamp(path: Path) -> tuple[int, int] | None:
    """(inode, mtime): changes whenever the file is replaced."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


ENV = {**os.environ, "WANDB_MODE": "offline"}


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([str(TRAIN), *args], cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class Exited(Exception):
    """The training process ended (or stalled) before it was killed."""


def wait_for(proc: subprocess.Popen, done: Callable[[], object], timeout: float) -> object:
    """Poll `done()` every millisecond until it returns something true; Exited if the process ends first."""
    limit = time.monotonic() + timeout
    while True:
        got = done()
        if got:
            return got
        if proc.poll() is not None:
            raise Exited(f"exit status {proc.returncode}")
        if time.monotonic() > limit:
            raise Exited(f"nothing happened in {timeout:.0f} s")
        time.sleep(POLL_S)


def replaced(path: Path, before: tuple[int, int] | None) -> Callable[[], bool]:
    return lambda: (s := stamp(path)) is not None and s != before


def after(end: float) -> Callable[[], bool]:
    return lambda: time.monotonic() >= end


class TempWatcher:
    """Reports a temporary file the moment it appears (AtomicCheckpointIO reuses one name per target
    and process, so an appearance is a name absent at the previous poll)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.present = temp_names(folder)

    def appeared(self) -> str | None:
        now = temp_names(self.folder)
        new, self.present = now - self.present, now
        return min(new) if new else None


def tail(log: Path, n: int = 2) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def judge_resume(k: Kill, run: Path, resumes: int, reached: int | None) -> None:
    """Fill in how the resume after kill `k` went: from the right step, and beyond it."""
    steps = resume_steps(run)
    k.resumed_from = steps[resumes - 1] if len(steps) >= resumes else None
    k.reached = reached
    k.resumed_ok = (k.resumed_from is not None and k.resumed_from == k.step
                    and reached is not None and k.step is not None and reached > k.step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--write-kills", type=int, default=2, help="how many kills are sent into a checkpoint write")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--max-delay", type=float, default=1.0, help="step kills: uniform delay in [0, this] s")
    parser.add_argument("--max-let-go", type=int, default=3, help="write kills: let up to this many writes go")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds an attempt may take to progress")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="default: outputs/bench/kill_resume/<time>")
    parser.add_argument("--out", default="outputs/bench/kill_resume.json")
    args = parser.parse_args()
    if not 0 <= args.write_kills <= args.kills:
        parser.error("--write-kills must be between 0 and --kills")

    rng = random.Random(args.seed)
    kinds = ["write"] * args.write_kills + ["step"] * (args.kills - args.write_kills)
    rng.shuffle(kinds)
    work = Path(args.workdir or ROOT / "outputs" / "bench" / "kill_resume" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    run, logs = work.resolve() / "run", work.resolve() / "logs"
    if run.exists():
        parser.error(f"{run} exists: choose a new --workdir")
    logs.mkdir(parents=True, exist_ok=True)
    ckpts = run / "checkpoints"
    last = ckpts / "last.ckpt"
    fresh = [*overrides(args.max_steps), f"hydra.run.dir={run}"]
    resume = [*overrides(args.max_steps), f"ckpt_path={run}"]

    kills: list[Kill] = []
    resumes = 0
    started = time.monotonic()
    cmd, killed = fresh, "fresh"
    for number, kind in enumerate(kinds, 1):
        log = logs / f"attempt{number}.log"
        k = Kill(number, kind, killed)
        left_before = temp_files(run) if run.exists() else {}
        before = stamp(last)
        proc = start(cmd, log)
        try:
            # never before the attempt has written a new last.ckpt: a fresh run then has something to
            # resume, and a resume has shown that it continues
            wait_for(proc, replaced(last, before), args.timeout)
            if kind == "step":
                k.delay_s = rng.uniform(0.0, args.max_delay)
                wait_for(proc, after(time.monotonic() + k.delay_s), args.timeout)
            else:
                k.writes_let_go = rng.randint(0, args.max_let_go)
                watcher = TempWatcher(ckpts)
                for _ in range(k.writes_let_go + 1):
                    k.killed_in = str(wait_for(proc, watcher.appeared, args.timeout))
            k.tmp_at_kill = sorted(temp_names(ckpts))
            kill(proc)
        except Exited as err:
            kill(proc)
            k.note = f"attempt ended before the kill: {err}: {tail(log)}"
        k.cut = {name: size for name, size in temp_files(run).items() if name not in left_before}
        k.checkpoints, k.unloadable = load_all(run)
        k.step = global_step(last) if last.is_file() else None
        if killed == "resume":
            judge_resume(kills[-1], run, resumes, k.step)
        kills.append(k)
        print(f"kill {number} ({kind}): last.ckpt at step {k.step}; temporary files at the kill "
              f"{k.tmp_at_kill or '-'}, left by it {k.cut or '-'}", flush=True)
        if last.is_file():
            cmd, killed = resume, "resume"
            resumes += 1
        else:   # nothing to resume: a new run in the same folder (allowed while it holds no checkpoint)
            k.note += " no last.ckpt: restarted fresh"
            cmd, killed = fresh, "fresh"

    final_log = logs / "final.log"
    with open(final_log, "wb") as out:
        final = subprocess.run([str(TRAIN), *cmd], cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True, timeout=args.timeout + 600)
    final_step = global_step(last) if last.is_file() else None
    if killed == "resume":
        judge_resume(kills[-1], run, resumes, final_step)
        kills[-1].resumed_ok = bool(kills[-1].resumed_ok and final.returncode == 0)
    n_ckpt, bad = load_all(run)
    left = temp_files(run)
    wall = time.monotonic() - started

    survived = sum(bool(k.resumed_ok) for k in kills)
    cut = sum(bool(k.cut) for k in kills)
    print(f"\nddpm-train SIGKILLed {len(kills)} times, resumed each time with ckpt_path=<run>; "
          f"max_steps={args.max_steps}, seed {args.seed}")
    print(f"{'kill':>4}  {'kind':<5} {'moment':>10}  {'write cut (bytes left)':<44} {'step':>5} "
          f"{'loadable':>8}  {'resumed from':>12} {'reached':>7}  resumed ok")
    for k in kills:
        moment = f"{k.delay_s:.3f} s" if k.kind == "step" else f"write #{(k.writes_let_go or 0) + 1}"
        cuts = ", ".join(f"{Path(n).name} ({b})" for n, b in k.cut.items()) or "-"
        loadable = f"{k.checkpoints - len(k.unloadable)}/{k.checkpoints}"
        print(f"{k.number:>4}  {k.kind:<5} {moment:>10}  {cuts:<44} {k.step!s:>5} {loadable:>8}  "
              f"{k.resumed_from!s:>12} {k.reached!s:>7}  {'yes' if k.resumed_ok else 'NO'}")
        for line in k.unloadable:
            print(f"      unloadable: {line}")
        if k.note:
            print(f"      {k.note.strip()}")
    ok = survived == len(kills) and final.returncode == 0 and final_step == args.max_steps and not bad \
        and not any(k.unloadable for k in kills)
    print(f"survived {survived}/{len(kills)} kills ({cut} cut a checkpoint write); *.ckpt loaded after each kill "
          f"and at the end: {sum(k.checkpoints for k in kills) + n_ckpt} loads, "
          f"{sum(len(k.unloadable) for k in kills) + len(bad)} failed; final resume exit status "
          f"{final.returncode}, last.ckpt global_step {final_step} "
          f"{'==' if final_step == args.max_steps else '!='} max_steps {args.max_steps}; "
          f"{len(left)} temporary files left ({sum(left.values())} bytes); {wall:.0f} s")
    if final.returncode != 0:
        print(f"final resume: {tail(final_log, 4)}")
    result = {"machine": f"{os.cpu_count()} CPU cores, {platform.platform()}", "torch": torch.__version__,
              "seed": args.seed, "max_steps": args.max_steps, "overrides": overrides(args.max_steps),
              "run_dir": str(run), "kills": [asdict(k) for k in kills], "survived": survived,
              "writes_cut": cut, "final_exit_status": final.returncode, "final_global_step": final_step,
              "final_equals_max_steps": final_step == args.max_steps, "checkpoints_at_end": n_ckpt,
              "unloadable_at_end": bad, "temporary_files_left": left, "resume_steps_in_run_json": resume_steps(run),
              "wall_s": wall, "ok": ok}
    write_json(args.out, result)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
