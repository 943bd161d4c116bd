"""The video judge: does each generated clip show what its prompt asked for?

Clips (N, C, F, H, W) in [-1, 1] are scored against the prompts they were sampled from (or their
attributes, ddpm_lab/data/moving_captions.py), per clip:

- `shape_colour`: the shipped shapes reference classifier (`shapes16`, `shapes32`; 12 classes
  shape * 4 + colour) reads every frame; the clip is right when its majority class (ties: the
  lowest) is the prompt's. `shape_colour_per_frame` is the share of frames read right, and
  `identity` says whether every frame got the same class (the object stays itself).
- `size`: the shape's pixel mass (per pixel the largest channel's (x + 1) / 2, summed; the mean over
  frames) against the masses of the small and large versions of the predicted shape and colour at
  this image size, split at their midpoint.
- `direction`, `speed`: coverage-weighted centroids per frame and a least-squares line through them
  over time give the velocity (vx, vy) in pixels per frame. Its dominant axis and sign is the
  direction (y grows downward: "up" is negative y); |v| is "fast" above the midpoint of the data's
  two speeds, "slow" below it, and no motion at all below half the slow speed (then the direction
  is none either, and both are wrong). `residual` is the RMS distance of the centroids from the
  fitted line, in pixels (how smooth the motion is).

A prompt that leaves out the size or the speed scores NaN there, and `summarise` leaves that clip
out of that metric. `controls` breaks real clips one property at a time (static, shuffled,
reversed, independent frames), so that each metric is seen to fail where it should.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm_lab.data.moving_captions import (
    ATTRIBUTES,
    DIRECTIONS,
    MISSING,
    SPEEDS,
    prompts_to_attributes,
)
from ddpm_lab.data.shapes import COLOURS, SHAPES, SIZES, coverage
from ddpm_lab.errors import UserError
from ddpm_lab.metrics.reference import ReferenceClassifier, load_reference, reference_name

Tensor = torch.Tensor
STILL = -1                           # predicted speed (and direction) of a clip that does not move
LABEL_METRICS = ("shape_colour", "shape_colour_per_frame", "size", "direction", "speed", "identity")


@dataclass
class ClipScores:
    """Per clip: 1.0 right, 0.0 wrong, NaN where the prompt does not say (label metrics); what the
    judge read (predicted class per frame, size, direction, speed) and measured."""

    shape_colour: Tensor             # (N,) the majority class is the prompt's shape and colour
    shape_colour_per_frame: Tensor   # (N,) share of frames classified as the prompt's class
    identity: Tensor                 # (N,) every frame has the same predicted class
    size: Tensor                     # (N,)
    direction: Tensor                # (N,)
    speed: Tensor                    # (N,)
    residual: Tensor                 # (N,) RMS distance (px) of the centroids from their fitted line
    predicted: Tensor                # (N, F) class per frame
    predicted_size: Tensor           # (N,) index into SIZES
    predicted_direction: Tensor      # (N,) index into DIRECTIONS, STILL without motion
    predicted_speed: Tensor          # (N,) index into SPEEDS, STILL without motion
    velocity: Tensor                 # (N, 2) (vx, vy) pixels per frame
    mass: Tensor                     # (N,) mean pixel mass per frame


def check_clips(clips: Tensor, attributes: Tensor) -> None:
    if clips.dim() != 5 or clips.shape[1] != 3 or clips.shape[2] < 2 or clips.shape[3] != clips.shape[4]:
        raise UserError(f"the video judge expects RGB clips of shape (N, 3, frames >= 2, size, size), "
                        f"got {tuple(clips.shape)}")
    if attributes.shape != (len(clips), len(ATTRIBUTES)):
        raise UserError(f"the video judge needs one prompt per clip: {len(clips)} clips, "
                        f"{len(attributes)} prompts")



def expected_masses(image_size: int) -> Tensor:
    """(classes, sizes) pixel mass of each shape and colour at each size, drawn in the centre."""
    n = len(SHAPES) * len(SIZES)
    shape = torch.arange(len(SHAPES)).repeat_interleave(len(SIZES))
    half = torch.tensor(list(SIZES.values())).repeat(len(SHAPES)) / 2
    area = coverage(shape, half, torch.full((n,), 0.5), torch.full((n,), 0.5), image_size).sum((1, 2))
    brightness = torch.tensor(list(COLOURS.values()), dtype=torch.float32).amax(1) / 255.0
    return (area.reshape(len(SHAPES), 1, len(SIZES)) * brightness[None, :, None]).reshape(-1, len(SIZES))


@torch.no_grad()
def classify_frames(classifier: ReferenceClassifier, clips: Tensor, chunk: int = 1024) -> Tensor:
    """(N, F) the classifier's class for every frame."""
    n, c, f, h, w = clips.shape
    frames = clips.transpose(1, 2).reshape(n * f, c, h, w).float()
    classifier = classifier.to(clips.device).eval()
    return torch.cat([classifier(frames[i:i + chunk]).argmax(1) for i in range(0, len(frames), chunk)]).reshape(n, f)


def motion(cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, F, H, W) coverage -> per clip the velocity (N, 2) in px / frame of the least-squares line
    through the centroids, the RMS distance (N,) of the centroids from it, and the centroids (N, F, 2)."""
    n, f, h, w = cov.shape
    mass = cov.sum((2, 3)).clamp(min=1e-6)
    xs = torch.arange(w, dtype=cov.dtype, device=cov.device) + 0.5
    ys = torch.arange(h, dtype=cov.dtype, device=cov.device) + 0.5
    centroids = torch.stack([(cov.sum(2) * xs).sum(2) / mass, (cov.sum(3) * ys).sum(2) / mass], dim=2)
    t = torch.arange(f, dtype=cov.dtype, device=cov.device)
    t = t - t.mean()
    mean = centroids.mean(1, keepdim=True)
    velocity = (t[None, :, None] * (centroids - mean)).sum(1) / t.pow(2).sum()
    fitted = mean + velocity[:, None] * t[None, :, None]
    residual = (centroids - fitted).pow(2).sum(2).mean(1).sqrt()
    return velocity, residual, centroids


def read_motion(velocity: Tensor, image_size: int) -> tuple[Tensor, Tensor]:
    """Direction and speed indices (STILL below half the slow speed) of (N, 2) velocities in px / frame."""
    slow, fast = (v * image_size for v in SPEEDS.values())
    norm = velocity.norm(dim=1)
    speed = (norm > (slow + fast) / 2).long()
    horizontal = velocity[:, 0].abs() >= velocity[:, 1].abs()
    names = list(DIRECTIONS)
    direction = torch.where(horizontal,
                            torch.where(velocity[:, 0] > 0, names.index("right"), names.index("left")),
                            torch.where(velocity[:, 1] > 0, names.index("down"), names.index("up")))
    still = norm < slow / 2
    return direction.masked_fill(still, STILL), speed.masked_fill(still, STILL)


def agreement(predicted: Tensor, wanted: Tensor) -> Tensor:
    """1.0 where they agree, 0.0 where not, NaN where `wanted` is MISSING."""
    right = (predicted == wanted).float()
    return torch.where(wanted == MISSING, torch.full_like(right, float("nan")), right)


def as_attributes(prompts: list[str] | Tensor) -> Tensor:
    if isinstance(prompts, Tensor):
        return prompts.long().cpu()
    return prompts_to_attributes(list(prompts))


def judge_clips(clips: Tensor, prompts: list[str] | Tensor, classifier: ReferenceClassifier | None = None,
                predicted: Tensor | None = None) -> ClipScores:
    """Score clips (N, 3, F, S, S) in [-1, 1] against their prompts (strings, or (N, 5) attributes
    with MISSING = -1 where a prompt does not say). `classifier`: the shapes reference classifier at
    this image size (None: the shipped `shapes<S>`); `predicted`: the (N, F) classes of the frames
    when they are known already (the classifier is not run)."""
    attrs = as_attributes(prompts)
    check_clips(clips, attrs)
    size = clips.shape[-1]
    if predicted is None:
        if classifier is None:
            classifier, _ = load_reference(reference_name("shapes", size))
        predicted = classify_frames(classifier, clips)
    predicted = predicted.cpu()
    majority = predicted.mode(dim=1).values
    label = torch.where((attrs[:, 0] == MISSING) | (attrs[:, 1] == MISSING), MISSING,
                        attrs[:, 0] * len(COLOURS) + attrs[:, 1])
    per_frame = (predicted == label[:, None]).float().mean(1)
    cov = ((clips.detach().float() + 1) / 2).amax(1).clamp(0, 1).cpu()        # (N, F, H, W)
    mass = cov.sum((2, 3)).mean(1)
    masses = expected_masses(size)[majority]                                   # (N, sizes)
    predicted_size = (mass > masses.mean(1)).long()
    velocity, residual, _ = motion(cov)
    direction, speed = read_motion(velocity, size)
    return ClipScores(
        shape_colour=agreement(majority, label),
        shape_colour_per_frame=torch.where(label == MISSING, float("nan"), per_frame),
        identity=(predicted == predicted[:, :1]).all(1).float(),
        size=agreement(predicted_size, attrs[:, 2]), direction=agreement(direction, attrs[:, 3]),
        speed=agreement(speed, attrs[:, 4]), residual=residual, predicted=predicted,
        predicted_size=predicted_size, predicted_direction=direction, predicted_speed=speed,
        velocity=velocity, mass=mass)


def summarise(scores: ClipScores) -> dict[str, float]:
    """Each label metric's accuracy over the clips whose prompt says it (with that count, `n_<metric>`),
    the median residual (px) and the number of clips."""
    out: dict[str, float] = {}
    for name in LABEL_METRICS:
        values = getattr(scores, name)
        known = ~values.isnan()
        out[name] = values[known].mean().item() if known.any() else float("nan")
        out[f"n_{name}"] = int(known.sum())
    out["median_residual_px"] = scores.residual.median().item()
    out["count"] = len(scores.residual)
    return out


def control_frames(num_clips: int, frames: int, seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """Where each frame of each control comes from: (clip index, frame index), each (N, F), of the real
    clips. `static`: the first frame held (no motion); `shuffled`: the frames in a random order per
    clip (no smooth path); `reversed`: time runs backwards (the opposite direction); `independent`:
    frame f of a random clip each (no single object)."""
    gen = torch.Generator().manual_seed(seed)
    clip = torch.arange(num_clips)[:, None].expand(num_clips, frames)
    time = torch.arange(frames)[None, :].expand(num_clips, frames)
    return {"static": (clip, torch.zeros_like(time)),
            "shuffled": (clip, torch.rand(num_clips, frames, generator=gen).argsort(1)),
            "reversed": (clip, time.flip(1)),
            "independent": (torch.randint(0, num_clips, (num_clips, frames), generator=gen), time)}


def controls(real_clips: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """The real clips (N, C, F, H, W) broken one way each (`control_frames`): name -> clips."""
    by_frame = real_clips.transpose(1, 2)                                      # (N, F, C, H, W)
    return {name: by_frame[clip.to(real_clips.device), time.to(real_clips.device)].transpose(1, 2).contiguous()
            for name, (clip, time) in control_frames(len(real_clips), real_clips.shape[2], seed).items()}


def judge_real_and_controls(real_clips: Tensor, prompts: list[str] | Tensor, seed: int = 0,
                            classifier: ReferenceClassifier | None = None) -> dict[str, dict[str, float]]:
    """`summarise` of the real clips and of each control against the real clips' prompts (the
    classifier reads the real frames once; a control's frames are real frames moved)."""
    if classifier is None:
        classifier, _ = load_reference(reference_name("shapes", real_clips.shape[-1]))
    real = judge_clips(real_clips, prompts, classifier)
    table = {"real": summarise(real)}
    by_frame = real_clips.transpose(1, 2)
    for name, (clip, time) in control_frames(len(real_clips), real_clips.shape[2], seed).items():
        clips = by_frame[clip.to(real_clips.device), time.to(real_clips.device)].transpose(1, 2)
        table[name] = summarise(judge_clips(clips, prompts, predicted=real.predicted[clip, time]))
    return table
