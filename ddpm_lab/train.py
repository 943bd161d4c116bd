"""ddpm-train: compose a config with Hydra and train a DiffusionModule with Lightning.

`run(cfg)` is the testable part; `main()` is the console script.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, WeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ddpm_lab import runs
from ddpm_lab.autoencoders import AutoencoderModule, LatentAutoencoder, measure_scale
from ddpm_lab.callbacks.faults import StopCheckpoint
from ddpm_lab.checkpoints import read_checkpoint
from ddpm_lab.cli import CONF_DIR, user_errors
from ddpm_lab.data.latents import LatentDataModule
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.loops import use_exact_resume_loop
from ddpm_lab.metrics.distances import images_of
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.modules.diffusion_module import CHECKPOINT_KEY

runs.register_resolvers()   # hydra.run.dir follows ckpt_path (conf/hydra/train.yaml)
PREEMPTED_EXIT = 143        # 128 + SIGTERM, the status schedulers expect from a stopped job


def container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}


STAGES = ("diffusion", "autoencoder")


def build(cfg: DictConfig):
    """(module, datamodule) for the configured stage: a DiffusionModule (in latent space when `vae`
    is set: the data module then yields cached latents) or, with stage=autoencoder, the stage-1
    AutoencoderModule training the `vae` preset."""
    datamodule = instantiate(cfg.data)
    stage = cfg.get("stage") or "diffusion"
    if stage not in STAGES:
        raise choice_error("stage", stage, STAGES)
    if stage == "autoencoder":
        return build_autoencoder_module(cfg, datamodule), datamodule
    if cfg.get("vae") is None:
        return build_module(cfg, datamodule), datamodule
    autoencoder = instantiate(cfg.vae)
    if not isinstance(autoencoder, LatentAutoencoder):
        raise UserError(f"vae={vae_choice(cfg)} is a stage-1 preset (an untrained AutoencoderKL): train it with "
                        f"stage=autoencoder (experiment=shapes_vae), then diffuse with vae=trained "
                        f"vae.path=<that run folder>, or use vae=pretrained vae.path=<diffusers AutoencoderKL folder>")
    autoencoder.latent_shape(tuple(datamodule.image_shape))       # the image size and channels fit
    if autoencoder.needs_scale:
        datamodule.setup("fit")
        autoencoder.scale = measure_scale(autoencoder, images_of(datamodule.train_set, limit=4096))
        autoencoder.needs_scale = False
    latents = cfg.get("latents") or {}
    cached = bool(latents.get("cache", True))
    vae = {"config": json.loads(json.dumps(dict(autoencoder.vae.config), default=str)),
           "scale": autoencoder.scale, "shift": autoencoder.shift, "source": autoencoder.source, "cached": cached}
    if cached:
        datamodule = LatentDataModule(datamodule, autoencoder, container(cfg.data), latents.get("cache_dir"))
    module = build_module(cfg, datamodule, vae)
    module.vae.load_state_dict(autoencoder.state_dict())
    return module, datamodule


def vae_choice(cfg: DictConfig) -> str:
    """The `vae` option chosen (f4, trained, ...), or its target outside a Hydra app."""
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get("vae"))
    return str(cfg.vae.get("_target_", "?")).rsplit(".", 1)[-1]


def build_autoencoder_module(cfg: DictConfig, datamodule) -> AutoencoderModule:
    if cfg.get("vae") is None:
        raise UserError("stage=autoencoder trains the vae preset, and none is chosen: add vae=f4 or vae=f8")
    if "autoencoder_kl" not in str(cfg.vae.get("_target_")):
        raise UserError(f"stage=autoencoder trains a vae preset (vae=f4 or vae=f8), not vae={vae_choice(cfg)}")
    data_info = {"name": getattr(datamodule, "name", type(datamodule).__name__),
                 "image_shape": list(datamodule.image_shape), "data": container(cfg.data)}
    return AutoencoderModule(vae=container(cfg.vae), data_info=data_info, optim=container(cfg.optim),
                             **container(cfg.get("autoencoder")))


def build_module(cfg: DictConfig, datamodule, vae: dict | None = None) -> DiffusionModule:
    data_info = {"name": getattr(datamodule, "name", type(datamodule).__name__),
                 "image_shape": list(datamodule.image_shape),
                 "num_classes": getattr(datamodule, "num_classes", None),
                 "data": container(cfg.data)}
    net, guidance = container(cfg.net), container(cfg.get("guidance"))
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
                            f"net=unet_small, unet_tiny or diffusers_unet2d_condition")
        text = {"max_tokens": 16, **(net.get("text") or {}), "vocabulary": list(vocabulary.words)}
        if text["max_tokens"] < vocabulary.max_tokens:
            raise UserError(f"net.text.max_tokens={text['max_tokens']} is shorter than the longest caption "
                            f"of data={data_info['name']} ({vocabulary.max_tokens} tokens with the start token)")
        net["text"] = text
        data_info["class_prompts"] = list(getattr(datamodule, "class_prompts", []) or [])
    elif net.get("text"):
        raise UserError("net.text is set but guidance.condition is not text: use guidance=text, or net.text=null")
    sampler = container(cfg.sampler)
    if vae:
        fit_net_to_latents(net, vae, data_info["image_shape"])
        sampler["clip_x0"] = False          # latents are not bounded like pixels
    return DiffusionModule(net=net, schedule=container(cfg.schedule),
                           diffusion=container(cfg.diffusion), sampler=sampler,
                           data_info=data_info, optim=container(cfg.optim), guidance=guidance or None, vae=vae)


def fit_net_to_latents(net: dict, vae: dict, image_shape: list[int]) -> None:
    """The network sees latents: their channels and size, not the images'."""
    latent_channels = vae["config"]["latent_channels"]
    factor = 2 ** (len(vae["config"]["block_out_channels"]) - 1)
    channels, size = image_shape[0], image_shape[1]
    for key in ("in_channels", "out_channels"):
        if net.get(key) not in (None, channels, latent_channels):
            raise UserError(f"net.{key}={net[key]} does not match the VAE's {latent_channels} latent channels "
                            f"(leave net.{key} at its default: latent diffusion sets it)")
        if key in net or key == "in_channels":
            net[key] = latent_channels
    net["image_size"] = size // factor


def swept_overrides(hc) -> list[str]:
    """This job's values of the swept keys (`seed=1`), from the sweep's multirun.yaml and, for
    Optuna, its search space; all of the job's overrides when those are unknown."""
    job = [str(o) for o in hc.overrides.task]
    swept = set(hc.sweeper.get("params") or {})
    multirun = Path(hc.sweep.dir) / "multirun.yaml"
    if multirun.is_file():
        for o in OmegaConf.load(multirun).hydra.overrides.task:
            key, _, value = str(o).partition("=")
            if "," in value or "(" in value:
                swept.add(key)
    picked = [o for o in job if o.partition("=")[0].lstrip("+~") in swept]
    return picked or job


def sweep_identity() -> tuple[str | None, str | None]:
    """(W&B group, run name) of a job of a Hydra multirun: the sweep folder, and the job's number
    with its swept values; (None, None) outside a sweep."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    return f"{hc.job.name}-{Path(hc.sweep.dir).name}", f"{hc.job.num}:" + ",".join(swept_overrides(hc))


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
        return runs.find_checkpoint(str(ckpt_path), Path(cfg.paths.log_dir) / cfg.task_name / "runs")
    found = runs.run_checkpoints(output_dir)
    if found and (found[0].name.startswith("hpc_ckpt_") or os.environ.get("SLURM_RESTART_COUNT", "0") != "0"):
        return found[0]   # a requeued SLURM job continues from its newest checkpoint
    if found and is_rank_zero():
        raise UserError(f"{str(output_dir)!r} already holds a run ({found[0].name}); resume it with "
                        f"ckpt_path={output_dir}, or choose a new folder (hydra.run.dir=...)")
    return None


def original_overrides(run_dir: Path) -> str:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    kept = [o for o in OmegaConf.load(path) if not str(o).startswith("ckpt_path=")]
    return " ".join(str(o) for o in kept)


def check_resume_config(ckpt_path: str, ckpt: dict, module: DiffusionModule, run_dir: Path) -> None:
    conflicts = runs.config_conflicts(ckpt["hyper_parameters"], dict(module.hparams))
    if conflicts:
        hint = original_overrides(run_dir)
        raise UserError(f"ckpt_path={ckpt_path}: the checkpoint was trained with another config: "
                        + "; ".join(conflicts)
                        + f". Resume with the run's own overrides: ddpm-train {hint} ckpt_path={ckpt_path}")


def start_run(output_dir: Path, ckpt_file: Path | None, ckpt: dict | None) -> dict:
    """The run's identity, written to <output_dir>/run.json: a new id, or the resumed run's id."""
    info = runs.read_run_info(output_dir)
    if ckpt is None:
        info = {"run_id": runs.new_run_id(), "created": runs.now_iso(), "resumes": []}
    else:
        saved = ckpt.get(CHECKPOINT_KEY, {}).get("run") or {}
        info["run_id"] = saved.get("run_id") or info.get("run_id") or runs.new_run_id()
        info.setdefault("resumes", []).append(
            {"at": runs.now_iso(), "from": str(ckpt_file), "global_step": ckpt.get("global_step")})
    info["output_dir"] = str(output_dir)
    if is_rank_zero():
        runs.write_run_info(output_dir, info)
    return info


def finish_wandb(loggers: list, exit_code: int, preempted: bool = False) -> None:
    """End each W&B run this job started, so the next job of a sweep starts its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            if preempted:
                logger.experiment.mark_preempting()
            logger.experiment.finish(exit_code=exit_code)


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGUSR1 after saving a checkpoint."""


def run(cfg: DictConfig) -> dict[str, float]:
    """Train as configured; returns the final callback metrics (e.g. val/loss).

    Continues a run when `ckpt_path` is set (same folder, W&B run, optimizer, EMA, RNG and data
    position); raises Preempted after a SIGTERM/SIGUSR1 checkpoint.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    check_strategy(cfg)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_file = resolve_resume(cfg, output_dir)
    module, datamodule = build(cfg)
    ckpt = None
    if ckpt_file is not None:
        ckpt = read_checkpoint(ckpt_file)
        check_resume_config(str(cfg.get("ckpt_path") or ckpt_file), ckpt, module, runs.run_dir_of(ckpt_file))
    info = start_run(output_dir, ckpt_file, ckpt)
    module.run_info = {"run_id": info["run_id"], "output_dir": str(output_dir)}
    del ckpt
    if cfg.get("compile"):
        module.trainable().compile()
    loggers = build_loggers(cfg, info["run_id"])
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    use_exact_resume_loop(trainer)
    for logger in loggers:
        logger.log_hyperparams(container(cfg))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_file)
    except SIGTERMException:
        finish_wandb(loggers, PREEMPTED_EXIT, preempted=True)
        saved = next((c.path for c in callbacks if isinstance(c, StopCheckpoint)), None)
        raise Preempted(f"stopped by a signal at step {trainer.global_step}; "
                        + (f"saved {saved}; " if saved else "")
                        + f"continue with ckpt_path={output_dir}") from None
    except BaseException:
        finish_wandb(loggers, 1)
        raise
    finish_wandb(loggers, 0)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweeper optimises: `optimized_metric` (default val/loss) of this run, or None
    when the run did not log it. Only an optimising sweeper (Optuna) needs it: there a missing
    metric is an error; a plain multirun ignores the return value."""
    name = cfg.get("optimized_metric") or "val/loss"
    if name in metrics:
        return metrics[name]
    if optimising_sweep():
        raise UserError(f"optimized_metric={name!r} was not logged by this run; logged: "
                        f"{', '.join(sorted(metrics)) or 'nothing'} (val/fd needs callbacks=fd; val/loss "
                        f"needs a validation: trainer.limit_val_batches > 0 and at least one epoch)")
    return None


def optimising_sweep() -> bool:
    """True inside a job of a sweep whose sweeper uses the job's return value (Optuna)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")).lower()


def remove_if_unused(output_dir: Path) -> None:
    """Remove a run folder holding nothing but Hydra's own files (a command that failed early)."""
    if output_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in output_dir.iterdir()):
        shutil.rmtree(output_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@user_errors("ddpm-train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except UserError:
        if is_rank_zero():
            remove_if_unused(Path(cfg.paths.output_dir))
        raise
    except Preempted as stop:
        print(f"ddpm-train: {stop}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
    return objective(cfg, metrics)


if __name__ == "__main__":
    main()
