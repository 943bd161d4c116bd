"""The distillation math against exact denoisers (ddpm_lab/diffusion/distillation.py,
consistency.py, reflow.py): progressive targets, halving grids, the consistency boundary condition,
deterministic reflow pairs."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.diffusion import FlowMatching, GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.consistency import (
    BOUNDARY_SCALE,
    consistency_fn,
    min_time,
    pseudo_huber,
    skip_out,
)
from ddpm_lab.diffusion.distillation import (
    alpha_sigma,
    check_halving,
    ddim_step,
    network_time,
    progressive_target,
    round_steps,
    rows,
    truncated_snr_weight,
)
from ddpm_lab.diffusion.reflow import generate_pairs
from ddpm_lab.diffusion.samplers import SAMPLERS, sample
from ddpm_lab.errors import UserError


def processes(mixture):
    """(process, exact model(z, network time), grid of `steps`) for DDPM (trailing DDIM) and flow."""
    ddpm = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=64), prediction="eps")
    flow = FlowMatching(prediction="v")
    exact = {id(ddpm): mixture.output_fn(ddpm), id(flow): mixture.flow_denoiser(flow)}
    grids = {id(ddpm): lambda n: SAMPLERS["ddim"].grid(ddpm, n, "trailing"),
             id(flow): lambda n: SAMPLERS["flow_euler"].grid(flow, n)}
    return [(p, (lambda f: lambda z, t: f(z, t, None))(exact[id(p)]), grids[id(p)]) for p in (ddpm, flow)]


def per_sample(value, n, process):
    dtype = torch.float64 if isinstance(process, FlowMatching) else torch.long
    return torch.full((n,), value, dtype=dtype)


@pytest.mark.parametrize("kind", [0, 1], ids=["ddpm", "flow"])
def test_one_student_step_on_the_target_lands_on_two_teacher_steps(three_gaussians, kind):
    process, teacher, grid = processes(three_gaussians)[kind]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(128, 2, generator=g, dtype=torch.float64)
    fine = grid(8)                                    # the teacher's grid; the student's is fine[::2]
    for i in range(4):
        t, t_mid, t_next = (per_sample(fine[2 * i + k], len(z), process) for k in range(3))
        two_steps = ddim_step(teacher, process, ddim_step(teacher, process, z, t, t_mid), t_mid, t_next)
        target = progressive_target(teacher, process, z, t, t_mid, t_next)
        # the ideal student predicts x~: as the process's own output type, then one DDIM step
        alpha, sigma = alpha_sigma(process, t, z)
        eps = (z - alpha * target) / sigma

        def student(x, time_input, target=target, eps=eps):
            return eps - target if isinstance(process, FlowMatching) else eps

        torch.testing.assert_close(ddim_step(student, process, z, t, t_next), two_steps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("clip", [False, True], ids=["unclipped", "clipped"])
@pytest.mark.parametrize("kind", [0, 1], ids=["ddpm", "flow"])
def test_the_target_of_the_last_steps_is_the_teachers_two_step_sample(three_gaussians, kind, clip):
    """Two teacher steps to the data end are the library's sampler (DDIM / Euler; with x0 clipping,
    DDPM's data-prediction step: DPM-Solver++, first order at 2 steps), for a teacher whose x0
    leaves [-1, 1] (3x the exact output); x~ is then its result, inside [-1, 1] when clipped."""
    process, exact, grid = processes(three_gaussians)[kind]
    z = torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, t_mid, t_next = (per_sample(v, len(z), process) for v in grid(2))
    name = "flow_euler" if isinstance(process, FlowMatching) else "dpmpp_2m" if clip else "ddim"
    library = sample(lambda x, s, cond=None: 3 * exact(x, s), z.shape, process, sampler=name, steps=2,
                     x_T=z, clip_x0=clip, dtype=torch.float64, **({} if kind else {"spacing": "trailing"}))
    target = progressive_target(lambda x, s: 3 * exact(x, s), process, z, t, t_mid, t_next, clip)
    assert not clip or target.abs().max() <= 1.0
    torch.testing.assert_close(target, library, rtol=0, atol=1e-9)


def test_rounds_halve_the_step_count_on_nested_grids():
    assert round_steps(64, 1) == [32, 16, 8, 4, 2, 1]
    assert round_steps(32, 4) == [16, 8, 4]
    ddpm = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    for n in (32, 16, 8, 4, 2, 1):
        check_halving(SAMPLERS["ddim"].grid(ddpm, 2 * n, "trailing"), SAMPLERS["ddim"].grid(ddpm, n, "trailing"))
        flow = FlowMatching(shift=3.0)
        check_halving(SAMPLERS["flow_euler"].grid(flow, 2 * n), SAMPLERS["flow_euler"].grid(flow, n))
    with pytest.raises(UserError, match="every other point"):     # leading spacing is not nested
        check_halving(SAMPLERS["ddim"].grid(ddpm, 8, "leading"), SAMPLERS["ddim"].grid(ddpm, 3, "leading"))
    for bad in (3, 0, 6, 2.0):
        with pytest.raises(UserError, match="must be a power of two"):
            round_steps(bad, 1)
    with pytest.raises(UserError, match="must be below"):
        round_steps(4, 4)


def test_truncated_snr_weight_is_max_snr_one():
    ddpm = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    t = torch.tensor([0, 200, 999])
    snr = ddpm.schedule.snr()[t]
    expected = torch.maximum(snr, torch.ones_like(snr))
    torch.testing.assert_close(truncated_snr_weight(ddpm, t, torch.zeros(3, 2, dtype=torch.float64)), expected)


@pytest.mark.parametrize("kind", [0, 1], ids=["ddpm", "flow"])
def test_consistency_function_is_the_identity_at_eps_min(kind, three_gaussians):
    process, _, _ = processes(three_gaussians)[kind]
    z = torch.randn(16, 2, dtype=torch.float64)
    t_min = per_sample(min_time(process), len(z), process)
    alpha, _ = alpha_sigma(process, t_min, z)
    output = torch.randn(16, 2, dtype=torch.float64) * 100           # whatever the network says
    assert torch.equal(consistency_fn(process, output, z, t_min), z / alpha)
    c_skip, c_out = skip_out(process, t_min, z)
    assert torch.all(c_skip == 1) and torch.all(c_out == 0)
    if kind:     # continuous at eps_min: just above it f is still the identity (sigma~_min is right)
        c_skip, _ = skip_out(process, torch.full((4,), min_time(process) + 1e-7, dtype=torch.float64), z[:4])
        torch.testing.assert_close(c_skip, torch.ones_like(c_skip), rtol=0, atol=1e-6)
    # away from it the network's x0 takes over: c_skip falls, c_out = 1 - c_skip rises to 1
    times = torch.tensor([0.02, 0.05, 0.2, 1.0]) if kind else torch.tensor([1, 3, 10, 63])
    c_skip, c_out = (c.reshape(-1) for c in skip_out(process, times, z[:4]))
    assert torch.all(c_skip.diff() < 0) and c_out[-1] > 0.9
    torch.testing.assert_close(c_skip + c_out, torch.ones_like(c_skip))


@pytest.mark.parametrize("kind", [0, 1], ids=["ddpm", "flow"])
def test_a_student_copied_from_an_exact_denoiser_starts_near_it(kind, three_gaussians):
    """f of the exact x0 prediction stays within (sigma_d / (2 k) + sigma~_min) |eps_hat| of it at
    every time: the copied teacher starts as its own denoiser, not an overshoot of it."""
    process, model, _ = processes(three_gaussians)[kind]
    x0 = three_gaussians.sample(64, torch.Generator().manual_seed(0))[0]
    times = torch.tensor([0.03, 0.1, 0.3, 0.6, 0.9, 1.0]) if kind else torch.tensor([1, 5, 15, 30, 50, 63])
    for time in times.tolist():
        t = per_sample(time, len(x0), process)
        alpha, sigma = alpha_sigma(process, t, x0)
        z = alpha * x0 + sigma * torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        output = model(z, network_time(process, t))
        x0_hat, eps_hat = process.predict_x0_eps(output, z, rows(t, z) if kind else t)
        gap = (consistency_fn(process, output, z, t) - x0_hat).norm(dim=1)
        alpha_min, sigma_min = alpha_sigma(process, per_sample(min_time(process), len(z), process), z)
        bound = (0.5 / (2 * BOUNDARY_SCALE) + sigma_min / alpha_min) * eps_hat.norm(dim=1)
        assert torch.all(gap <= bound + 1e-9), time


def test_pseudo_huber_metric():
    x = torch.zeros(2, 4)
    y = torch.tensor([[0.0, 0, 0, 0], [3.0, 4.0, 0, 0]])
    torch.testing.assert_close(pseudo_huber(x, y, c=1.0), torch.tensor([0.0, (25 + 1) ** 0.5 - 1]))
    assert pseudo_huber(x, y)[1] == pytest.approx(5.0, abs=2e-3)       # ~ the L2 distance far away


def test_reflow_pairs_are_deterministic_given_the_seed(three_gaussians):
    flow = FlowMatching(prediction="v")
    model = three_gaussians.flow_denoiser(flow)
    a = generate_pairs(model, flow, (2,), 64, seed=3, steps=8, batch_size=24, device="cpu")
    b = generate_pairs(model, flow, (2,), 64, seed=3, steps=8, batch_size=64, device="cpu")
    c = generate_pairs(model, flow, (2,), 64, seed=4, steps=8, device="cpu")
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)
    assert not torch.allclose(a[0], c[0])
    ode = sample(model, (64, 2), flow, sampler="flow_euler", steps=8, x_T=a[0])
    torch.testing.assert_close(a[1], ode)


@pytest.mark.parametrize("kind", [0, 1], ids=["ddpm", "flow"])
def test_consistency_sampling_at_given_times_is_algorithm_1_on_them(kind, three_gaussians):
    """sampler.times: f at tau_1, re-noised and f at tau_2, ...; the default grid is the same call
    with the grid's own times; bad times are one error naming the key."""
    process, model, grid = processes(three_gaussians)[kind]
    times = [0.9, 0.4] if kind else [60, 25]
    fn = (lambda x, t, cond=None: model(x, t))
    x = sample(fn, (8, 2), process, sampler="consistency", times=times, dtype=torch.float64,
               generator=torch.Generator().manual_seed(3))
    default = grid(2)[:-1]
    by_grid = sample(fn, (8, 2), process, sampler="consistency", steps=2, spacing="leading" if kind else "trailing",
                     dtype=torch.float64,
                     generator=torch.Generator().manual_seed(3))
    by_times = sample(fn, (8, 2), process, sampler="consistency", times=list(default), dtype=torch.float64,
                      generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(by_times, by_grid, rtol=0, atol=0)
    assert not torch.allclose(x, by_grid)
    for bad in ([0.4, 0.9] if kind else [25, 60], [], [1.5] if kind else [64], [True]):
        with pytest.raises(UserError, match=r"sampler\.times=.* must be a non-empty list of strictly decreasing"):
            sample(fn, (8, 2), process, sampler="consistency", times=bad, dtype=torch.float64)
