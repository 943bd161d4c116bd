"""ddpm-eval: sample a checkpoint and measure FD, KID and (for conditional models) class accuracy
against the training split, beside the floor: the same metrics between the held-out split and the
training split, i.e. what a model that reproduced the data perfectly would score.
"""

from __future__ import annotations

import json
import time

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm_lab.checkpoints import load_module
from ddpm_lab.cli import CONF_DIR, user_errors
from ddpm_lab.errors import UserError
from ddpm_lab.metrics.distances import (
    InceptionFeatures,
    check_metric_names,
    frechet_distance,
    images_of,
    kernel_distance,
    min_samples,
)
from ddpm_lab.metrics.reference import reference_extractor, reference_name
from ddpm_lab.sample import (
    check_prediction,
    effective_sampler,
    output_dir,
    pick_device,
    sampler_overrides,
)
from ddpm_lab.viz import save_grid


def data_name(data_info: dict) -> str:
    target = data_info.get("data", {}).get("_target_", "")
    return data_info.get("name") or {"DigitsDataModule": "digits"}.get(target.rsplit(".", 1)[-1], target)


def make_extractor(cfg: DictConfig, data_info: dict):
    """(feature extractor, classifier or None, description) for the checkpoint's data."""
    if cfg.feature == "inception":
        return InceptionFeatures(cfg.inception_weights), None, "inception-v3 pool (2048)"
    if cfg.feature != "reference":
        raise UserError(f"feature={cfg.feature!r} is not allowed; choose reference or inception")
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
    metrics = check_metric_names(cfg.metrics)
    if cfg.num_samples < 2:
        raise UserError(f"num_samples={cfg.num_samples} must be >= 2")
    device = pick_device(cfg.device)
    module = load_module(cfg.ckpt_path, device)
    check_prediction(cfg, module)
    data_info = module.hparams["data_info"]
    extractor, classifier, feature_desc = make_extractor(cfg, data_info)
    if "fd" in metrics and cfg.num_samples < min_samples(extractor):
        raise UserError(f"num_samples={cfg.num_samples} is too small for FD in this "
                        f"{min_samples(extractor) - 1}-dimensional feature space: use at least {min_samples(extractor)}")
    if "accuracy" in metrics and not getattr(module.net, "num_classes", None):
        raise UserError("metrics: 'accuracy' needs a class-conditional checkpoint; this one is unconditional")

    dm = instantiate(data_info["data"])
    dm.setup("fit")
    train_images, val_images = images_of(dm.train_set), images_of(dm.val_set)
    start = time.perf_counter()
    fake = module.sample(cfg.num_samples, seed=cfg.seed, batch_size=cfg.batch_size, progress=True,
                         **sampler_overrides(cfg))
    sample_seconds = time.perf_counter() - start
    sampler = effective_sampler(module, sampler_overrides(cfg))

    result = {"ckpt_path": str(cfg.ckpt_path), "features": feature_desc, "sampler": sampler,
              "seed": cfg.seed, "num_generated": len(fake), "num_train": len(train_images),
              "num_held_out": len(val_images), "sample_seconds": round(sample_seconds, 2),
              "model": {}, "floor": {}}
    for name in metrics:
        if name == "fd":
            result["model"]["fd"] = frechet_distance(extractor, train_images, fake)
            result["floor"]["fd"] = frechet_distance(extractor, train_images, val_images)
            # FD is biased by the sample count, so the floor's count is the fair comparison:
            # FD of disjoint generated subsets as large as the held-out split (mean, std).
            n = len(val_images)
            subsets = [fake[i:i + n] for i in range(0, len(fake) - n + 1, n)][:5]
            if subsets and n >= min_samples(extractor):
                fds = torch.tensor([frechet_distance(extractor, train_images, s) for s in subsets])
                result["model"][f"fd@{n}"] = fds.mean().item()
                result["model"][f"fd@{n}_std"] = fds.std().item() if len(fds) > 1 else 0.0
                result["floor"][f"fd@{n}"] = result["floor"]["fd"]
        elif name == "kid":
            for key, imgs in (("model", fake), ("floor", val_images)):
                mean, std = kernel_distance(extractor, train_images, imgs, subset_size=cfg.kid_subset_size,
                                            seed=cfg.seed)
                result[key]["kid"], result[key]["kid_std"] = mean, std
    out = output_dir(cfg)
    save_grid(fake[:64], out / "samples.png", upscale=4)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    for logger in (instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None):
        logger.log_metrics({f"eval/{k}": v for k, v in result["model"].items()}
                           | {f"eval/floor_{k}": v for k, v in result["floor"].items()})
        logger.finalize("success")
    print_report(result)
    return result


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
        floor_count = f"{n_val} held-out" if floor is not None else "-"
        floor_shown = "-" if floor is None else f"{floor:.4f}"
        print(f"{key:<10}{shown:>20}{floor_shown:>10}   model: {model_count}; floor: {floor_count}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@user_errors("ddpm-eval")
def main(cfg: DictConfig) -> float:
    return evaluate(cfg)["model"].get("fd", float("nan"))


if __name__ == "__main__":
    main()
