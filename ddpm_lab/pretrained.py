"""Models from diffusers folders: a pipeline folder (model_index.json, e.g. the DDPMPipeline that
`ddpm-export` writes) or a bare UNet2DModel folder (config.json, e.g. a pipeline's unet/) as a
`DiffusionModule` that our samplers sample (`load_model`: ddpm-sample / ddpm-eval
`ckpt_path=<folder>`), as a ddpm_lab checkpoint (`import_checkpoint`: ddpm-import), and the
network weights a fine-tuning run starts from (`initial_weights`: ddpm-train `init_from`).

The UNet2DModel becomes our UNet through the weight map (nets/unet_diffusers_map.py) where its
structure is the DDPM one (the authors' google/ddpm-cifar10-32 and the like); any other is held as
it is by net=diffusers_unet2d (its `config`). The
scheduler config gives the schedule (its betas, exactly), the prediction type and the sampler
(DDPMScheduler: ddpm, with its variance and clipping; DDIMScheduler: ddim, 50 steps, eta 0; any
other: the "diffusers" sampler with that scheduler). A UNet2DModel folder alone samples with the
DDPM paper's setting: linear betas 1e-4 to 0.02 over 1000 steps, eps prediction, ddpm, clipping.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra.utils import instantiate

import ddpm_lab
from ddpm_lab.checkpoint_io import CHECKPOINT_KEY, FORMAT, atomic_save, read_checkpoint
from ddpm_lab.diffusion.samplers.scheduler import diffusers_scheduler_names
from ddpm_lab.diffusion.samplers.timesteps import SPACINGS
from ddpm_lab.diffusion.schedules import rescale_zero_terminal_snr
from ddpm_lab.errors import UserError
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.nets.unet import UNet
from ddpm_lab.nets.unet_diffusers_map import from_diffusers_state, unet_kwargs

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large"}
# the DDPM paper's CIFAR-10 setting, for a UNet2DModel folder without a scheduler
PAPER_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                   "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True,
                   "variance_type": "fixed_small"}
NAMED = {"linear": "linear", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}


def is_diffusers_folder(path: str | Path) -> bool:
    """A folder written by diffusers' save_pretrained: a pipeline (model_index.json) or a model (config.json)."""
    path = Path(str(path)).expanduser()
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "config.json").is_file())


def read_json(path: Path, key: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{key}: {str(path)!r} is not a readable diffusers config ({type(err).__name__})") from None


def read_folder(folder: str | Path, key: str = "ckpt_path"):
    """(the UNet2DModel, the scheduler config) of a diffusers folder; the paper's scheduler when it has none."""
    from diffusers import UNet2DModel

    path = Path(str(folder)).expanduser()
    if not is_diffusers_folder(path):
        raise UserError(f"{key}={str(folder)!r} is not a diffusers pipeline or model folder (no model_index.json "
                        f"or config.json); give a folder written by save_pretrained, e.g. by ddpm-export")
    scheduler = dict(PAPER_SCHEDULER)
    unet_dir = path
    if (path / "model_index.json").is_file():
        index = read_json(path / "model_index.json", key)
        if "unet" not in index:
            raise UserError(f"{key}={str(folder)!r}: the {index.get('_class_name')} pipeline has no unet; "
                            f"ddpm_lab imports unconditional UNet2DModel pipelines (DDPMPipeline, DDIMPipeline)")
        unet_dir = path / "unet"
        if (path / "scheduler" / "scheduler_config.json").is_file():
            scheduler = read_json(path / "scheduler" / "scheduler_config.json", key)
    config = read_json(unet_dir / "config.json", key)
    if config.get("_class_name") != "UNet2DModel":
        raise UserError(f"{key}={str(folder)!r} holds a {config.get('_class_name')}; ddpm_lab imports UNet2DModel")
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise UserError(f"{key}={str(folder)!r}: a class-conditional UNet2DModel has no null class for ddpm_lab's "
                        f"guidance; unconditional UNet2DModels import")
    model = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, low_cpu_mem_usage=False)
    return model.float().eval(), scheduler


def schedule_hparams(sc: dict) -> dict:
    """Our schedule config for a diffusers scheduler config: the named schedule where ours is the
    same, else its betas."""
    steps = int(sc.get("num_train_timesteps", 1000))
    zero = bool(sc.get("rescale_betas_zero_snr", False))
    kind = sc.get("beta_schedule", "linear")
    if sc.get("trained_betas") is None and kind in NAMED:
        extra = {} if kind == "squaredcos_cap_v2" else {"beta_start": sc.get("beta_start", 1e-4),
                                                         "beta_end": sc.get("beta_end", 0.02)}
        return {"_target_": "ddpm_lab.diffusion.NoiseSchedule.from_name", "name": NAMED[kind],
                "num_steps": steps, "zero_terminal_snr": zero, **extra}
    if sc.get("trained_betas") is not None:
        betas = torch.tensor(sc["trained_betas"], dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(sc.get("beta_start", 1e-4) ** 0.5, sc.get("beta_end", 0.02) ** 0.5, steps,
                               dtype=torch.float64) ** 2
    else:
        raise UserError(f"the scheduler's beta_schedule={kind!r}: ddpm_lab imports trained_betas, linear, "
                        f"scaled_linear, squaredcos_cap_v2 and sigmoid")
    if zero:
        betas = rescale_zero_terminal_snr(betas)
    return {"_target_": "ddpm_lab.diffusion.NoiseSchedule", "_convert_": "all", "betas": betas.tolist(),
            "name": "diffusers"}


def sampler_hparams(sc: dict) -> dict:
    """Our sampler config for a diffusers scheduler config."""
    name = sc.get("_class_name", "DDPMScheduler")
    spacing = sc.get("timestep_spacing", "leading")
    base = {"_target_": "ddpm_lab.diffusion.samplers.Sampler", "name": "ddpm", "steps": None, "eta": None,
            "spacing": spacing if spacing in SPACINGS else "leading", "variance": "fixed_small",
            "clip_x0": bool(sc.get("clip_sample", False)), "scheduler": None}
    if name == "DDPMScheduler":
        variance = sc.get("variance_type", "fixed_small")
        if variance not in VARIANCES:
            raise UserError(f"the scheduler's variance_type={variance!r}: a learned variance needs a network "
                            f"that predicts it; ddpm_lab imports {', '.join(VARIANCES)}")
        return {**base, "variance": VARIANCES[variance]}
    if name == "DDIMScheduler":
        return {**base, "name": "ddim", "steps": 50, "eta": 0.0}
    if name in diffusers_scheduler_names():
        return {**base, "name": "diffusers", "scheduler": name, "steps": 50}
    return base


def net_hparams(config: dict) -> dict:
    """The net config of a UNet2DModel: our UNet where the structure is the DDPM one, else
    net=diffusers_unet2d holding the UNet2DModel config as it is."""
    try:
        return {"_target_": "ddpm_lab.nets.UNet", **unet_kwargs(config)}
    except UserError:
        size = config["sample_size"]
        if not isinstance(size, int):
            raise UserError(f"the UNet2DModel's sample_size={size}: ddpm_lab takes square images") from None
        return {"_target_": "ddpm_lab.nets.diffusers.DiffusersUNet2D", "image_size": size,
                "in_channels": config["in_channels"], "out_channels": config["out_channels"],
                "config": {k: v for k, v in config.items() if not k.startswith("_")}}


def module_from_folder(folder: str | Path, data: dict | None = None, dropout: float | None = None,
                       key: str = "ckpt_path") -> DiffusionModule:
    """The DiffusionModule of a diffusers folder (eval mode, CPU). `data`: the data config it models
    (for ddpm-eval and fine-tuning; None: sampling only); `dropout`: the network's for fine-tuning."""
    model, sc = read_folder(folder, key)
    prediction = sc.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise UserError(f"the scheduler's prediction_type={prediction!r}; ddpm_lab imports {', '.join(PREDICTIONS)}")
    net = net_hparams(dict(model.config))
    if dropout is not None:
        net["dropout"] = float(dropout)
        if "config" in net:
            net["config"]["dropout"] = float(dropout)
    shape = [net["in_channels"], net["image_size"], net["image_size"]]
    data_info = {"name": "diffusers", "image_shape": shape, "num_classes": None, "data": data,
                 "source": str(Path(str(folder)).expanduser().resolve())}
    if data is not None:
        datamodule = instantiate(data)
        if list(datamodule.image_shape) != shape:
            raise UserError(f"data: {datamodule.name or type(datamodule).__name__} has images of shape "
                            f"{tuple(datamodule.image_shape)}, the UNet2DModel makes {tuple(shape)}; set "
                            f"data.image_size / data.channels to fit")
        data_info["name"] = datamodule.name or type(datamodule).__name__
    module = DiffusionModule(
        net=net, schedule=schedule_hparams(sc),
        diffusion={"_target_": "ddpm_lab.diffusion.GaussianDiffusion", "prediction": PREDICTIONS[prediction],
                   "loss_weighting": "uniform", "min_snr_gamma": 5.0},
        sampler=sampler_hparams(sc), data_info=data_info)
    if isinstance(module.net, UNet):
        module.net.load_state_dict(from_diffusers_state(module.net, model.state_dict()))
    else:
        module.net.unet.load_state_dict(model.state_dict())
    return module.eval()


def load_model(ckpt_path: str | Path, device: str | torch.device = "cpu") -> DiffusionModule:
    """`ckpt_path` of ddpm-sample / ddpm-eval: a diffusers folder, or a ddpm_lab checkpoint / run folder."""
    if is_diffusers_folder(ckpt_path):
        return module_from_folder(ckpt_path).to(device)
    return DiffusionModule.load(ckpt_path, device)


def import_checkpoint(folder: str | Path, out: str | Path, data: dict | None = None,
                      dropout: float | None = None, overwrite: bool = False) -> Path:
    """Write the diffusers folder as a ddpm_lab checkpoint `out` (a .ckpt file that ddpm-sample and
    ddpm-eval take as ckpt_path and ddpm-train as init_from)."""
    import lightning

    out = Path(str(out)).expanduser()
    if out.exists() and not overwrite:
        raise UserError(f"out={str(out)!r} exists; give a new file, or overwrite=true to replace it")
    if out.is_dir():
        raise UserError(f"out={str(out)!r} is a folder; give the checkpoint file to write (e.g. model.ckpt)")
    module = module_from_folder(folder, data, dropout, key="folder")
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0,
            CHECKPOINT_KEY: {"version": ddpm_lab.__version__, "format": FORMAT, "kind": "diffusion",
                             "run": {}, "rng": [], "imported_from": module.hparams["data_info"]["source"]}}
    return atomic_save(ckpt, out)


def initial_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights (`net.*`, EMA when the run had EMA) of a ddpm_lab checkpoint, run folder
    or diffusers folder, for ddpm-train `init_from`."""
    if is_diffusers_folder(path):
        state = module_from_folder(path, key="init_from").state_dict()
    else:
        state = read_checkpoint(path)["state_dict"]
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


def load_initial_weights(net: torch.nn.Module, path: str | Path, net_name: str) -> None:
    """Copy `initial_weights(path)` into `net`, or a UserError when they do not fit it."""
    weights = initial_weights(path)
    own = net.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    wrong = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or extra or wrong:
        what = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
                else f"{wrong[0]} is {tuple(weights[wrong[0]].shape)}, net={net_name} has {tuple(own[wrong[0]].shape)}")
        raise UserError(f"init_from={str(path)!r}: its network does not fit net={net_name} ({what}); give the net "
                        f"config the weights were trained with")
    net.load_state_dict(weights)
