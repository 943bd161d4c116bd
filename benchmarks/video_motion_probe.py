"""Does a text-to-video checkpoint use the direction word, and can it tell its frames apart?

    python benchmarks/video_motion_probe.py --ckpt <moving_shapes run>/checkpoints/last.ckpt [--ckpt ...]
        [--num-clips 128] [--out outputs/bench/video_motion_probe.json]

Checkpoints come from `ddpm-train experiment=moving_shapes_flow` (or `_wan`); 16x16 clips of 8
frames (data=moving_shapes, data_seed 0). Three measurements on the first --num-clips held-out clips,
one shared noise draw:

1. The ideal denoiser's x0 error with and without the direction: the posterior mean over the
   training clips (the empirical data distribution as a Gaussian mixture with zero-width
   components) that share the clip's shape, colour, size and speed, with the same direction or any
   direction, at flow times s. The gap is how much the direction word can lower the loss at s.
2. The checkpoint's x0 error (its x0 prediction; x_s - s v for a velocity network) with the clip's
   caption, with the opposite direction word (left <-> right, up <-> down) and with the empty
   prompt. A network that uses the direction has a lower error with the true word.
3. At s = 1 (pure noise) the ideal x0 prediction is the mean clip of the caption, whose centroid
   travels along the direction (the paths start where they stay in frame). The travel (px, first
   to last frame, along the direction) of the network's x0 prediction averaged over 64 noise draws,
   for "a red square moving <d> fast", beside the ideal's. A network that cannot tell frame 0 from
   frame 7 in pure noise predicts the same image in every frame (travel 0).
4. What each word does: the RMS change of the x0 prediction when one attribute of the caption
   (shape, colour, size, direction, speed) is changed to the next value, the noisy clip kept, for
   the network and for the ideal denoiser (the posterior mean over the training clips with all five
   attributes equal). A word the network has learned moves its prediction about as much as it
   moves the ideal one.
"""

from __future__ import annotations

import argparse

import torch
from _common import write_json

from ddpm_lab.data import MovingShapesDataModule
from ddpm_lab.data.moving_captions import ATTRIBUTES, CHOICES, DIRECTIONS, attributes_to_captions
from ddpm_lab.diffusion.analytic import EmpiricalDistribution
from ddpm_lab.metrics.video import motion
from ddpm_lab.modules.diffusion_module import DiffusionModule

TIMES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7)
OPPOSITE = torch.tensor([1, 0, 3, 2])            # left <-> right, up <-> down (DIRECTIONS' order)


def coverage(clips: torch.Tensor) -> torch.Tensor:
    """(N, F, H, W) the judge's per-pixel coverage of clips in [-1, 1]."""
    return ((clips + 1) / 2).amax(1).clamp(0, 1)


WITHOUT_DIRECTION, ALL = [0, 1, 2, 4], [0, 1, 2, 3, 4]      # attribute columns the ideal conditions on


def ideal(train: torch.Tensor, train_attrs: torch.Tensor, keys: list[int]) -> tuple[EmpiricalDistribution, callable]:
    """The training clips as an EmpiricalDistribution whose class is the tuple of attributes `keys`,
    and the function that gives that class for (N, 5) attributes."""
    def code(attrs: torch.Tensor) -> torch.Tensor:
        return (attrs[:, keys] * 8 ** torch.arange(len(keys))).sum(1)      # every attribute has < 8 values
    return EmpiricalDistribution(train, code(train_attrs)), code


def ideal_errors(train: torch.Tensor, train_attrs: torch.Tensor, x0: torch.Tensor, attrs: torch.Tensor,
                 noise: torch.Tensor) -> dict[str, list[float]]:
    """x0 MSE of the training-set posterior mean given (shape, colour, size, speed), with and without
    the direction, per flow time in TIMES."""
    out = {}
    for name, keys in (("without direction", WITHOUT_DIRECTION), ("with direction", ALL)):
        data, code = ideal(train, train_attrs, keys)
        out[name] = [(data.flow_x0_eps((1 - s) * x0 + s * noise, s, code(attrs))[0] - x0).pow(2).mean().item()
                     for s in TIMES]
    return out


@torch.no_grad()
def network_errors(module: DiffusionModule, x0: torch.Tensor, attrs: torch.Tensor,
                   noise: torch.Tensor) -> dict[str, list[float]]:
    """x0 MSE of the network's prediction with the true caption, the opposite direction, the empty prompt."""
    vocab, fm, n = module.net.text_encoder.vocabulary, module.diffusion, len(x0)
    flipped = attrs.clone()
    flipped[:, 3] = OPPOSITE[attrs[:, 3]]
    conds = {"true caption": vocab.encode(attributes_to_captions(attrs)),
             "opposite direction": vocab.encode(attributes_to_captions(flipped)),
             "empty prompt": module.net.null_condition(n, "cpu")}
    out: dict[str, list[float]] = {name: [] for name in conds}
    for s in TIMES:
        st = torch.full((n,), s)
        xs = fm.q_sample(x0, st, noise)
        for name, cond in conds.items():
            x0_hat = fm.predict_x0_eps(module.net(xs, fm.network_time(st), cond), xs, st)[0]
            out[name].append((x0_hat - x0).pow(2).mean().item())
    return out


def changed(attrs: torch.Tensor, index: int) -> torch.Tensor:
    """The attributes with attribute `index` moved to its next value (cyclically)."""
    out = attrs.clone()
    out[:, index] = (attrs[:, index] + 1) % len(CHOICES[ATTRIBUTES[index]])
    return out


@torch.no_grad()
def word_effects(module: DiffusionModule, train: torch.Tensor, train_attrs: torch.Tensor, x0: torch.Tensor,
                 attrs: torch.Tensor, noise: torch.Tensor) -> dict[str, dict[str, list[float]]]:
    """Per attribute and flow time: the RMS change of the network's and of the ideal x0 prediction
    when that attribute of the caption changes."""
    fm, vocab = module.diffusion, module.net.text_encoder.vocabulary
    data, code = ideal(train, train_attrs, ALL)
    out = {name: {"network": [], "ideal": []} for name in ATTRIBUTES}
    for s in TIMES:
        st = torch.full((len(x0),), s)
        xs = fm.q_sample(x0, st, noise)

        def predictions(a: torch.Tensor, xs=xs, st=st, s=s) -> tuple[torch.Tensor, torch.Tensor]:
            cond = vocab.encode(attributes_to_captions(a))
            network = fm.predict_x0_eps(module.net(xs, fm.network_time(st), cond), xs, st)[0]
            return network, data.flow_x0_eps(xs, s, code(a))[0]

        base = predictions(attrs)
        for index, name in enumerate(ATTRIBUTES):
            for kind, a, b in zip(("network", "ideal"), base, predictions(changed(attrs, index))):
                out[name][kind].append((a - b).pow(2).mean().sqrt().item())
    return out


def travel(clips: torch.Tensor, direction: int) -> float:
    """Centroid travel (px) from the first to the last frame along `direction`, of the mean clip."""
    centroids = motion(coverage(clips.mean(0, keepdim=True)))[2][0]
    unit = torch.tensor(list(DIRECTIONS.values())[direction], dtype=torch.float32)
    return ((centroids[-1] - centroids[0]) @ unit).item()


@torch.no_grad()
def pure_noise_travel(module: DiffusionModule, train: torch.Tensor, train_attrs: torch.Tensor) -> dict:
    """Per direction: the travel of the ideal s = 1 prediction (the caption's mean clip) and the network's."""
    vocab, fm, rows = module.net.text_encoder.vocabulary, module.diffusion, {}
    noise = torch.randn(64, *train.shape[1:], generator=torch.Generator().manual_seed(1))
    for d, name in enumerate(DIRECTIONS):
        same = (train_attrs[:, 0] == 1) & (train_attrs[:, 1] == 0) & (train_attrs[:, 3] == d) & (train_attrs[:, 4] == 1)
        cond = vocab.encode([f"a red square moving {name} fast"] * len(noise))
        v = module.net(noise, fm.network_time(torch.ones(len(noise))), cond)
        x0_hat = fm.predict_x0_eps(v, noise, torch.ones(len(noise)))[0]
        rows[name] = {"ideal": travel(train[same], d), "network": travel(x0_hat, d)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", default=[], help="a video checkpoint (repeatable)")
    parser.add_argument("--num-clips", type=int, default=128)
    parser.add_argument("--out", default="outputs/bench/video_motion_probe.json")
    args = parser.parse_args()
    print("checkpoints: ddpm-train experiment=moving_shapes_flow (or moving_shapes_wan), then --ckpt <run>/checkpoints/last.ckpt")

    dm = MovingShapesDataModule()
    dm.setup("fit")
    train, train_attrs = dm.train_set.columns.image, dm.train_attributes
    x0, attrs = dm.val_set.columns.image[:args.num_clips], dm.val_attributes[:args.num_clips]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    header = "| x0 MSE at flow time s | " + " | ".join(f"{s:g}" for s in TIMES) + " |\n" + "|---" * (len(TIMES) + 1) + "|"
    result = {"times": TIMES, "ideal": ideal_errors(train, train_attrs, x0, attrs, noise), "checkpoints": {}}
    print(header)
    for name, row in result["ideal"].items():
        print(f"| ideal, {name} | " + " | ".join(f"{e:.4f}" for e in row) + " |")
    for path in args.ckpt:
        module = DiffusionModule.load(path)
        entry = {"errors": network_errors(module, x0, attrs, noise),
                 "pure_noise_travel": pure_noise_travel(module, train, train_attrs),
                 "word_effects": word_effects(module, train, train_attrs, x0, attrs, noise)}
        result["checkpoints"][path] = entry
        print(f"\n{path}\n{header}")
        for name, row in entry["errors"].items():
            print(f"| {name} | " + " | ".join(f"{e:.4f}" for e in row) + " |")
        print("travel of the s = 1 prediction along the direction (px, first to last frame; 'a red square moving <d> fast'):")
        for d, row in entry["pure_noise_travel"].items():
            print(f"  {d:<6} ideal {row['ideal']:+.2f}  network {row['network']:+.2f}")
        print("RMS change of the x0 prediction when one word changes, network / ideal:")
        print("| word | " + " | ".join(f"s = {s:g}" for s in TIMES) + " |\n" + "|---" * (len(TIMES) + 1) + "|")
        for word, row in entry["word_effects"].items():
            print(f"| {word} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(row["network"], row["ideal"])) + " |")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
