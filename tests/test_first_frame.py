"""First-frame conditioning (image-to-video): the condition tensor, its dropout, and the network
wrapper under classifier-free guidance."""

import torch

from ddpm_lab.diffusion.first_frame import FrameConditioned, frame_condition, keep_first_frames
from ddpm_lab.diffusion.guidance import Guider


def test_condition_holds_the_first_frame_and_its_mask():
    like = torch.randn(3, 2, 4, 5, 5)
    first = torch.randn(3, 2, 5, 5)
    first[1] = torch.nan                                  # clip 1: no frame given
    cond = frame_condition(first, like)
    assert cond.shape == (3, 3, 4, 5, 5)
    assert torch.equal(cond[0, :2, 0], first[0]) and torch.equal(cond[2, :2, 0], first[2])
    assert cond[:, :, 1:].abs().sum() == 0                # later frames empty
    assert cond[1].abs().sum() == 0                       # not given: all zero
    assert torch.equal(cond[:, 2, 0, 0, 0], torch.tensor([1.0, 0.0, 1.0]))
    assert frame_condition(None, like).abs().sum() == 0


def test_first_frames_are_kept_with_their_probability():
    x0 = torch.randn(4000, 1, 3, 2, 2)
    first = keep_first_frames(x0, 0.3, torch.Generator().manual_seed(0))
    given = ~first.flatten(1).isnan().all(1)
    assert abs(given.float().mean().item() - 0.3) < 0.03
    assert torch.equal(first[given], x0[given, :, 0])
    assert keep_first_frames(x0, 1.0).isnan().sum() == 0


class Recorder(torch.nn.Module):
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x, t, cond=None):
        self.inputs.append((x, cond))
        return x[:, :2] * (1 + (cond.float() if cond is not None else torch.zeros(len(x))))[:, None, None, None, None]

    def null_condition(self, batch, device):
        return torch.full((batch,), 3, dtype=torch.long, device=device)


def test_both_guidance_passes_see_the_frame():
    net = Recorder()
    x = torch.randn(2, 2, 3, 4, 4)
    condition = frame_condition(torch.randn(2, 2, 4, 4), x)
    model = FrameConditioned(net, condition)
    Guider(scale=3.0)(model, x, torch.tensor(5.0), torch.tensor([0, 1]))
    (inp, cond), = net.inputs                              # one batched forward of both passes
    assert inp.shape == (4, 5, 3, 4, 4) and cond.tolist() == [0, 1, 3, 3]
    assert torch.equal(inp[:2, 2:], condition) and torch.equal(inp[2:, 2:], condition)
    assert torch.equal(inp[:2, :2], x) and model.num_classes == 3
