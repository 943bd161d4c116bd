"""First-frame conditioning: image-to-video with the same network that does text-to-video, as
Wan 2.1's I2V model conditions on the first frame.

Wan 2.1 (I2V) concatenates to the noisy latent video, on the channel axis, a mask that marks the
given frames and the clean latents of a video whose first frame is the image and whose other
frames are empty. Here the condition is `(x0 at frame 0, zeros elsewhere; mask 1 at frame 0)`,
C + 1 channels. Training gives the first frame with probability `p_first_frame` and an all-zero
condition otherwise, so one model samples from text alone (no frame) or from text and an image.
Classifier-free guidance drops the prompt only: both guidance passes see the frame.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def frame_condition(first: Tensor | None, like: Tensor) -> Tensor:
    """The (N, C + 1, F, h, w) condition for clips shaped `like` (N, C, F, h, w): `first` (N, C, h, w)
    first frames in frame 0 with mask 1 (rows where `first` is all NaN, or `first=None`: nothing
    given, all zeros)."""
    n, c, f, h, w = like.shape
    cond = like.new_zeros(n, c + 1, f, h, w)
    if first is None:
        return cond
    given = ~first.flatten(1).isnan().all(dim=1)
    cond[:, :c, 0] = torch.where(given[:, None, None, None], first.nan_to_num(), 0.0).to(like.dtype)
    cond[:, c, 0] = given[:, None, None].to(like.dtype)
    return cond


def keep_first_frames(x0: Tensor, p_first_frame: float, generator: torch.Generator | None = None) -> Tensor:
    """Training's first frames: x0[:, :, 0] with probability `p_first_frame` per clip, NaN (not
    given) otherwise."""
    keep = torch.rand(len(x0), generator=generator, device=x0.device if generator is None else "cpu")
    keep = (keep < p_first_frame).to(x0.device)
    return torch.where(keep[:, None, None, None], x0[:, :, 0], torch.nan)


class FrameConditioned:
    """The network with the first-frame condition on its input: `model(x_t, t, cond)` calls
    `net(cat[x_t, condition], t, cond)`. The condition's rows repeat when the guider doubles the
    batch (both passes see the frame); everything else (`null_condition`, ...) is the network's."""

    def __init__(self, net, condition: Tensor):
        self.net, self.condition = net, condition

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        y = self.condition
        if len(x) != len(y):
            y = y.repeat(len(x) // len(y), *[1] * (y.ndim - 1))
        return self.net(torch.cat([x, y.to(x.dtype)], dim=1), t, cond)

    def null_condition(self, batch: int, device) -> Tensor | None:
        return self.net.null_condition(batch, device)

    def __getattr__(self, name: str):
        return getattr(self.net, name)
