"""A diffusion checkpoint as a diffusers pipeline: `DDPMPipeline` (or `DDIMPipeline` when the
checkpoint samples with DDIM) holding the network as a `UNet2DModel` (the EMA weights; our UNet
through nets/unet_diffusers_map.py, net=diffusers_unet2d as it is) and the scheduler on our exact
betas (`trained_betas`), prediction type and x0 clipping, so that diffusers alone samples what
`ddpm-sample` samples from the same noise.

What diffusers can represent: unconditional DDPM-process image models in pixel space with a UNet.
Flow matching, latent, class- or text-conditional, video and DiT / Wan checkpoints raise one
UserError naming why.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.samplers.scheduler import make_diffusers_scheduler
from ddpm_lab.errors import UserError
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.nets.diffusers import DiffusersUNet2D
from ddpm_lab.nets.unet import UNet
from ddpm_lab.nets.unet_diffusers_map import unet_to_diffusers

SUPPORTED = ("ddpm-export writes DDPMPipeline / DDIMPipeline folders of unconditional pixel-space DDPM image "
             "models with net=unet_* or net=diffusers_unet2d")
# the checkpoint's sampler -> (pipeline, scheduler); any other sampler exports as DDPM
PIPELINES = {"ddpm": ("DDPMPipeline", "DDPMScheduler"), "ddim": ("DDIMPipeline", "DDIMScheduler")}


def unrepresentable(module: DiffusionModule) -> str | None:
    """Why diffusers' DDPMPipeline cannot hold this model (None: it can)."""
    net = module.net
    if isinstance(module.diffusion, FlowMatching):
        return "it is a flow-matching model (diffusion=flow); DDPMPipeline and DDIMPipeline run the DDPM process"
    if module.autoencoder is not None:
        return "it is a latent diffusion model (vae=...); DDPMPipeline and DDIMPipeline have no autoencoder"
    if module.is_video or len(module.image_shape) != 3:
        return f"it makes samples of shape {tuple(module.image_shape)}, not images (C, H, W)"
    if module.guidance.conditional:
        return (f"it is {module.guidance.condition}-conditional (guidance=classifier_free / text); "
                f"DDPMPipeline and DDIMPipeline are unconditional")
    if not isinstance(net, (UNet, DiffusersUNet2D)):
        return f"its network {type(net).__name__} has no diffusers UNet2DModel equivalent"
    return None


def export_unet(module: DiffusionModule):
    """The module's network (EMA weights, as loaded) as a UNet2DModel of its own, on the CPU."""
    net = module.net
    model = unet_to_diffusers(net) if isinstance(net, UNet) else copy.deepcopy(net.unet)
    return model.cpu().float().eval()


def export_scheduler(module: DiffusionModule):
    """The diffusers scheduler of the checkpoint's sampler (DDIM for ddim, else DDPM) on our betas,
    prediction type, timestep spacing, variance and x0 clipping."""
    sampler = module.sampler
    pipeline, name = PIPELINES.get(sampler.name, PIPELINES["ddpm"])
    base = make_diffusers_scheduler(name, module.diffusion, sampler.spacing)
    options = {"clip_sample": bool(sampler.clip_x0), "clip_sample_range": 1.0}
    if name == "DDPMScheduler":
        options["variance_type"] = sampler.variance
    # without diffusers' own entries (`_use_default_values` would put the defaults back over ours)
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    return type(base).from_config({**config, **options})


def export_pipeline(module: DiffusionModule, source: str = "ckpt_path"):
    """The diffusers pipeline of `module`, or a UserError naming why diffusers cannot represent it."""
    import diffusers

    why = unrepresentable(module)
    if why is not None:
        raise UserError(f"{source}: cannot export this checkpoint: {why}; {SUPPORTED}")
    scheduler = export_scheduler(module)
    pipeline = "DDIMPipeline" if type(scheduler).__name__ == "DDIMScheduler" else "DDPMPipeline"
    return getattr(diffusers, pipeline)(unet=export_unet(module), scheduler=scheduler)


def check_out(out: Path, overwrite: bool) -> None:
    """`out` must be a new or empty folder, or `overwrite` must be set."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={str(out)!r} is a file; give a folder for the pipeline")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"out={str(out)!r} exists and is not empty; give a new folder, or overwrite=true "
                        f"to replace its contents")


def save_pipeline(pipeline, out: str | Path, overwrite: bool = False) -> Path:
    """`pipeline.save_pretrained` into `out`: written into a temporary folder beside it, then moved
    into place, so a failed export leaves `out` as it was."""
    out = Path(out).expanduser()
    check_out(out, overwrite)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        if out.is_dir():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def usage_note(module: DiffusionModule, pipeline) -> str:
    """How to sample the exported folder as the checkpoint samples."""
    sampler = module.sampler
    steps = sampler.steps or module.diffusion.num_steps
    call = f"num_inference_steps={steps}"
    if type(pipeline).__name__ == "DDIMPipeline":
        call += f", eta={sampler.eta or 0.0}"
    note = f"{type(pipeline).__name__}.from_pretrained(<out>)(batch_size=..., {call}, generator=...)"
    if sampler.name not in PIPELINES:
        note += (f"; the checkpoint samples with sampler.name={sampler.name}: the folder holds DDPMScheduler "
                 f"(swap it with <Scheduler>.from_config(pipe.scheduler.config))")
    return note
