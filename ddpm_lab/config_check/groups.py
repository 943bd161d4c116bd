"""What each config group allows, per `_target_` (conf/data, net, schedule, diffusion, sampler,
guidance, vae, callbacks, logger) and for the Lightning Trainer (conf/trainer).

A new key: add `name: rule` to its target's table below (rules: ddpm_lab/config_check/rules.py).
A key of a target that is not in its table is accepted when it is a named parameter of the
target (its value unchecked); any other key is an error naming the keys the target takes.
"""

from __future__ import annotations

import re
from typing import Any

from ddpm_lab.config_check.rules import (
    POSITIVE,
    PROBABILITY,
    SEED,
    AnyOf,
    Choice,
    Group,
    ListOf,
    Named,
    Section,
    boolean,
    custom,
    integer,
    is_int,
    is_number,
    names,
    number,
    string,
)

CONDITIONS = names("ddpm_lab.diffusion.guidance", "CONDITIONS")
PREDICTIONS = names("ddpm_lab.diffusion.process", "PREDICTIONS")
LOSS_WEIGHTINGS = names("ddpm_lab.diffusion.process", "LOSS_WEIGHTINGS")
FLOW_PREDICTIONS = names("ddpm_lab.diffusion.flow", "PREDICTIONS")
FLOW_LOSS_WEIGHTINGS = names("ddpm_lab.diffusion.flow", "LOSS_WEIGHTINGS")
TIME_SAMPLINGS = names("ddpm_lab.diffusion.flow", "TIME_SAMPLINGS")
SCHEDULES = names("ddpm_lab.diffusion.schedules", "SCHEDULES")
SAMPLERS = names("ddpm_lab.diffusion.samplers", "SAMPLERS")
SPACINGS = names("ddpm_lab.diffusion.samplers", "SPACINGS")
VARIANCES = names("ddpm_lab.diffusion.samplers", "VARIANCES")

# ----- data ------------------------------------------------------------------------------------
_DATA = {"batch_size": integer(1), "val_fraction": number(0, 1, lo_open=True, hi_open=True),
         "seed": SEED, "num_workers": integer(0), "image_size": integer(1)}
DATA = Group({
    "ddpm_lab.data.DigitsDataModule": Section({**_DATA, "channels": Choice((1,)), "split_seed": SEED}),
    "ddpm_lab.data.MNISTDataModule": Section({**_DATA, "channels": Choice((1,)), "split_seed": SEED}),
    "ddpm_lab.data.GaussianMixtureDataModule": Section({
        **{k: v for k, v in _DATA.items() if k != "image_size"},
        "num_points": integer(20), "separation": POSITIVE, "data_seed": SEED}),
    "ddpm_lab.data.ImageFolderDataModule": Section({
        **_DATA, "path": string(), "channels": Choice((1, 3)), "split_seed": SEED}),
    "ddpm_lab.data.ShapesDataModule": Section({
        **_DATA, "image_size": integer(8), "channels": Choice((3,)), "num_images": integer(20),
        "data_seed": SEED, "partial_captions": PROBABILITY}),
    "ddpm_lab.data.MovingShapesDataModule": Section({
        **_DATA, "image_size": integer(16), "channels": Choice((3,)), "num_clips": integer(20),
        "frames": integer(2), "fps": integer(1), "data_seed": SEED, "partial_captions": PROBABILITY}),
})

# ----- net -------------------------------------------------------------------------------------
_TEXT = Section({"max_tokens": integer(1), "dim": integer(1), "layers": integer(1), "heads": integer(1)},
                null=True)
_NET = {"image_size": integer(1), "in_channels": integer(1), "out_channels": integer(1, null=True),
        "num_classes": integer(1, null=True), "dropout": number(0, 1, hi_open=True)}
_DIFFUSERS = {**_NET, "block_out_channels": ListOf(integer(1), min_len=1), "layers_per_block": integer(1),
              "attention_levels": ListOf(boolean(), null=True), "norm_num_groups": integer(1)}
_TRANSFORMER = {**{k: v for k, v in _NET.items() if k != "dropout"}, "patch_size": integer(1), "text": _TEXT}
NET = Group({
    "ddpm_lab.nets.UNet": Section({
        **_NET, "base_channels": integer(1), "channel_mult": ListOf(integer(1), min_len=1),
        "num_res_blocks": integer(1), "attention_resolutions": ListOf(integer(1)), "num_heads": integer(1),
        "norm_groups": integer(1), "text": _TEXT, "cross_attention_resolutions": ListOf(integer(1), null=True),
        "downsample_padding": Choice(names("ddpm_lab.nets.unet", "DOWNSAMPLE_PADDINGS"))}),
    # config: a whole UNet2DModel config (an imported diffusers folder's), its keys diffusers' own
    "ddpm_lab.nets.diffusers.DiffusersUNet2D": Section({**_DIFFUSERS, "config": Section({}, closed=False, null=True)}),
    "ddpm_lab.nets.diffusers.DiffusersUNet2DCondition": Section({
        **{k: v for k, v in _DIFFUSERS.items() if k not in ("num_classes", "dropout")},
        "attention_head_dim": integer(1), "text": _TEXT}),
    "ddpm_lab.nets.MLPDenoiser": Section({"dim": integer(1), "hidden": integer(1), "depth": integer(1),
                                          "num_classes": integer(1, null=True)}),
    "ddpm_lab.nets.DiT": Section({
        **_TRANSFORMER, "dim": integer(1), "depth": integer(1), "heads": integer(1), "mlp_ratio": POSITIVE,
        "qk_norm": boolean(), "rope_theta": POSITIVE, "frame_embedding": boolean(), "position_embedding": boolean(),
        "attention": Choice(names("ddpm_lab.nets.video_attention", "ATTENTIONS"))}),
    "ddpm_lab.nets.wan.WanTransformer": Section({
        **_TRANSFORMER, "num_attention_heads": integer(1), "attention_head_dim": integer(1),
        "num_layers": integer(1), "ffn_dim": integer(1), "qk_norm": Choice(names("ddpm_lab.nets.wan", "QK_NORMS")),
        "cross_attn_norm": boolean(), "rope_max_seq_len": integer(1), "frame_embedding": boolean(),
        "position_embedding": boolean()}),
})

# ----- schedule, diffusion, sampler, guidance --------------------------------------------------
_BETAS = {"beta_start": number(0, 1, lo_open=True, hi_open=True),
          "beta_end": number(0, 1, lo_open=True, hi_open=True)}
SCHEDULE = Group({"ddpm_lab.diffusion.NoiseSchedule.from_name": Section(
    {"name": Choice(SCHEDULES),
     "num_steps": integer(1, range_msg="{key} must be an integer >= 1, got {value}"),
     "zero_terminal_snr": boolean()},
    variant=("name", {"linear": _BETAS, "sigmoid": _BETAS,
                      "cosine": {"s": number(0), "max_beta": number(0, 1, lo_open=True, hi_open=True)}}))})

_SHIFT = "{key}={value} must be a positive number (1 = no shift, > 1 = more time near the noise)"
FLOW_TARGET = "ddpm_lab.diffusion.FlowMatching"
DIFFUSION = Group({
    "ddpm_lab.diffusion.GaussianDiffusion": Section({
        "prediction": Choice(PREDICTIONS), "loss_weighting": Choice(LOSS_WEIGHTINGS), "min_snr_gamma": POSITIVE}),
    FLOW_TARGET: Section({
        "prediction": Choice(FLOW_PREDICTIONS), "shift": number(0, lo_open=True, range_msg=_SHIFT),
        "time_sampling": Choice(TIME_SAMPLINGS), "logit_mean": number(), "logit_std": POSITIVE,
        "loss_weighting": Choice(FLOW_LOSS_WEIGHTINGS), "time_scale": POSITIVE, "sigma_data": POSITIVE}),
})


def sampler_rules(null: bool) -> dict:
    """The sampler keys; `null`: each may be null (ddpm-sample / ddpm-eval: keep the checkpoint's)."""
    return {"name": Choice(SAMPLERS, null=null), "steps": integer(1, null=True),
            "eta": number(0, 1, null=True), "spacing": Choice(SPACINGS, null=null),
            "variance": Choice(VARIANCES, null=null), "clip_x0": boolean(null=null),
            "scheduler": string(null=True, desc="a diffusers scheduler class name"),
            "shift": number(0, lo_open=True, null=True, range_msg=_SHIFT + " or null"),
            "use_clipped_model_output": boolean(null=True),
            "times": ListOf(number(0, lo_open=True), min_len=1, null=True)}


SAMPLER = Group({"ddpm_lab.diffusion.samplers.Sampler": Section(sampler_rules(null=False))})

GUIDANCE = Group({"ddpm_lab.diffusion.guidance.Guidance": Section({
    "condition": Choice(CONDITIONS), "p_uncond": PROBABILITY, "scale": number(0), "rescale": PROBABILITY})})

# ----- vae (latent diffusion) ------------------------------------------------------------------
_POWER_OF_TWO = custom("a power of two (1, 2, 4, 8, ...)", lambda v: is_int(v) and v >= 1 and not v & (v - 1))
VAE = Group({
    "ddpm_lab.autoencoders.autoencoder_kl": Section({
        "image_size": integer(1), "in_channels": integer(1), "latent_channels": integer(1),
        "downsample": _POWER_OF_TWO, "base_channels": integer(1), "max_mult": integer(1),
        "layers_per_block": integer(1), "norm_num_groups": integer(1), "mid_attention": boolean()}),
    "ddpm_lab.autoencoders.autoencoder_kl_wan": Section({
        "image_size": integer(1), "in_channels": integer(1), "z_dim": integer(1), "base_dim": integer(1),
        "dim_mult": ListOf(integer(1), min_len=1), "num_res_blocks": integer(1),
        "temporal_downsample": ListOf(boolean()), "attn_scales": ListOf(number(0))}),
    "ddpm_lab.autoencoders.from_pretrained": Section({"path": string()}),
    "ddpm_lab.autoencoders.from_run": Section({"path": string(), "runs_root": string(null=True)}),
}, null=True)

# ----- distill (stage=distill) -------------------------------------------------------------------
_GUIDANCE_SCALE = number(0, null=True, range_msg="{key}={float} must be >= 0 (the guidance scale distilled) or null")
DISTILL = Group({
    "ddpm_lab.modules.distillation.ProgressiveDistillation": Section({
        "start_steps": _POWER_OF_TWO, "final_steps": _POWER_OF_TWO, "steps_per_round": integer(1),
        "guidance_scale": _GUIDANCE_SCALE}),
    "ddpm_lab.modules.consistency.ConsistencyDistillation": Section({
        "num_points": integer(1), "target_decay": number(0, 1, hi_open=True), "steps": integer(1),
        "sampling_steps": integer(1), "guidance_scale": _GUIDANCE_SCALE,
        "sampling_times": ListOf(number(0, lo_open=True), min_len=1, null=True)}),
    "ddpm_lab.modules.reflow.Reflow": Section({
        "num_pairs": integer(1), "pair_seed": SEED, "pair_steps": integer(1), "steps": integer(1),
        "sampling_steps": integer(1), "guidance_scale": _GUIDANCE_SCALE}),
}, null=True)


# ----- trainer ---------------------------------------------------------------------------------
class StrOrTarget:
    """A name checked by `name_rule`, or a `_target_` group (its keys against its signature)."""

    def __init__(self, name_rule: Any, null: bool = False):
        self.name_rule, self.null = name_rule, null

    def check(self, key: str, value: Any) -> None:
        if value is None and self.null:
            return
        if isinstance(value, dict):
            Group().check(key, value)
        else:
            self.name_rule.check(key, value)


def _accelerators() -> tuple:
    from lightning.pytorch.accelerators import AcceleratorRegistry
    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def _strategies() -> tuple:
    from lightning.pytorch.strategies import StrategyRegistry
    return ("auto", *StrategyRegistry.available_strategies())


def _precisions() -> tuple:
    from typing import get_args

    from lightning.fabric.plugins.precision import precision as p
    return (*get_args(p._PRECISION_INPUT_STR), *get_args(p._PRECISION_INPUT_STR_ALIAS),
            *get_args(p._PRECISION_INPUT_INT))


def _devices_ok(v: Any) -> bool:
    if is_int(v):
        return v == -1 or v >= 1
    if isinstance(v, str):
        return v == "auto" or re.fullmatch(r"-1|\d+|\d+(\s*,\s*\d+)*\s*,?", v.strip()) is not None
    return isinstance(v, list) and len(v) > 0 and all(is_int(i) and i >= 0 for i in v)


def _duration_ok(v: Any) -> bool:
    if isinstance(v, str):
        return re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v.strip()) is not None
    units = {"days", "hours", "minutes", "seconds", "milliseconds", "microseconds", "weeks"}
    return isinstance(v, dict) and bool(v) and all(k in units and is_number(x) and x >= 0 for k, x in v.items())


_DURATION = custom("a duration 'DD:HH:MM:SS' or a dict such as {hours: 1}", _duration_ok)
_BATCHES = AnyOf((integer(0), number(0, 1)), "an integer >= 0 (batches) or a number in [0, 1] (a fraction)")
_NULL = custom("null", lambda v: False, null=True)


def _or_null(spec: Any, desc: str) -> AnyOf:
    return AnyOf((_NULL, spec), f"{desc} or null")


TRAINER = Group({"lightning.pytorch.Trainer": Section({
    "accelerator": StrOrTarget(Choice(_accelerators)),
    "strategy": StrOrTarget(Choice(_strategies)),
    "devices": custom("-1 (all), a number of devices >= 1, 'auto', a list of device indices or '0,1'",
                      _devices_ok),
    "num_nodes": integer(1),
    "precision": Choice(_precisions, null=True),
    "fast_dev_run": AnyOf((boolean(), integer(0)), "true, false or a number of batches >= 0"),
    "max_epochs": integer(-1, null=True), "min_epochs": integer(0, null=True),
    "max_steps": integer(-1), "min_steps": integer(0, null=True),
    "max_time": _or_null(_DURATION, _DURATION.desc),
    "limit_train_batches": _or_null(_BATCHES, _BATCHES.desc),
    "limit_val_batches": _or_null(_BATCHES, _BATCHES.desc),
    "limit_test_batches": _or_null(_BATCHES, _BATCHES.desc),
    "limit_predict_batches": _or_null(_BATCHES, _BATCHES.desc),
    "overfit_batches": _BATCHES,
    "val_check_interval": AnyOf((_NULL, integer(1), number(0, 1, lo_open=True), _DURATION),
                                "an integer >= 1 (batches), a number in (0, 1] (a fraction of the epoch), "
                                "a duration or null"),
    "check_val_every_n_epoch": integer(1, null=True),
    "num_sanity_val_steps": integer(-1, null=True),
    "log_every_n_steps": integer(0, null=True),
    "enable_checkpointing": boolean(null=True), "enable_progress_bar": boolean(null=True),
    "enable_model_summary": boolean(null=True),
    "accumulate_grad_batches": integer(1),
    "gradient_clip_val": number(0, null=True),
    "gradient_clip_algorithm": Choice(("norm", "value"), null=True),
    "deterministic": AnyOf((_NULL, boolean(), Choice(("warn",))), "true, false, 'warn' or null"),
    "benchmark": boolean(null=True), "inference_mode": boolean(), "use_distributed_sampler": boolean(),
    "profiler": StrOrTarget(Choice(("simple", "advanced", "pytorch", "xla")), null=True),
    "detect_anomaly": boolean(), "barebones": boolean(), "sync_batchnorm": boolean(),
    "plugins": AnyOf((_NULL, ListOf(StrOrTarget(string())), StrOrTarget(string())),
                     "a list of plugins (names or _target_ groups) or null"),
    "reload_dataloaders_every_n_epochs": integer(0),
    "default_root_dir": string(null=True),
    "enable_autolog_hparams": boolean(),
})})

# ----- callbacks and loggers -------------------------------------------------------------------
_STOP_CHECKPOINT = Section({"dirpath": string(), "filename": string(), "signals": ListOf(string())})
CALLBACKS = Named(Group({
    "ddpm_lab.callbacks.sample_grid.SampleGrid": Section({
        "dirpath": string(), "every_n_epochs": integer(0), "num_samples": integer(1), "seed": SEED,
        "steps": integer(1, null=True), "upscale": integer(1)}),
    "ddpm_lab.callbacks.ema.ForeachEMA": Section({
        "decay": number(0, 1, hi_open=True), "use_buffers": boolean(), "update_every_n_steps": integer(1),
        "update_starting_at_step": integer(0, null=True), "update_starting_at_epoch": integer(0, null=True),
        "device": AnyOf((_NULL, string(), integer(0)), "a device name, an index or null")}),
    "lightning.pytorch.callbacks.ModelCheckpoint": Section({
        "dirpath": string(null=True), "filename": string(null=True), "monitor": string(null=True),
        "verbose": boolean(), "save_last": AnyOf((_NULL, boolean(), Choice(("link",))), "true, false, 'link' or null"),
        "save_top_k": integer(-1), "save_on_exception": boolean(), "save_weights_only": boolean(),
        "mode": Choice(("min", "max")), "auto_insert_metric_name": boolean(),
        "every_n_train_steps": integer(0, null=True), "every_n_epochs": integer(0, null=True),
        "save_on_train_epoch_end": boolean(null=True), "enable_version_counter": boolean()}),
    "lightning.pytorch.callbacks.TQDMProgressBar": Section({
        "refresh_rate": integer(0), "process_position": integer(0), "leave": boolean()}),
    "lightning.pytorch.callbacks.LearningRateMonitor": Section({
        "logging_interval": Choice(("step", "epoch"), null=True), "log_momentum": boolean(),
        "log_weight_decay": boolean()}),
    "ddpm_lab.callbacks.faults.StopCheckpoint": _STOP_CHECKPOINT,
    "ddpm_lab.callbacks.faults.StopOnNonFiniteLoss": Section({}),
    "ddpm_lab.callbacks.evaluation.FDEvaluation": Section({
        "every_n_epochs": integer(0), "num_samples": integer(2), "steps": integer(1, null=True), "seed": SEED,
        "reference": string(null=True)}),
    "ddpm_lab.callbacks.guidance_figure.GuidanceFigure": Section({
        "path": string(), "scales": ListOf(number(0), min_len=1), "per_class": integer(1), "seed": SEED,
        "steps": integer(1, null=True)}),
}))

LOGGERS = Named(Group({
    "ddpm_lab.loggers.csv_logger": Section({"save_dir": string(), "name": string()}),
    "ddpm_lab.loggers.wandb_logger": Section({
        "save_dir": string(), "project": string(), "name": string(null=True), "entity": string(null=True),
        "group": string(null=True), "tags": ListOf(string(), null=True),
        "mode": Choice(("online", "offline", "disabled"), null=True), "id": string(null=True),
        "log_model": AnyOf((boolean(), Choice(("all",))), "true, false or 'all'")}),
}))
