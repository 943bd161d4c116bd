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

import inspect
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.checkpoint_io import CHECKPOINT_KEY, checkpoint_file, read_checkpoint
from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.errors import UserError
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.modules.distillation import DistillationModule

TEACHER_KINDS = ("diffusion", "distillation")    # a diffusion model, or a student distilled further
MODEL_KEYS = tuple(p for p in inspect.signature(DiffusionModule.__init__).parameters if p != "self")


def read_teacher(path: object) -> tuple[Path, dict]:
    """The teacher's checkpoint file and its dict, or one line saying why it cannot teach."""
    if not path:
        raise UserError("stage=distill needs teacher=<a diffusion checkpoint file or ddpm-train run folder>")
    try:
        ckpt = read_checkpoint(str(path))
    except UserError as err:
        raise UserError(f"teacher={path}: {str(err).split(': ', 1)[-1]}") from None
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


def student_sampler(hparams: dict, steps: int) -> dict:
    """The student's sampler: deterministic DDIM on the trailing grid (DDPM) or Euler (flow)."""
    old = hparams["sampler"]
    base = {"_target_": "ddpm_lab.diffusion.samplers.Sampler", "steps": steps, "clip_x0": bool(old.get("clip_x0", True)),
            "scheduler": None, "variance": "fixed_small"}
    if is_flow(hparams):
        return {**base, "name": "flow_euler", "eta": None, "spacing": "leading", "shift": old.get("shift")}
    return {**base, "name": "ddim", "eta": 0.0, "spacing": "trailing", "shift": None}


def student_hparams(teacher: dict, method: dict, steps: int) -> dict:
    """The student's DiffusionModule hyper-parameters from the teacher's."""
    hp = {k: v for k, v in teacher.items() if k in MODEL_KEYS}
    hp["sampler"] = student_sampler(hp, steps)
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
    hp = student_hparams(teacher_hp, method, cls.final_steps_of(method))
    if cfg.get("optim") is not None:
        hp["optim"] = OmegaConf.to_container(cfg.optim, resolve=True)
    module = cls(**hp, distill=method, teacher=identity)
    teacher = DiffusionModule.load(path)
    module.set_teacher(teacher.net, teacher.autoencoder)
    return module, instantiate(hp["data_info"]["data"])
