"""RePaint (ddpm_lab.diffusion.repaint) against diffusers' RePaintScheduler: the jump schedule,
each step, and the whole chain with the same model outputs and noise."""

import pytest
import torch
from diffusers import RePaintScheduler

from ddpm_lab.diffusion import GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.repaint import repaint, repaint_grid, repaint_step, repaint_timesteps
from ddpm_lab.diffusion.samplers import Trajectory
from ddpm_lab.errors import UserError


def toy_model(x, t):
    """A smooth, nonlinear stand-in for a network's eps prediction."""
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.5 * x * torch.cos(tt / 30) + 0.3 * torch.sin(2 * x + tt / 100)


def diffusers_repaint(diff: GaussianDiffusion, steps: int) -> RePaintScheduler:
    ref = RePaintScheduler(num_train_timesteps=diff.num_steps, trained_betas=diff.betas.numpy())
    assert torch.allclose(ref.alphas_cumprod, diff.alphas_cumprod)    # the same schedule, float64
    return ref


@pytest.mark.parametrize("T, steps, jump_length, jump_n_sample", [
    (1000, 250, 10, 10), (1000, 100, 5, 3), (50, 50, 10, 1), (50, 25, 4, 2), (40, 40, 1, 4), (20, 10, 12, 3),
])
def test_jump_schedule_equals_diffusers(T, steps, jump_length, jump_n_sample):
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=T))
    ref = diffusers_repaint(diff, steps)
    ref.set_timesteps(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    ours = repaint_timesteps(T, steps, jump_length, jump_n_sample)
    assert ours == ref.timesteps.tolist()
    grid = repaint_grid(T, steps, jump_length, jump_n_sample)
    ups = sum(b > a for a, b in zip(grid, grid[1:]))
    assert grid[0] == ours[0] and grid[-1] == -1
    assert all(abs(b - a) == T // steps or b == -1 or a == -1 for a, b in zip(grid, grid[1:]))
    assert len(grid) - 1 - ups == steps + ups                  # every jump up is walked down again
    if steps > jump_length:          # r passes over each resampled segment: (r - 1) jumps per point
        assert ups == (jump_n_sample - 1) * jump_length * len(range(0, steps - jump_length, jump_length))


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_repaint_chain_equals_diffusers_step_by_step(clip, eta):
    """At steps = T, the same x_T, model outputs and generator: every state of our chain equals
    diffusers' RePaintPipeline loop (scheduler.step / undo_step) to 1e-5."""
    T, j, r = 30, 4, 3
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=T, beta_start=1e-3, beta_end=0.2))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    known = torch.rand(6, 6, generator=g) < 0.5
    ref = diffusers_repaint(diff, T)
    ref.config.clip_sample, ref.eta = clip, eta
    ref.set_timesteps(T, jump_length=j, jump_n_sample=r)
    traj = Trajectory()
    ours = repaint(toy_model, x0, known, diff, repaint_grid(T, T, j, r), torch.Generator().manual_seed(5), eta=eta,
                   clip_x0=clip, callback=traj)

    gen = torch.Generator().manual_seed(5)
    image = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    mask = known.to(torch.float64)
    states, t_last = [image], ref.timesteps[0] + 1
    for t in ref.timesteps:
        if t < t_last:
            out = toy_model(image, t.reshape(1).expand(len(image)))
            image = ref.step(out, t, image, x0, mask, gen).prev_sample
        else:
            image = ref.undo_step(image, t_last, gen)
        t_last = t
        states.append(image)
    assert len(states) == len(traj.states)
    for a, b in zip(traj.states, states):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, states[-1], rtol=1e-5, atol=1e-5)
    assert (ours[..., known] == x0[..., known]).all()          # the known pixels, exactly


def test_repaint_step_equals_diffusers_on_a_respaced_schedule():
    """Reverse steps on the stride T // steps (where diffusers' undo_step differs, see the module)."""
    T, steps = 1000, 50
    diff = GaussianDiffusion(NoiseSchedule.from_name("cosine", num_steps=T))
    ref = diffusers_repaint(diff, steps)
    ref.set_timesteps(steps, jump_length=5, jump_n_sample=2)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    known = torch.zeros(8, 8, dtype=torch.bool)
    known[4:] = True
    for t in (980, 500, 20, 0):
        x = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        out = toy_model(x, torch.full((2,), t))
        noise_gen = torch.Generator().manual_seed(t)
        expected = ref.step(out, t, x, x0, known.double(), noise_gen).prev_sample
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        ours = repaint_step(diff, out, x, t, max(t - T // steps, -1), x0, known, noise, eta=0.0, clip_x0=True)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_resampling_options_are_checked():
    with pytest.raises(UserError, match=r"task.jump_length=0 must be an integer >= 1"):
        repaint_grid(100, 10, 0, 2)
    with pytest.raises(UserError, match=r"sampler.steps=0 must be"):
        repaint_grid(100, 0, 2, 2)
