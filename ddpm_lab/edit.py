"""ddpm-edit: a downstream task (conf/task/<name>.yaml) solved by a trained checkpoint on held-out
images or a folder of images. Writes inputs.png, results.png, figure.png (rows: the input the
method saw, its result, the truth), results.pt and metrics.json (the task's own figures plus
PSNR against the truth and the reference classifier's accuracy on the results and the inputs).
A Hydra app with a testable `run(cfg)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lab.checkpoint_io import atomic_save, atomic_write_bytes
from ddpm_lab.checkpoints import checkpoint_of
from ddpm_lab.cli import CONF_DIR, check_group_choice, user_errors
from ddpm_lab.config_check import check_config
from ddpm_lab.config_check.apps import HELD_OUT
from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.data.image_folder import IMAGE_SUFFIXES, ImageFolderDataset, find_images
from ddpm_lab.errors import UserError
from ddpm_lab.evaluate import data_name
from ddpm_lab.metrics.distances import class_accuracy
from ddpm_lab.metrics.reference import load_reference, reference_name
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.sample import output_dir, pick_device
from ddpm_lab.tasks import TaskInputs, TaskResult
from ddpm_lab.viz import save_grid

FIGURE_COLUMNS = 10


def held_out_inputs(module: DiffusionModule, num_images: int) -> TaskInputs:
    """The first `num_images` of the held-out split of the checkpoint's own data config."""
    datamodule = instantiate(module.hparams["data_info"]["data"])
    datamodule.setup("fit")
    split = stack_dataset(datamodule.val_set, limit=num_images)
    labels = None if split.label is None else split.label[:num_images]
    return TaskInputs(images=split.image[:num_images], labels=labels)


def folder_inputs(path: str, module: DiffusionModule, num_images: int) -> TaskInputs:
    """The first `num_images` images under `path` (sorted), resized and centre-cropped to the
    model's size in its channels; labels from sub-folder names when every image sits in one."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"input={path!r} is not a folder; give input={HELD_OUT} or a folder of images")
    if not find_images(root):
        raise UserError(f"input={path!r} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                        f"recursively)")
    channels, height, _ = module.image_shape
    dataset = ImageFolderDataset(root, height, channels)
    split = stack_dataset(torch.utils.data.Subset(dataset, range(min(num_images, len(dataset)))))
    return TaskInputs(images=split.image, labels=split.label if dataset.classes else None)


def load_inputs(cfg: DictConfig, module: DiffusionModule) -> TaskInputs:
    if module.is_video or len(module.image_shape) != 3:
        raise UserError(f"ckpt_path: ddpm-edit works on image checkpoints; this one makes "
                        f"{'video clips' if module.is_video else 'points'}")
    if str(cfg.input) == HELD_OUT:
        return held_out_inputs(module, cfg.num_images)
    return folder_inputs(str(cfg.input), module, cfg.num_images)


def psnr(images: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over images of 10 log10(peak^2 / MSE), peak = 2 for [-1, 1] images (the PSNR of the
    same images in [0, 1]); an MSE below 1e-10 counts as 1e-10."""
    mse = (images.float() - truth.float()).flatten(1).pow(2).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(4.0 / mse)).mean().item()


def reference_classifier(module: DiffusionModule):
    """The shipped reference classifier of the checkpoint's data and size, or None."""
    info = module.hparams["data_info"]
    try:
        classifier, _ = load_reference(reference_name(data_name(info), module.image_shape[-1]))
    except UserError:
        return None
    shape = (classifier.in_channels, classifier.image_size, classifier.image_size)
    return classifier if shape == tuple(module.image_shape) else None


def common_metrics(module: DiffusionModule, inputs: TaskInputs, result: TaskResult) -> dict:
    """PSNR against the truth (the input images) and, with a reference classifier and known
    labels, its accuracy on the results (against target_labels when the task sets them), on what
    the method saw and on the truth."""
    truth = inputs.images
    metrics = {"num_images": len(truth), "psnr": psnr(result.results, truth),
               "psnr_input": psnr(result.inputs, truth)}
    classifier = reference_classifier(module)
    target = result.target_labels if result.target_labels is not None else inputs.labels
    if classifier is not None and target is not None:
        metrics["accuracy"] = class_accuracy(classifier, result.results, target)
        metrics["accuracy_target"] = "target_labels" if result.target_labels is not None else "true labels"
        if inputs.labels is not None:
            metrics["accuracy_input"] = class_accuracy(classifier, result.inputs, inputs.labels)
            metrics["accuracy_truth"] = class_accuracy(classifier, truth, inputs.labels)
    return metrics


def save_rows(rows: list[torch.Tensor], path: Path) -> Path:
    """A figure of image rows (e.g. input, result, truth), the first FIGURE_COLUMNS of each."""
    k = min(len(rows[0]), FIGURE_COLUMNS)
    return save_grid(torch.cat([row[:k] for row in rows]), path, nrow=k, upscale=4)


def write_outputs(out: Path, inputs: TaskInputs, result: TaskResult, record: dict) -> dict[str, str]:
    paths = {"inputs": save_grid(result.inputs, out / "inputs.png", upscale=4),
             "results": save_grid(result.results, out / "results.png", upscale=4),
             "figure": save_rows([result.inputs, result.results, inputs.images], out / "figure.png"),
             "tensors": atomic_save({"inputs": result.inputs, "results": result.results, "truth": inputs.images,
                                     "labels": inputs.labels, "target_labels": result.target_labels, **record},
                                    out / "results.pt"),
             "metrics": atomic_write_bytes(out / "metrics.json", (json.dumps(record, indent=2) + "\n").encode())}
    return {k: str(v) for k, v in paths.items()}


def run(cfg: DictConfig) -> dict:
    """Run the configured task on the configured inputs; returns the metrics record."""
    check_config(cfg, "edit")
    device = pick_device(cfg.device)
    ckpt_path = checkpoint_of(cfg)
    task = instantiate(cfg.task, _convert_="all")
    module = DiffusionModule.load(ckpt_path, device)
    inputs = load_inputs(cfg, module)
    result = task.run(module, inputs, torch.Generator().manual_seed(cfg.seed))
    record = {"task": OmegaConf.to_container(cfg.task, resolve=True), "ckpt_path": str(ckpt_path),
              "input": str(cfg.input), "seed": cfg.seed, **common_metrics(module, inputs, result),
              "task_metrics": result.metrics}
    paths = write_outputs(output_dir(cfg), inputs, result, record)
    shown = {k: v for k, v in record.items() if isinstance(v, float)}
    print("ddpm-edit: " + ", ".join(f"{k}={v:.4f}" for k, v in {**shown, **result.metrics}.items()))
    print(f"ddpm-edit: wrote {', '.join(paths.values())}")
    return record


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="edit")
@user_errors("ddpm-edit")
def hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """The console script: a task that has no config is one line before Hydra starts."""
    check_group_choice(sys.argv[1:], "task", "ddpm-edit")
    hydra_main()


if __name__ == "__main__":
    main()
