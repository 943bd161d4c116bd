"""The top-level keys of each app's config (conf/train.yaml, sample.yaml, eval.yaml, forward.yaml,
train_reference.yaml) and the few rules that tie two keys together.

A new top-level key: add `name: rule` to its app's Section below (ddpm-edit's task options:
tasks.py). A new app: add its Section to
APPS (its config name) and, for the Hydra callback, its program name to PROGS.
"""

from __future__ import annotations

import re
from typing import Any

from ddpm_lab.config_check.groups import (
    CALLBACKS,
    DATA,
    DIFFUSION,
    DISTILL,
    FLOW_TARGET,
    GUIDANCE,
    LOGGERS,
    NET,
    PREDICTIONS,
    SAMPLER,
    SCHEDULE,
    TRAINER,
    VAE,
    sampler_rules,
)
from ddpm_lab.config_check.rules import (
    LABEL,
    MISSING,
    POSITIVE,
    PROMPT,
    SEED,
    UNRESOLVED,
    Choice,
    Group,
    ListOf,
    Section,
    boolean,
    integer,
    is_int,
    names,
    number,
    string,
)
from ddpm_lab.config_check.tasks import TASK
from ddpm_lab.errors import UserError

STAGES = ("diffusion", "autoencoder", "distill")          # what ddpm-train trains (ddpm_lab.build)
FEATURES = ("reference", "inception")          # ddpm_lab.evaluate.make_extractor
DATA_METRICS = ("nll", "classify")             # ddpm_lab.task_eval: metrics on the data, nothing sampled
DEVICES = ("auto", "cpu", "cuda", "cuda:<index>")   # ddpm_lab.sample.pick_device
HELD_OUT = "heldout"                           # ddpm_lab.edit: the checkpoint's held-out split

PATHS = Section({"log_dir": string(), "output_dir": string()}, closed=False)
_BETAS = ListOf(number(0, 1, hi_open=True), length=2)
OPTIM = Section({
    "lr": POSITIVE, "weight_decay": number(0), "betas": _BETAS,
    "warmup_steps": integer(0), "decay": Choice(names("ddpm_lab.modules.base", "LR_DECAYS")),
    "decay_steps": integer(1, null=True),
    "final_lr_ratio": number(0, 1, range_msg="{key}={value} must lie in [0, 1]"),
    # any torch.optim class: its keys are its parameters (check_optimizer: _partial_ true)
    "optimizer": Group({"torch.optim.AdamW": Section({"lr": POSITIVE, "weight_decay": number(0),
                                                      "betas": _BETAS})})})
def compile_choices() -> tuple:
    """`compile`: true (inductor), false, an inductor mode, or a torch.compile backend by name."""
    import torch
    return (True, False, *torch._inductor.list_mode_options(), *torch.compiler.list_backends(exclude_tags=()))


DEVICE = Choice(DEVICES,
                also=lambda v: isinstance(v, str) and re.fullmatch(r"cuda:\d+", v) is not None)
_SCALE = number(0, null=True, range_msg="{key}={float} must be >= 0 (0 = unconditional, 1 = conditional)")
_RESCALE = number(0, 1, null=True, range_msg="{key}={float} must lie in [0, 1] (0 = off)")
_CHECKPOINT_APP = {   # ddpm-sample and ddpm-eval: a checkpoint, sampled with optional overrides
    "task_name": string(), "ckpt_path": string(), "seed": SEED, "batch_size": integer(1), "device": DEVICE,
    "label": LABEL, "prediction": Choice(PREDICTIONS, null=True),
    "sampler": Section(sampler_rules(null=True)), "paths": PATHS}

APPS: dict[str, Section] = {
    "train": Section({
        "task_name": string(), "stage": Choice(STAGES), "teacher": string(null=True), "distill": DISTILL,
        "autoencoder": Section({"reconstruction": Choice(names("ddpm_lab.modules.autoencoder", "RECONSTRUCTION")),
                                "kl_weight": number(0), "num_logged": integer(0)}),
        "latents": Section({"cache": boolean(), "cache_dir": string()}),
        "image_to_video": Section({"p_first_frame": number(0, 1, lo_open=True,
                                                           range_msg="{key}={value} must lie in (0, 1]")},
                                  null=True),
        "seed": SEED, "ckpt_path": string(null=True), "init_from": string(null=True), "tags": ListOf(string()),
        "compile": Choice(compile_choices), "channels_last": boolean(),
        "optimized_metric": string(), "optim": OPTIM,
        "data": DATA, "net": NET, "schedule": SCHEDULE, "diffusion": DIFFUSION, "sampler": SAMPLER,
        "guidance": GUIDANCE, "vae": VAE, "trainer": TRAINER, "logger": LOGGERS, "callbacks": CALLBACKS,
        "paths": PATHS}, closed=False),
    "sample": Section({
        **_CHECKPOINT_APP, "num_samples": integer(1), "prompt": PROMPT,
        "guidance": Section({"scale": _SCALE, "rescale": _RESCALE}),
        "trajectory": boolean(), "trajectory_rows": integer(1), "trajectory_frames": integer(2),
        "format": Choice(("gif", "mp4"), null=True), "fps": number(0, lo_open=True, null=True),
        "first_frame": string(null=True)}, closed=False),
    "eval": Section({
        **_CHECKPOINT_APP, "num_samples": integer(2),
        "metrics": ListOf(Choice(lambda: (*names("ddpm_lab.metrics.distances", "METRICS")(), *DATA_METRICS)),
                          min_len=1, index=False),
        "nll": Section({"exact": boolean(), "draws": integer(4), "num_images": integer(1, null=True),
                        "t_sampling": Choice(names("ddpm_lab.diffusion.likelihood", "T_SAMPLINGS")),
                        "variance": Choice(names("ddpm_lab.diffusion.samplers", "VARIANCES"), null=True),
                        "clip_x0": boolean(), "batch_size": integer(1)}),
        "classify": Section({"draws": integer(1), "num_images": integer(1, null=True), "batch_size": integer(1)}),
        "kid_subset_size": integer(2),
        "feature": Choice(FEATURES), "inception_weights": string(null=True),
        "guidance": Section({"scale": _SCALE, "rescale": _RESCALE,
                             "scales": ListOf(number(0), min_len=1, null=True)}),
        "logger": LOGGERS}, closed=False),
    "export": Section({"task_name": string(), "ckpt_path": string(), "out": string(), "overwrite": boolean(),
                       "paths": PATHS}, closed=False),
    "import": Section({"task_name": string(), "folder": string(), "out": string(), "overwrite": boolean(),
                       "seed": SEED,
                       "dropout": number(0, 1, hi_open=True, null=True), "data": Group(DATA.targets, null=True),
                       "paths": PATHS}, closed=False),
    "forward": Section({
        "task_name": string(), "num_images": integer(1), "num_frames": integer(1), "seed": SEED,
        "data": DATA, "schedule": SCHEDULE, "paths": PATHS}, closed=False),
    "train_reference": Section({
        "task_name": string(), "data_name": string(), "seed": SEED, "epochs": integer(1), "lr": POSITIVE,
        "feature_dim": integer(1), "width": integer(1), "blur": boolean(), "out_dir": string(null=True),
        "data": DATA, "paths": PATHS}, closed=False),
    "edit": Section({
        "task_name": string(), "ckpt_path": string(), "seed": SEED, "device": DEVICE,
        "input": string(desc=f"{HELD_OUT!r} or a folder of images"), "num_images": integer(1),
        "task": TASK, "paths": PATHS}, closed=False),
}
PROGS = {"train": "ddpm-train", "sample": "ddpm-sample", "eval": "ddpm-eval", "forward": "ddpm-forward",
         "export": "ddpm-export", "import": "ddpm-import",
         "train_reference": "train_reference", "edit": "ddpm-edit"}


def _get(cfg: dict, path: str) -> Any:
    """cfg's value at the dotted `path`; None when absent, unresolved or missing."""
    for part in path.split("."):
        if not isinstance(cfg, dict):
            return None
        cfg = cfg.get(part)
    return None if cfg in (MISSING, UNRESOLVED) else cfg


def process_kind(cfg: dict) -> str | None:
    """The diffusion's kind: "flow" (FlowMatching), "ddpm" (GaussianDiffusion), None (not known here:
    ddpm-sample / ddpm-eval take it from the checkpoint)."""
    target = _get(cfg, "diffusion._target_")
    return None if target is None else "flow" if target == FLOW_TARGET else "ddpm"


def check_scheduler(cfg: dict, required: bool) -> None:
    """sampler.scheduler names a diffusers scheduler for the process (name=diffusers): one that
    runs on our schedule, or a flow scheduler (either one when the process is not known)."""
    name, scheduler = _get(cfg, "sampler.name"), _get(cfg, "sampler.scheduler")
    if name == "diffusers" and (required or scheduler is not None):
        from ddpm_lab.diffusion.samplers.scheduler import check_scheduler as check
        check(scheduler, process_kind(cfg))


def check_sampler_fits_process(cfg: dict) -> None:
    """The sampler and its options fit the process (the registry's check); a flow process is not
    an eps model (it could not be sampled)."""
    from ddpm_lab.diffusion.flow import check_sampleable
    from ddpm_lab.diffusion.samplers.registry import SAMPLERS, check_process_options

    kind, name = process_kind(cfg), _get(cfg, "sampler.name")
    if kind is None or name not in SAMPLERS:
        return
    check_process_options(name, kind, _get(cfg, "sampler.eta"), _get(cfg, "sampler.spacing") or "leading",
                          _get(cfg, "sampler.variance") or "fixed_small", _get(cfg, "sampler.shift"))
    if kind == "flow":
        check_sampleable(_get(cfg, "diffusion.prediction"))


def check_optimizer(cfg: dict) -> None:
    """optim.optimizer is a partial: RunModule calls it with the trainable parameters."""
    optimizer = _get(cfg, "optim.optimizer")
    if isinstance(optimizer, dict) and optimizer.get("_partial_") is not True:
        raise UserError(f"optim.optimizer._partial_={optimizer.get('_partial_')!r} must be true: the optimizer "
                        f"class is called with the trainable parameters")


def check_distill(cfg: dict) -> None:
    """stage=distill names a method (distill=...) and a teacher; a method needs stage=distill."""
    stage, method = _get(cfg, "stage") or "diffusion", _get(cfg, "distill")
    if stage != "distill":
        if method is not None or _get(cfg, "teacher") is not None:
            raise UserError(f"distill and teacher are the options of stage=distill (stage={stage}): add "
                            f"stage=distill, or leave distill and teacher out")
        return
    if method is None:
        raise UserError("stage=distill needs a method: distill=progressive, consistency or reflow")
    if _get(cfg, "teacher") is None:
        raise UserError("stage=distill needs teacher=<a diffusion checkpoint file or ddpm-train run folder>")
    start, final = method.get("start_steps"), method.get("final_steps")
    if is_int(start) and is_int(final) and final >= start:
        raise UserError(f"distill.final_steps={final} must be below distill.start_steps={start} "
                        f"(each progressive round halves the step count)")


def check_train_relations(cfg: dict) -> None:
    """Rules tying two keys of ddpm-train's config together."""
    check_distill(cfg)
    check_scheduler(cfg, required=True)
    check_optimizer(cfg)
    diffusion_stage = (_get(cfg, "stage") or "diffusion") == "diffusion"
    if diffusion_stage:
        check_sampler_fits_process(cfg)
    flow = process_kind(cfg) == "flow"       # flow matching has no schedule: any number of steps
    steps, num_steps = _get(cfg, "sampler.steps"), _get(cfg, "schedule.num_steps")
    if not flow and is_int(steps) and is_int(num_steps) and steps > num_steps:
        raise UserError(f"sampler.steps={steps!r} must be an integer in [1, {num_steps}] (the schedule's num_steps)")
    if not flow and _get(cfg, "schedule.zero_terminal_snr") is True \
            and _get(cfg, "diffusion.prediction") == "eps" and diffusion_stage:
        raise UserError("schedule.zero_terminal_snr=true needs diffusion.prediction=v (or x0): "
                        "at zero SNR an eps prediction says nothing about x_0")
    text = _get(cfg, "net.text")
    if isinstance(text, dict) and is_int(text.get("dim")) and is_int(text.get("heads")) \
            and text["dim"] % text["heads"]:
        raise UserError(f"net.text.dim={text['dim']} must be a multiple of net.text.heads={text['heads']}")


RELATIONS = {"train": check_train_relations,
             "sample": lambda cfg: check_scheduler(cfg, required=False),
             "eval": lambda cfg: check_scheduler(cfg, required=False)}
