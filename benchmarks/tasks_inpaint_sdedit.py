"""Inpainting (RePaint) and SDEdit on held-out digits, read by the shipped reference classifier.

    python benchmarks/tasks_inpaint_sdedit.py --ckpt <digits_ddpm run>/checkpoints/last.ckpt [--num-images 100]

The checkpoint is the `make train` model (`ddpm-train experiment=digits_ddpm`). The first
--num-images held-out digits, fixed seeds, all baselines measured in the same run:
- inpainting of the bottom half: the classifier's accuracy on the zero-filled input and on RePaint
  at each --inpaint setting STEPS:J:R (DDPM steps, jump length j, r passes; r = 1 is no
  resampling), with the network calls and seconds of each; the default is the RePaint paper's own
  setting, 250:10:10, beside 250:10:1 (cheaper: `--inpaint 50:5:1 50:5:4`);
- SDEdit at t0 = 0.3 / 0.5 / 0.7 / 1.0 from guides: stroke paintings of the digits (4 x 4 and
  8 x 8 blocks of 4 levels) and the digits themselves: the RMS distance to the guide, FD against
  the training split (reference features; the guide's FD at t0 = 0 and the held-out digits' FD
  beside them), and the share that keeps the source digit's label; with --ideal the same for the
  exact denoiser of the training split (`analytic.EmpiricalDistribution`: the best any
  unconditional model of these digits can do), and with --cfg-ckpt for the class-conditional
  `digits_cfg` model told each source digit's label (SDEdit's conditional form).
Figures (rows: input, result(s), truth) go to --figures (docs/), the table to the JSON file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))       # this checkout's ddpm_lab

from ddpm_lab.data.batch import stack_dataset  # noqa: E402
from ddpm_lab.diffusion.analytic import EmpiricalDistribution  # noqa: E402
from ddpm_lab.edit import common_metrics, reference_classifier, save_rows  # noqa: E402
from ddpm_lab.evaluate import data_name  # noqa: E402
from ddpm_lab.metrics.distances import RealReference, class_accuracy  # noqa: E402
from ddpm_lab.metrics.reference import reference_extractor, reference_name  # noqa: E402
from ddpm_lab.modules import DiffusionModule  # noqa: E402
from ddpm_lab.tasks import TaskInputs  # noqa: E402
from ddpm_lab.tasks.inpaint import Inpaint  # noqa: E402
from ddpm_lab.tasks.sdedit import SDEdit  # noqa: E402


def timed(task, module, inputs, seed):
    start = time.perf_counter()
    result = task.run(module, inputs, torch.Generator().manual_seed(seed))
    return result, round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="the make train checkpoint: <run of ddpm-train experiment=digits_ddpm>/checkpoints/last.ckpt")
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inpaint", nargs="+", default=["250:10:1", "250:10:10"], metavar="STEPS:J:R",
                        help="RePaint settings: DDPM steps, jump length j, resampling count r (1 = none)")
    parser.add_argument("--sdedit-steps", type=int, default=50, help="DDPM steps over the whole way")
    parser.add_argument("--t0", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--guides", nargs="+", default=["stroke4", "stroke8", "none"],
                        help="none (the digit itself), stroke<k> (k x k blocks, 4 levels), noise")
    parser.add_argument("--ideal", action="store_true",
                        help="SDEdit rows for the exact denoiser of the training split as well")
    parser.add_argument("--cfg-ckpt", help="SDEdit rows for this class-conditional checkpoint (digits_cfg), "
                        "told each source digit's label")
    parser.add_argument("--skip", nargs="*", default=[], choices=["inpaint", "sdedit"])
    parser.add_argument("--figures", default="docs")
    parser.add_argument("--out", default="outputs/bench/tasks_inpaint_sdedit.json")
    args = parser.parse_args()
    print(f"checkpoint {args.ckpt} (made by: ddpm-train experiment=digits_ddpm)")

    from hydra.utils import instantiate

    module = DiffusionModule.load(args.ckpt)
    dm = instantiate(module.hparams["data_info"]["data"])
    dm.setup("fit")
    train, split = stack_dataset(dm.train_set).image, stack_dataset(dm.val_set, limit=args.num_images)
    args.train_images = train
    inputs = TaskInputs(images=split.image[:args.num_images], labels=split.label[:args.num_images])
    classifier = reference_classifier(module)
    extractor, _, _ = reference_extractor(reference_name(data_name(module.hparams["data_info"]), module.image_shape[-1]))
    real = RealReference(extractor, train)
    n = len(inputs.images)
    result = {"ckpt": args.ckpt, "num_images": n, "seed": args.seed,
              "truth_accuracy": class_accuracy(classifier, inputs.images, inputs.labels), "inpaint": [], "sdedit": []}
    print(f"{n} held-out digits; the classifier reads {result['truth_accuracy']:.3f} of the originals")

    if "inpaint" not in args.skip:
        inpaint_table(args, module, inputs, result)
    if "sdedit" not in args.skip:
        models = [("ddpm", module, {})]
        if args.ideal:
            models.append(("ideal", module, {}))
        if args.cfg_ckpt:
            models.append(("cfg, told the label", DiffusionModule.load(args.cfg_ckpt), {"label": inputs.labels.tolist()}))
        sdedit_table(args, models, inputs, classifier, real, result)
    write_json(args.out, result)


def inpaint_setting(text: str) -> tuple[int, int, int]:
    """STEPS:J:R -> (steps, jump_length, jump_n_sample)."""
    steps, jump_length, jump_n_sample = (int(v) for v in text.split(":"))
    return steps, jump_length, jump_n_sample


def inpaint_table(args, module, inputs, result) -> None:
    print(f"\ninpainting, bottom half, RePaint settings {args.inpaint} (steps:j:r)")
    print(f"{'method':<40}{'accuracy':>9}{'psnr':>8}{'calls':>7}{'seconds':>9}")
    shown = []
    for setting in args.inpaint:
        steps, j, r = inpaint_setting(setting)
        name = f"RePaint, {steps} steps, " + ("no resampling (r = 1)" if r == 1 else f"j = {j}, r = {r}")
        task = Inpaint("bottom_half", steps=steps, jump_length=j, jump_n_sample=r)
        out, seconds = timed(task, module, inputs, args.seed)
        m = common_metrics(module, inputs, out)
        if not result["inpaint"]:
            result["inpaint"].append({"method": "zero-filled input", "accuracy": m["accuracy_input"],
                                      "psnr": m["psnr_input"], "calls": 0, "seconds": 0.0})
        result["inpaint"].append({"method": name, "steps": steps, "jump_length": j, "jump_n_sample": r,
                                  "accuracy": m["accuracy"], "psnr": m["psnr"],
                                  "calls": int(out.metrics["model_calls_per_image"]), "seconds": seconds,
                                  "max_known_pixel_change": out.metrics["max_known_pixel_change"]})
        print(f"{name:<40}{m['accuracy']:>9.3f}{m['psnr']:>8.2f}{result['inpaint'][-1]['calls']:>7}{seconds:>9}",
              flush=True)
        shown.append(out)
    save_rows([shown[0].inputs, *(out.results for out in shown), inputs.images], Path(args.figures) / "tasks_inpaint.png")


def guide_options(name: str) -> dict:
    """--guides names: none (the digit itself), stroke<k> (a k x k-block stroke painting), noise."""
    if name.startswith("stroke"):
        return {"corrupt": "stroke", "stroke_size": int(name[6:] or 4), "stroke_levels": 4}
    return {"corrupt": name}


class ExactNet(torch.nn.Module):
    """A network stand-in that returns an exact denoiser's output (float64 inside)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, t, cond=None):
        return self.fn(x.double(), t, cond).to(x.dtype)


def run_sdedit(kind, module, task, inputs, args):
    """task.run on `module`, its network swapped for the training split's exact denoiser for "ideal"."""
    if kind != "ideal":
        return timed(task, module, inputs, args.seed)
    network = module.net
    module.net = ExactNet(EmpiricalDistribution(args.train_images).output_fn(module.diffusion))
    try:
        return timed(task, module, inputs, args.seed)
    finally:
        module.net = network


def sdedit_table(args, models, inputs, classifier, real, result) -> None:
    result["held_out_fd"] = real.fd(inputs.images)
    for name in args.guides:
        for kind, module, condition in models:
            print(f"\nSDEdit, {kind}, guide {name} ({guide_options(name)}), DDPM sampler, {args.sdedit_steps} steps")
            guide, rows, table = None, [], []
            for t0 in args.t0:
                task = SDEdit(t0=t0, sampler="ddpm", steps=args.sdedit_steps, **guide_options(name), **condition)
                out, seconds = run_sdedit(kind, module, task, inputs, args)
                guide = out.inputs
                rows.append(out.results)
                table.append({"model": kind, "guide": name, "t0": t0,
                              "rms_distance_to_guide": out.metrics["rms_distance_to_guide"], "fd": real.fd(out.results),
                              "label_kept": class_accuracy(classifier, out.results, inputs.labels), "seconds": seconds})
            start = {"model": kind, "guide": name, "t0": 0.0, "rms_distance_to_guide": 0.0, "fd": real.fd(guide),
                     "label_kept": class_accuracy(classifier, guide, inputs.labels), "seconds": 0.0}
            result["sdedit"] += [start, *table]
            print(f"{'t0':>6}{'distance to guide':>19}{'FD':>9}{'label kept':>12}{'seconds':>9}")
            for row in (start, *table):
                print(f"{row['t0']:>6}{row['rms_distance_to_guide']:>19.3f}{row['fd']:>9.2f}{row['label_kept']:>12.3f}"
                      f"{row['seconds']:>9}")
            if kind == "ddpm":
                save_rows([guide, *rows, inputs.images], Path(args.figures) / f"tasks_sdedit_{name}.png")
    print(f"held-out digits FD (the floor at this count): {result['held_out_fd']:.2f}")

if __name__ == "__main__":
    main()
