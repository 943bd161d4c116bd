"""stage=distill: the teacher checkpoint (`teacher=<checkpoint file or run folder>`), checked, and the
student built from it.

The student inherits everything that defines the teacher's model (network, process, data, latent
autoencoder, conditioning) and gets the few-step sampler of its method: DDIM on the "trailing"
grid (DDPM teachers; it starts at the last timestep, so one step starts from pure noise) or Euler
(flow teachers). A conditional teacher's guided output is distilled at `distill.guidance_scale`
(null: the teacher's trained scale); the student then samples unguided (guidance.scale 1) and the
scale is saved in its `distill` hyper-parameters.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.checkpoint_io import CHECKPOINT_KEY, atomic_save, checkpoint_file, read_checkpoint
from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.reflow import generate_pairs
from ddpm_lab.errors import UserError
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.modules.reflow import Reflow

TEACHER_KINDS = ("diffusion", "distillation")    # a diffusion model, or a student distilled further
MODEL_KEYS = tuple(p for p in inspect.signature(DiffusionModule.__init__).parameters if p != "self")


def read_teacher(path: object) -> tuple[Path, dict]:
    """The teacher's checkpoint file and its dict, or one line saying why it cannot teach."""
    if not path:
        raise UserError("stage=distill needs teacher=<a diffusion checkpoint file or ddpm-train run folder>")
    try:
        ckpt = read_checkpoint(str(path))
    except UserError as err:
        raise UserError(str(err).replace("ckpt_path=", "teacher=", 1)) from None
    kind = ckpt[CHECKPOINT_KEY].get("kind")
    if kind not in TEACHER_KINDS:
        raise UserError(f"teacher={path} is a {kind} checkpoint (stage=autoencoder), not a diffusion model; "
                        f"give a checkpoint of ddpm-train stage=diffusion")
    return checkpoint_file(str(path)), ckpt


def teacher_identity(path: Path, ckpt: dict) -> dict:
    """What identifies a teacher across resumes: its run id and training step (and where it was read)."""
    return {"path": str(path), "run_id": (ckpt[CHECKPOINT_KEY].get("run") or {}).get("run_id"),
            "global_step": ckpt.get("global_step")}


def is_flow(hparams: dict) -> bool:
    """Whether these hyper-parameters' process is flow matching (it has no noise schedule)."""
    return issubclass(get_class(hparams["diffusion"]["_target_"]), FlowMatching)


def student_sampler(hparams: dict, steps: int, name: str | None = None, times: list | None = None) -> dict:
    """The student's sampler: `name` (the method's, e.g. consistency) or deterministic DDIM (DDPM)
    or Euler (flow), on the trailing grid (DDPM) or the teacher's flow grid, or at `times`."""
    old = hparams["sampler"]
    base = {"_target_": "ddpm_lab.diffusion.samplers.Sampler", "steps": steps, "clip_x0": bool(old.get("clip_x0", True)),
            "scheduler": None, "variance": "fixed_small", "times": times}
    if is_flow(hparams):
        return {**base, "name": name or "flow_euler", "eta": None, "spacing": "leading", "shift": old.get("shift")}
    return {**base, "name": name or "ddim", "eta": 0.0, "spacing": "trailing", "shift": None}


def student_hparams(teacher: dict, method: dict, steps: int, sampler: str | None = None) -> dict:
    """The student's DiffusionModule hyper-parameters from the teacher's."""
    hp = {k: v for k, v in teacher.items() if k in MODEL_KEYS}
    hp["sampler"] = student_sampler(hp, steps, sampler, method.get("sampling_times"))
    if hp.get("latent"):
        hp["latent"] = {**hp["latent"], "cached": False}     # the student encodes its batches itself
    guidance = hp.get("guidance") or {}
    if guidance.get("condition"):
        if method.get("guidance_scale") is None:
            method["guidance_scale"] = float(guidance.get("scale", 1.0))
        hp["guidance"] = {**guidance, "scale": 1.0, "rescale": 0.0}
    elif method.get("guidance_scale") not in (None, 1.0):
        raise UserError(f"distill.guidance_scale={method['guidance_scale']}: the teacher is unconditional "
                        f"(trained with guidance=none); leave it null")
    return hp


def build_distillation(cfg: DictConfig):
    """(student module, data module) of `distill=<method> teacher=<checkpoint>`."""
    path, ckpt = read_teacher(cfg.get("teacher"))
    method = OmegaConf.to_container(cfg.distill, resolve=True)
    cls = get_class(method.pop("_target_"))
    teacher_hp, identity = ckpt["hyper_parameters"], teacher_identity(path, ckpt)
    del ckpt
    if getattr(cls, "needs_flow", False) and not is_flow(teacher_hp):
        raise UserError(f"distill=reflow needs a flow-matching teacher (trained with diffusion=flow, e.g. "
                        f"experiment=digits_flow); teacher={cfg.teacher} is a DDPM model: distil it with "
                        f"distill=progressive or distill=consistency")
    hp = student_hparams(teacher_hp, method, cls.final_steps_of(method), getattr(cls, "sampler_name", None))
    if cfg.get("optim") is not None:
        hp["optim"] = OmegaConf.to_container(cfg.optim, resolve=True)
    module = cls(**hp, distill=method, teacher=identity)
    teacher = DiffusionModule.load(path)
    module.set_teacher(teacher.net, teacher.autoencoder)
    if isinstance(module, Reflow):
        module.set_pairs(*reflow_pairs(teacher, method, identity, cfg))
    return module, instantiate(hp["data_info"]["data"])


def reflow_pairs(teacher: DiffusionModule, method: dict, identity: dict, cfg: DictConfig):
    """The reflow pairs (noise, x_1, labels) of this teacher, seed and size: read from the cache
    (`<paths.log_dir>/cache/reflow/<key>.pt`) or generated once with the teacher's sampler and written."""
    n, seed, steps = int(method["num_pairs"]), int(method["pair_seed"]), int(method["pair_steps"])
    key = json.dumps({"teacher": [identity["run_id"], identity["global_step"], identity["path"]], "n": n,
                      "seed": seed, "steps": steps, "w": method.get("guidance_scale")}, sort_keys=True)
    path = Path(cfg.paths.log_dir) / "cache" / "reflow" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached["noise"], cached["x1"], cached.get("labels")
    labels = teacher.sampling_labels(n) if teacher.guidance.condition == "label" else None
    if teacher.guidance.condition == "text":
        raise UserError("distill=reflow: text-conditioned teachers are not supported; use a class-conditional "
                        "or unconditional flow teacher")
    sampler = teacher.sampler
    noise, x1 = generate_pairs(teacher.net, teacher.diffusion, teacher.sample_shape, n, seed, sampler.name, steps,
                               cond=labels, guidance_scale=float(method.get("guidance_scale") or 1.0),
                               clip_x0=bool(sampler.clip_x0) and teacher.autoencoder is None)
    atomic_save({"noise": noise, "x1": x1, "labels": labels, "key": key}, path)
    return noise, x1, labels
