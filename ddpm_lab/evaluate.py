"""ddpm-eval: sample a checkpoint and measure FD, KID and (for conditional models) class accuracy
against the training split, beside the floor: the same metrics between the held-out split and the
training split, i.e. what a model that reproduced the data perfectly would score. The metrics
`nll` (bits/dim) and `classify` (the diffusion classifier) score the checkpoint on the data
itself (ddpm_lab/task_eval.py) and sample nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm_lab.checkpoint_io import atomic_write_bytes
from ddpm_lab.checkpoints import checkpoint_of
from ddpm_lab.cli import CONF_DIR, user_errors
from ddpm_lab.config_check import check_config
from ddpm_lab.config_check.apps import DATA_METRICS, FEATURES
from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.errors import UserError, choice_error
from ddpm_lab.metrics.distances import (
    InceptionFeatures,
    RealReference,
    check_metric_names,
    class_accuracy,
    min_samples,
    within_class_spread,
)
from ddpm_lab.metrics.reference import reference_extractor, reference_name
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.pretrained import load_model
from ddpm_lab.sample import check_prediction, chosen_sampler, output_dir, pick_device
from ddpm_lab.task_eval import (
    check_data_metrics,
    data_metrics,
    no_samples_result,
    print_data_report,
)
from ddpm_lab.viz import save_grid, save_guidance_sweep_figure


def data_name(data_info: dict) -> str:
    target = data_info.get("data", {}).get("_target_", "")
    return data_info.get("name") or {"DigitsDataModule": "digits"}.get(target.rsplit(".", 1)[-1], target)


def make_extractor(cfg: DictConfig, data_info: dict):
    """(feature extractor, classifier or None, description) for the checkpoint's data."""
    if cfg.feature == "inception":
        return InceptionFeatures(cfg.inception_weights), None, "inception-v3 pool (2048)"
    if cfg.feature != "reference":
        raise choice_error("feature", cfg.feature, FEATURES)
    shape = data_info["image_shape"]
    name = reference_name(data_name(data_info), shape[-1])
    extractor, classifier, record = reference_extractor(name)
    if tuple(shape) != (classifier.in_channels, classifier.image_size, classifier.image_size):
        raise UserError(f"ckpt_path: the checkpoint makes images of shape {tuple(shape)} but the reference "
                        f"extractor {name!r} expects {(classifier.in_channels, classifier.image_size, classifier.image_size)}")
    desc = f"reference classifier {name} (penultimate layer, {classifier.num_features} features; " \
           f"held-out accuracy {record['held_out_accuracy']:.4f})"
    return extractor, classifier, desc


def evaluate(cfg: DictConfig) -> dict:
    check_config(cfg, "eval")
    metrics = list(cfg.metrics)
    sampled = check_metric_names([m for m in metrics if m not in DATA_METRICS])
    if cfg.num_samples < 2:
        raise UserError(f"num_samples={cfg.num_samples} must be >= 2")
    device = pick_device(cfg.device)
    ckpt_path = checkpoint_of(cfg)
    module = load_model(ckpt_path, device)
    check_prediction(cfg, module)
    if module.is_video:                   # clips: the video judge (metrics= names image metrics)
        from ddpm_lab.video_eval import evaluate_video
        return log_result(cfg, evaluate_video(cfg, module, ckpt_path, output_dir(cfg)))
    check_data_metrics(module, metrics)
    if sampled:
        result = sample_quality(cfg, module, ckpt_path, sampled)
        print_report(result)
    else:
        result = no_samples_result(cfg, ckpt_path)
    if len(sampled) < len(metrics):
        data = data_metrics(cfg, module, metrics)
        result["model"] |= data.pop("model")
        result |= data
        print_data_report(result)
    atomic_write_bytes(output_dir(cfg) / "metrics.json", (json.dumps(result, indent=2) + "\n").encode())
    return log_result(cfg, result)


def sample_quality(cfg: DictConfig, module: DiffusionModule, ckpt_path, metrics: list[str]) -> dict:
    """FD / KID / accuracy of the checkpoint's samples beside the floor (samples.png, and the
    guidance sweep's figure, to the output folder)."""
    data_info = module.hparams["data_info"]
    if not data_info.get("data"):
        raise UserError(f"ckpt_path={str(ckpt_path)!r}: a diffusers model names no data set to compare its "
                        f"samples with; import it with the data it models: ddpm-import folder=... out=... data=<name>")
    extractor, classifier, feature_desc = make_extractor(cfg, data_info)
    if "fd" in metrics and cfg.num_samples < min_samples(extractor):
        raise UserError(f"num_samples={cfg.num_samples} is too small for FD in this "
                        f"{min_samples(extractor) - 1}-dimensional feature space: use at least {min_samples(extractor)}")
    if "accuracy" in metrics and not module.guidance.conditional:
        raise UserError("metrics: 'accuracy' needs a class-conditional checkpoint; this one is unconditional")

    dm = instantiate(data_info["data"])
    dm.setup("fit")
    train, val = stack_dataset(dm.train_set), stack_dataset(dm.val_set)
    train_images, val_images = train.image, val.image
    labels = module.sampling_labels(cfg.num_samples, cfg.get("label"))
    guidance = cfg.get("guidance") or {}
    scales = list(guidance.get("scales") or []) or [guidance.get("scale")]
    sampler = chosen_sampler(cfg, module)
    result = {"ckpt_path": str(ckpt_path), "features": feature_desc, "sampler": dataclasses.asdict(sampler),
              "seed": cfg.seed, "num_generated": cfg.num_samples, "num_train": len(train_images),
              "num_held_out": len(val_images), "model": {}, "floor": {}}
    floor = result["floor"]
    real = RealReference(extractor, train_images)      # the training split's features, extracted once
    if "fd" in metrics:
        floor["fd"] = real.fd(val_images)
        if len(val_images) >= min_samples(extractor):
            floor[f"fd@{len(val_images)}"] = floor["fd"]
    if "kid" in metrics:
        floor["kid"], floor["kid_std"] = real.kid(val_images, subset_size=cfg.kid_subset_size, seed=cfg.seed)
    if labels is not None:
        if "accuracy" in metrics:
            floor["accuracy"] = class_accuracy(classifier, val_images, val.label)
        floor["diversity"] = within_class_spread(extractor, train_images, train.label)
    sweep = []
    for scale in scales:
        start = time.perf_counter()
        fake = module.sample(cfg.num_samples, seed=cfg.seed, batch_size=cfg.batch_size, progress=True,
                             labels=labels, guidance_scale=scale, guidance_rescale=guidance.get("rescale"),
                             **sampler.options())
        seconds = round(time.perf_counter() - start, 2)      # the sampling alone
        row = model_metrics(cfg, metrics, real, classifier, len(val_images), fake, labels)
        row["sample_seconds"] = seconds
        if labels is not None:
            row["guidance_scale"] = module.guidance.scale if scale is None else float(scale)
        sweep.append(row)
    result["model"] = {k: v for k, v in sweep[0].items() if k not in ("sample_seconds", "guidance_scale")}
    result["sample_seconds"] = sweep[0]["sample_seconds"]
    out = output_dir(cfg)
    save_grid(fake[:64], out / "samples.png", upscale=4)
    if len(scales) > 1:
        result["guidance_sweep"] = sweep
        save_guidance_sweep_figure(sweep, floor, out / "guidance_sweep.png")
    return result


def log_result(cfg: DictConfig, result: dict) -> dict:
    """The model's metrics (and the floor's, or the real clips') to the configured loggers."""
    floor = result.get("floor") or (result.get("reference") or {}).get("real") or {}
    for logger in (instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None):
        logger.log_metrics({f"eval/{k}": v for k, v in result["model"].items()}
                           | {f"eval/floor_{k}": v for k, v in floor.items()})
        logger.finalize("success")
    return result


def model_metrics(cfg: DictConfig, metrics: list[str], real: RealReference, classifier, n_held_out: int,
                  fake: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """The requested metrics of one set of generated images against the training split `real`
    (plus diversity for conditional models)."""
    extractor, row = real.extractor, {}
    if "fd" in metrics:
        row["fd"] = real.fd(fake)
        # FD is biased by the sample count, so the floor's count is the fair comparison:
        # FD of disjoint generated subsets as large as the held-out split (mean, std).
        subsets = [fake[i:i + n_held_out] for i in range(0, len(fake) - n_held_out + 1, n_held_out)][:5]
        if subsets and n_held_out >= min_samples(extractor):
            fds = torch.tensor([real.fd(s) for s in subsets])
            row[f"fd@{n_held_out}"] = fds.mean().item()
            row[f"fd@{n_held_out}_std"] = fds.std().item() if len(fds) > 1 else 0.0
    if "kid" in metrics:
        row["kid"], row["kid_std"] = real.kid(fake, subset_size=cfg.kid_subset_size, seed=cfg.seed)
    if labels is not None:
        if "accuracy" in metrics:
            row["accuracy"] = class_accuracy(classifier, fake, labels)
        row["diversity"] = within_class_spread(extractor, fake, labels)
    return row


def print_report(result: dict) -> None:
    print(f"\nddpm-eval: {result['ckpt_path']}")
    print(f"features: {result['features']}")
    n_gen, n_val, n_train = result["num_generated"], result["num_held_out"], result["num_train"]
    print(f"{'metric':<10}{'model':>20}{'floor':>10}   sample counts (vs {n_train} train images)")
    for key, value in result["model"].items():
        if key.endswith("_std"):
            continue
        std = result["model"].get(f"{key}_std")
        shown = f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
        floor = result["floor"].get(key)
        model_count = f"{min(n_gen, 5 * n_val)} generated in sets of {n_val}" if "@" in key else f"{n_gen} generated"
        floor_count = "-" if floor is None else (f"{n_train} train" if key == "diversity" else f"{n_val} held-out")
        floor_shown = "-" if floor is None else f"{floor:.4f}"
        print(f"{key:<10}{shown:>20}{floor_shown:>10}   model: {model_count}; floor: {floor_count}")
    sweep = result.get("guidance_sweep")
    if sweep:
        keys = [k for k in sweep[0] if not k.endswith("_std") and k not in ("guidance_scale", "sample_seconds")]
        print("\nguidance sweep (the same labels and seed at every scale):")
        print(f"{'scale':>8}" + "".join(f"{k:>12}" for k in keys))
        for row in sweep:
            print(f"{row['guidance_scale']:>8g}" + "".join(f"{row[k]:>12.4f}" for k in keys))
        print(f"{'data':>8}" + "".join(f"{result['floor'][k]:>12.4f}" if k in result["floor"] else f"{'-':>12}"
                                       for k in keys))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@user_errors("ddpm-eval")
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["model"].get("fd", float("nan"))


if __name__ == "__main__":
    main()
