"""The video judge on real moving-shape clips and on its controls: real clips must score 100% on
every label metric, and each control must fail the metric it breaks.

    python benchmarks/video_judge.py [--num-clips 512] [--seed 0] [--out outputs/bench/video_judge.json]

The clips are the first --num-clips of the training split of data=moving_shapes (6,000 clips,
data_seed 0) at 16x16 with 8 frames and at 32x32 with 9 frames, judged against their captions (half
of them leave out the size or the speed: those clips are left out of that metric). Controls
(ddpm_lab/metrics/video.py): static (the first frame held), shuffled (frames in random order),
reversed (time backwards), independent (each frame from a random clip).
"""

from __future__ import annotations

import argparse

from _common import write_json

from ddpm_lab.data import MovingShapesDataModule
from ddpm_lab.data.batch import stack_dataset
from ddpm_lab.metrics.video import judge_real_and_controls

SETTINGS = [(16, 8), (32, 9)]      # (image size, frames)
COLUMNS = ["shape_colour", "shape_colour_per_frame", "size", "direction", "speed", "identity", "median_residual_px"]


def markdown(title: str, table: dict[str, dict[str, float]]) -> str:
    """One row per clip set, one column per metric."""
    lines = [f"| {title} | " + " | ".join(COLUMNS) + " | clips |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, row in table.items():
        cells = [f"{row[c]:.3f}" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['count']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-clips", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="the controls' random draws")
    parser.add_argument("--out", default="outputs/bench/video_judge.json")
    args = parser.parse_args()

    result = {"num_clips": args.num_clips, "seed": args.seed, "tables": {}}
    for size, frames in SETTINGS:
        dm = MovingShapesDataModule(image_size=size, frames=frames)
        dm.setup("fit")
        clips = stack_dataset(dm.train_set, limit=args.num_clips).image
        table = judge_real_and_controls(clips, dm.train_captions[:len(clips)], seed=args.seed)
        title = f"{size}x{size}x{frames}"
        result["tables"][title] = table
        print(markdown(title, table) + "\n", flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
