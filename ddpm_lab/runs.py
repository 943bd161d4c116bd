"""Runs: a run's identity (`run.json`: its id, which is also its W&B run id, and a record of each
resume), the folder a resumed run writes into, and the checks before a resume.

A run folder (`outputs/<task>/runs/<time>/`, or `.../multiruns/<time>/<job>/` in a sweep) holds
`run.json`, `checkpoints/last.ckpt` and the logs. Resuming (`ckpt_path=`, see
`ddpm_lab.checkpoint_io`) writes into the checkpoint's run folder (Hydra's `hydra.run.dir` is
resolved through `resume_run_dir`), continues its W&B run and appends to its logs; the config Hydra
composed for the resume goes to `.hydra/resume-<time>/`, next to the original one.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.checkpoint_io import (
    CHECKPOINT_KEY,
    atomic_write_bytes,
    find_checkpoint,
    run_checkpoints,
    run_dir_of,
)
from ddpm_lab.errors import UserError

RUN_FILE = "run.json"


def new_run_id() -> str:
    """Eight lower-case letters and digits, the form of a W&B run id. (Our own: wandb 0.31 keeps its
    generator in the private `wandb.sdk.lib.runid`; `wandb.util.generate_id` is gone.)"""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def resume_run_dir(ckpt_path: str | None, runs_root: str, fresh_name: str) -> str:
    """Hydra's run folder: a new `<runs_root>/<fresh_name>`, or the folder of the run being resumed.

    An unresolvable `ckpt_path` falls back to the new folder; `train.run` then reports the error.
    """
    if ckpt_path is not None:
        try:
            return str(run_dir_of(find_checkpoint(str(ckpt_path), runs_root)))
        except UserError:
            pass
    return str(Path(runs_root) / fresh_name)


def hydra_output_subdir(ckpt_path: str | None, stamp: str) -> str:
    """Where Hydra writes the composed config: `.hydra`, or `.hydra/resume-<stamp>` when resuming
    (so the original run's config is never overwritten)."""
    return ".hydra" if ckpt_path is None else f".hydra/resume-{stamp}"


def register_resolvers() -> None:
    """The resolvers conf/hydra/default.yaml uses (idempotent)."""
    for name, fn in (("ddpm_run_dir", resume_run_dir), ("ddpm_hydra_subdir", hydra_output_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def read_run_info(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_run_info(run_dir: Path, info: dict) -> None:
    """Write run.json atomically (`checkpoint_io.atomic_write`)."""
    atomic_write_bytes(Path(run_dir) / RUN_FILE, (json.dumps(info, indent=2) + "\n").encode())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# What must agree between a checkpoint and the command resuming it: the network, the diffusion
# math and the data's shape. Optimizer, sampler, trainer, logging and callbacks may change.
MODEL_KEYS = ("net", "schedule", "diffusion", "latent")
DATA_KEYS = ("name", "image_shape", "num_classes")


def config_conflicts(saved: dict, current: dict) -> list[str]:
    """`key: checkpoint X, command Y` for every model-defining key on which the two differ."""
    a = flat({k: saved.get(k, {}) for k in MODEL_KEYS})
    b = flat({k: current.get(k, {}) for k in MODEL_KEYS})
    for k in DATA_KEYS:
        a[f"data.{k}"] = saved.get("data_info", {}).get(k)
        b[f"data.{k}"] = current.get("data_info", {}).get(k)
    return [f"{k}: checkpoint {a.get(k)!r}, command {b.get(k)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.endswith(".source")]


def is_rank_zero() -> bool:
    return rank_zero_only.rank == 0


def resolve_resume(cfg: DictConfig, output_dir: Path) -> Path | None:
    """The checkpoint this run continues from: `ckpt_path` (a file, a run folder or `last`), or a
    SLURM `hpc_ckpt_N.ckpt` left in the output folder by a requeued job; None for a fresh run."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise UserError(f"ckpt_path={ckpt_path!r} cannot be combined with -m (every job would "
                            f"continue the same run); resume a sweep job on its own: "
                            f"ddpm-train <the job's overrides> ckpt_path=<its folder>")
        return find_checkpoint(str(ckpt_path), Path(cfg.paths.log_dir) / cfg.task_name / "runs")
    found = run_checkpoints(output_dir)
    if found and (found[0].name.startswith("hpc_ckpt_") or os.environ.get("SLURM_RESTART_COUNT", "0") != "0"):
        return found[0]   # a requeued SLURM job continues from its newest checkpoint
    if found and is_rank_zero():
        raise UserError(f"{str(output_dir)!r} already holds a run ({found[0].name}); resume it with "
                        f"ckpt_path={output_dir}, or choose a new folder (hydra.run.dir=...)")
    return None


def original_overrides(run_dir: Path) -> str:
    """The overrides a run was started with (to repeat them when resuming)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    kept = [o for o in OmegaConf.load(path) if not str(o).startswith("ckpt_path=")]
    return " ".join(str(o) for o in kept)


def check_resume_teacher(ckpt_path: str, saved: dict, current: dict) -> None:
    """A distillation resumes with the teacher it started from (same run and training step)."""
    a, b = saved.get("teacher") or {}, current.get("teacher") or {}
    if not a and not b:
        return
    same = ("run_id", "global_step")
    if [a.get(k) for k in same] != [b.get(k) for k in same]:
        raise UserError(f"ckpt_path={ckpt_path}: this distillation was started from teacher={a.get('path')} "
                        f"(run {a.get('run_id')}, step {a.get('global_step')}); teacher={b.get('path')} is another "
                        f"model. Resume with teacher={a.get('path')}")
    if saved.get("distill") != current.get("distill"):
        raise UserError(f"ckpt_path={ckpt_path}: the distillation was started with distill={saved.get('distill')}, "
                        f"this command has distill={current.get('distill')}; resume with the same method and options")


def check_resume_config(ckpt_path: str, ckpt: dict, hparams: dict, run_dir: Path) -> None:
    """A UserError when the checkpoint's model-defining config differs from this command's (for a
    distillation: its teacher and method too)."""
    check_resume_teacher(ckpt_path, ckpt["hyper_parameters"], hparams)
    conflicts = config_conflicts(ckpt["hyper_parameters"], hparams)
    if conflicts:
        hint = original_overrides(run_dir)
        raise UserError(f"ckpt_path={ckpt_path}: the checkpoint was trained with another config: "
                        + "; ".join(conflicts)
                        + f". Resume with the run's own overrides: ddpm-train {hint} ckpt_path={ckpt_path}")


def start_run(output_dir: Path, ckpt_file: Path | None, ckpt: dict | None) -> dict:
    """The run's identity, written to <output_dir>/run.json: a new id, or the resumed run's id."""
    info = read_run_info(output_dir)
    if ckpt is None:
        info = {"run_id": new_run_id(), "created": now_iso(), "resumes": []}
    else:
        saved = ckpt.get(CHECKPOINT_KEY, {}).get("run") or {}
        info["run_id"] = saved.get("run_id") or info.get("run_id") or new_run_id()
        info.setdefault("resumes", []).append(
            {"at": now_iso(), "from": str(ckpt_file), "global_step": ckpt.get("global_step")})
    info["output_dir"] = str(output_dir)
    if is_rank_zero():
        write_run_info(output_dir, info)
    return info
