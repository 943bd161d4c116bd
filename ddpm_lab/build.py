"""Config -> objects for ddpm-train: the LightningModule and data module of the configured stage,
the loggers and the callbacks. Benchmarks build their modules here too."""

from __future__ import annotations

import json

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, WeightAveraging
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.autoencoders import LatentAutoencoder, latent_shape, measure_normalisation
from ddpm_lab.callbacks.faults import StopCheckpoint
from ddpm_lab.config_check.apps import STAGES
from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.data.latents import LatentDataModule
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.loggers import sweep_identity
from ddpm_lab.modules import AutoencoderModule, DiffusionModule
from ddpm_lab.teachers import build_distillation


def container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}



def build(cfg: DictConfig):
    """(module, datamodule) for the configured stage: a DiffusionModule (in latent space when `vae`
    is set: the data module then yields cached latents) or, with stage=autoencoder, the stage-1
    AutoencoderModule training the `vae` preset; with stage=distill, the student of `teacher`
    (ddpm_lab.teachers) on the teacher's data."""
    stage = cfg.get("stage") or "diffusion"
    if stage not in STAGES:
        raise choice_error("stage", stage, STAGES)
    if stage == "distill":
        return build_distillation(cfg)
    datamodule = instantiate(cfg.data)
    if stage == "autoencoder":
        return build_autoencoder_module(cfg, datamodule), datamodule
    if cfg.get("vae") is None:
        return build_module(cfg, datamodule), datamodule
    autoencoder = instantiate(cfg.vae)
    if not isinstance(autoencoder, LatentAutoencoder):
        raise UserError(f"vae={vae_choice(cfg)} is a stage-1 preset (an untrained autoencoder): train it with "
                        f"stage=autoencoder (experiment=shapes_vae or moving_shapes_vae), then diffuse with "
                        f"vae=trained vae.path=<that run folder>, or use vae=pretrained vae.path=<diffusers "
                        f"AutoencoderKL or AutoencoderKLWan folder>")
    image_shape = tuple(datamodule.image_shape)
    autoencoder.latent_shape(image_shape, vae=f"vae={vae_choice(cfg)}")    # size, channels and frames fit
    if autoencoder.needs_scale:
        datamodule.setup("fit")
        limit = 4096 // (image_shape[1] if len(image_shape) == 4 else 1)     # about 4096 frames
        images = stack_dataset(datamodule.train_set, limit=limit).image
        autoencoder.scale, autoencoder.shift = measure_normalisation(autoencoder, images)
        autoencoder.needs_scale = False
    latents = cfg.get("latents") or {}
    cached = bool(latents.get("cache", True))
    latent = {"config": json.loads(json.dumps(dict(autoencoder.model.config), default=str)),
              "kind": autoencoder.kind, "scale": autoencoder.scale, "shift": autoencoder.shift,
              "source": autoencoder.source, "cached": cached}
    if cached:
        datamodule = LatentDataModule(datamodule, autoencoder, container(cfg.data), latents.get("cache_dir"))
    module = build_module(cfg, datamodule, latent)
    module.autoencoder.load_state_dict(autoencoder.state_dict())
    return module, datamodule


def trainer_limits(cfg: DictConfig, module) -> dict:
    """Trainer arguments the module fixes: a distillation's length in optimizer steps (its rounds),
    or trainer.max_steps when that is set and shorter (a run stopped early, to be resumed)."""
    total = getattr(module, "total_steps", None)
    if total is None:
        return {}
    limit = cfg.trainer.get("max_steps")
    return {"max_steps": int(total) if limit is None or limit < 0 else min(int(limit), int(total)), "max_epochs": -1}


def fit_callbacks_to(module, callbacks: list) -> list:
    """A distillation's val/loss is not comparable across rounds (nor between methods): its
    ModelCheckpoint keeps the newest checkpoint instead of the best one, so last.ckpt (which
    Lightning writes only beside a kept checkpoint) follows the run."""
    if getattr(module, "total_steps", None) is not None:
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback.monitor = None
    return callbacks


def compile_options(value) -> dict:
    """torch.compile's arguments for `compile`: true -> inductor; one of inductor's modes
    (torch._inductor.list_mode_options(): reduce-overhead = CUDA graphs, max-autotune, ...) ->
    inductor in that mode; any other name -> that backend."""
    if value is True:
        return {"backend": "inductor"}
    if value in torch._inductor.list_mode_options():
        return {"backend": "inductor", "mode": value}
    return {"backend": value}


def prepare_network(module, cfg: DictConfig) -> None:
    """`channels_last` (the network's weights, and so its convolutions, in NHWC) and `compile`
    (torch.compile in place: checkpoints keep their keys), as ddpm-train applies them."""
    if cfg.get("channels_last"):
        module.trainable().to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        module.trainable().compile(**compile_options(cfg.get("compile")))


def vae_choice(cfg: DictConfig) -> str:
    """The `vae` option chosen (f4, trained, ...), or its target outside a Hydra app."""
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get("vae"))
    return str(cfg.vae.get("_target_", "?")).rsplit(".", 1)[-1]


STAGE1_PRESETS = ("ddpm_lab.autoencoders.autoencoder_kl", "ddpm_lab.autoencoders.autoencoder_kl_wan")


def build_autoencoder_module(cfg: DictConfig, datamodule) -> AutoencoderModule:
    """The stage-1 module training the `vae` preset; the data's shape (clips: their frame count) is
    checked against the VAE before anything trains."""
    if cfg.get("vae") is None:
        raise UserError("stage=autoencoder trains the vae preset, and none is chosen: add vae=f4 or vae=f8 "
                        "(images), vae=wan_tiny (video clips)")
    if str(cfg.vae.get("_target_")) not in STAGE1_PRESETS:
        raise UserError(f"stage=autoencoder trains a vae preset (vae=f4, f8 or wan_tiny), not vae={vae_choice(cfg)}")
    data_info = {"name": getattr(datamodule, "name", type(datamodule).__name__),
                 "image_shape": list(datamodule.image_shape), "data": container(cfg.data)}
    module = AutoencoderModule(vae=container(cfg.vae), data_info=data_info, optim=container(cfg.optim),
                               **container(cfg.get("autoencoder")))
    latent_shape(module.model.config, tuple(datamodule.image_shape), vae=f"vae={vae_choice(cfg)}")
    return module


VIDEO_NETS = (".DiT", ".WanTransformer")      # the networks that take clips (N, C, F, H, W)


def build_module(cfg: DictConfig, datamodule, latent: dict | None = None) -> DiffusionModule:
    data_info = {"name": getattr(datamodule, "name", type(datamodule).__name__),
                 "image_shape": list(datamodule.image_shape),
                 "num_classes": getattr(datamodule, "num_classes", None),
                 "data": container(cfg.data)}
    net, guidance = container(cfg.net), container(cfg.get("guidance"))
    if len(data_info["image_shape"]) == 4 and not str(net.get("_target_")).endswith(VIDEO_NETS):
        raise UserError(f"data={data_info['name']} holds video clips (C, F, H, W) and net={net.get('_target_')} "
                        f"takes images; use net=dit_video or net=wan")
    if guidance.get("condition") == "label":
        classes = data_info["num_classes"]
        if not classes:
            raise UserError(f"guidance.condition=label needs class labels, and data={data_info['name']} "
                            f"has none; use guidance=none")
        if net.get("num_classes") not in (None, classes):
            raise UserError(f"net.num_classes={net['num_classes']}, but data={data_info['name']} has "
                            f"{classes} classes; leave net.num_classes=null with guidance=classifier_free")
        net["num_classes"] = classes
    if guidance.get("condition") == "text":
        vocabulary = getattr(datamodule, "vocabulary", None)
        if vocabulary is None:
            raise UserError(f"guidance.condition=text needs captions, and data={data_info['name']} has none; "
                            f"use data=shapes, or guidance=classifier_free for class labels")
        if "text" not in net:
            raise UserError(f"guidance.condition=text: net={net.get('_target_')} takes no text encoder; use "
                            f"net=unet_small, unet_tiny, dit_small, dit_video, wan_tiny, wan or diffusers_unet2d_condition")
        text = {"max_tokens": 16, **(net.get("text") or {}), "vocabulary": list(vocabulary.words)}
        if text["max_tokens"] < vocabulary.max_tokens:
            raise UserError(f"net.text.max_tokens={text['max_tokens']} is shorter than the longest caption "
                            f"of data={data_info['name']} ({vocabulary.max_tokens} tokens with the start token)")
        net["text"] = text
        data_info["class_prompts"] = list(getattr(datamodule, "class_prompts", []) or [])
    elif net.get("text"):
        raise UserError("net.text is set but guidance.condition is not text: use guidance=text, or net.text=null")
    sampler = container(cfg.sampler)
    if latent:
        fit_net_to_latents(net, latent, data_info["image_shape"])
        sampler["clip_x0"] = False          # latents are not bounded like pixels
    image_to_video = container(cfg.get("image_to_video")) or None
    if image_to_video:
        add_first_frame_channels(net, data_info, latent)
    return DiffusionModule(net=net, schedule=container(cfg.schedule),
                           diffusion=container(cfg.diffusion), sampler=sampler,
                           data_info=data_info, optim=container(cfg.optim), guidance=guidance or None, latent=latent,
                           image_to_video=image_to_video)


def add_first_frame_channels(net: dict, data_info: dict, latent: dict | None) -> None:
    """Image-to-video: the network reads x_t, the first-frame condition and its mask (2 C + 1
    channels) and predicts C (diffusion/first_frame.py)."""
    if len(data_info["image_shape"]) != 4:
        raise UserError(f"image_to_video needs video clips, and data={data_info['name']} holds images; "
                        f"use data=moving_shapes, or image_to_video=null")
    if "in_channels" not in net:
        raise UserError(f"image_to_video: net={net.get('_target_')} cannot take extra input channels; "
                        f"use net=dit_video or net=wan")
    channels = net.get("in_channels") if latent else data_info["image_shape"][0]
    net["in_channels"], net["out_channels"] = 2 * channels + 1, channels


def fit_net_to_latents(net: dict, latent: dict, image_shape: list[int]) -> None:
    """The network sees latents: their channels and size (and a clip's latent frames, for a network
    that takes `frames`), not the images'. Either kind of VAE (image AutoencoderKL, video Wan)."""
    shape = latent_shape(latent["config"], tuple(image_shape))
    latent_channels, channels = shape[0], image_shape[0]
    for key in ("in_channels", "out_channels"):
        if net.get(key) not in (None, channels, latent_channels):
            raise UserError(f"net.{key}={net[key]} does not match the VAE's {latent_channels} latent channels "
                            f"(leave net.{key} at its default: latent diffusion sets it)")
        if key in net or key == "in_channels":
            net[key] = latent_channels
    net["image_size"] = shape[-1]
    if len(shape) == 4 and "frames" in net:
        net["frames"] = shape[1]


def build_loggers(cfg: DictConfig, run_id: str | None = None) -> list:
    """The configured loggers; W&B gets the run's id (resume) and, in a sweep, its group and name."""
    group, name = sweep_identity()
    loggers = []
    for c in (cfg.get("logger") or {}).values():
        if c is None:
            continue
        extra = {}
        if "wandb" in str(c.get("_target_", "")).lower():
            extra = {"id": c.get("id") or run_id, "group": c.get("group") or group,
                     "name": c.get("name") or name}
        loggers.append(instantiate(c, **extra))
    return loggers


def callback_order(callback) -> int:
    # Weight averaging swaps the EMA weights in for validation and back at its end: callbacks that
    # sample at validation end must run before that swap back, so averaging comes late. A
    # preemption save must see this step's EMA update, so it comes after averaging.
    # (Lightning itself moves ModelCheckpoint callbacks to the very end.)
    if isinstance(callback, StopCheckpoint):
        return 2
    return 1 if isinstance(callback, WeightAveraging) else 0


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not has_logger:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return sorted(callbacks, key=callback_order)


NEEDS_FULL_MODEL = ("ema", "sample_grid", "fd_evaluation")


def check_strategy(cfg: DictConfig) -> None:
    """FSDP shards the weights: EMA (a full copy) and in-training sampling (rank zero alone calls
    the network) need the whole model, so they are refused rather than deadlocking."""
    strategy = cfg.trainer.get("strategy")
    if "fsdp" not in str(strategy.get("_target_") if isinstance(strategy, DictConfig) else strategy).lower():
        return
    present = [name for name in NEEDS_FULL_MODEL if (cfg.get("callbacks") or {}).get(name) is not None]
    if present:
        drop = " ".join(f"~callbacks.{name}" for name in present)
        raise UserError(f"trainer=fsdp shards the model; callbacks {', '.join(present)} need it whole. "
                        f"Train with {drop} and sample from the checkpoint afterwards")


