"""ddpm-eval's metrics that score a checkpoint on data rather than on its samples:
`nll`, the variational bound in bits/dim of the held-out split and of as many training images
(the gap), and `classify`, the diffusion classifier's accuracy on the held-out split.
Options: the `nll:` and `classify:` keys of conf/eval.yaml."""

from __future__ import annotations

import time

from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.tasks.classify import accuracy_by_draws, class_conditions, classify
from ddpm_lab.tasks.nll import check_nll_model, image_bits_per_dim


def check_data_metrics(module: DiffusionModule, metrics: list[str]) -> None:
    """One line, before any work, when the checkpoint cannot give one of these metrics."""
    if "nll" in metrics:
        check_nll_model(module)
    if "classify" in metrics:
        class_conditions(module)


def splits(module: DiffusionModule):
    """The checkpoint's data: (training split, held-out split) as Batches."""
    dm = instantiate(module.hparams["data_info"]["data"])
    dm.setup("fit")
    return stack_dataset(dm.train_set), stack_dataset(dm.val_set)


def data_metrics(cfg: DictConfig, module: DiffusionModule, metrics: list[str]) -> dict:
    """{"nll": ..., "classify": ...} for the metrics asked for, and their headline figures as "model"."""
    train, val = splits(module)
    out, model = {}, {}
    if "nll" in metrics:
        o = cfg.nll
        n = len(val.image) if o.num_images is None else min(o.num_images, len(val.image))
        options = dict(draws=o.draws, exact=o.exact, t_sampling=o.t_sampling, variance=o.variance, clip_x0=o.clip_x0, seed=cfg.seed,
                       batch_size=o.batch_size)
        start = time.perf_counter()
        held = image_bits_per_dim(module, val.image[:n], **options)
        trained = image_bits_per_dim(module, train.image[:n], **options)
        nll = {"held_out": {k: v for k, v in held.items() if k != "per_image"},
               "train": {k: v for k, v in trained.items() if k != "per_image"},
               "gap": held["bpd"] - trained["bpd"], "seconds": round(time.perf_counter() - start, 2)}
        out["nll"] = nll
        model |= {"bpd": held["bpd"], "bpd_train": trained["bpd"], "bpd_gap": nll["gap"]}
        if held["se"] is not None:
            model["bpd_se"] = held["se"]
    if "classify" in metrics:
        o = cfg.classify
        n = len(val.image) if o.num_images is None else min(o.num_images, len(val.image))
        start = time.perf_counter()
        result = classify(module, val.image[:n], draws=o.draws, seed=cfg.seed, batch_size=o.batch_size)
        ks = sorted({max(1, o.draws // 4), max(1, o.draws // 2), o.draws})
        by_draws = accuracy_by_draws(result["errors"], val.label[:n], ks)
        num_classes = result["errors"].shape[1]
        out["classify"] = {"accuracy": by_draws[o.draws], "accuracy_by_draws": {str(k): v for k, v in by_draws.items()},
                           "draws": o.draws, "num_classes": num_classes, "num_images": n,
                           "calls_per_image": o.draws * num_classes, "seconds": round(time.perf_counter() - start, 2)}
        model["classify_accuracy"] = by_draws[o.draws]
    out["model"] = model
    return out


def print_data_report(result: dict) -> None:
    nll, cls = result.get("nll"), result.get("classify")
    if nll:
        h, t = nll["held_out"], nll["train"]
        how = f"exact sum over all {h['draws']} t" if h["exact"] else \
            f"Monte Carlo, {h['draws']} t per image, {h['t_sampling']} t"
        print(f"\nbits/dim (variational bound; images quantised to {h['levels']} levels; {how}; "
              f"variance {h['variance']}):")
        print(f"{'split':<10}{'images':>8}{'bits/dim':>10}{'MC s.e.':>9}{'image s.e.':>11}{'prior':>11}{'decoder':>9}")
        for name, r in (("held-out", h), ("train", t)):
            se = "-" if r["se"] is None else f"{r['se']:.4f}"
            print(f"{name:<10}{r['num_images']:>8}{r['bpd']:>10.4f}{se:>9}{r['image_se']:>11.4f}"
                  f"{r['prior']:>11.2e}{r['decoder']:>9.4f}")
        print(f"gap (held-out - train): {nll['gap']:.4f} bits/dim")
    if cls:
        shown = ", ".join(f"K={k}: {v:.4f}" for k, v in cls["accuracy_by_draws"].items())
        print(f"\ndiffusion classifier on {cls['num_images']} held-out images ({cls['num_classes']} classes): "
              f"accuracy {cls['accuracy']:.4f} ({shown}); {cls['calls_per_image']} network calls per image")


def no_samples_result(cfg: DictConfig, ckpt_path) -> dict:
    """The metrics.json frame when nothing is sampled (only data metrics asked for)."""
    return {"ckpt_path": str(ckpt_path), "seed": cfg.seed, "model": {}, "floor": {}}
