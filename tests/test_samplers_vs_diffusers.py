"""DDIM and DPM-Solver++(2M) trajectories against diffusers' schedulers, step by step (float64)."""

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ddpm_lab.diffusion import GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.samplers import dpm_timesteps, make_timesteps, sample
from tests.helpers import assert_reproduces_mixture


def toy_model(x, t, cond=None):
    """A smooth, nonlinear stand-in for a network's eps prediction."""
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.5 * x * torch.cos(tt / 300) + 0.1 * torch.sin(x + tt / 1000)


@pytest.fixture(scope="module")
def diff():
    return GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))


def our_trajectory(diff, sampler, steps, spacing, eta=None, seed=0, **options):
    x_T = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(123))
    _, traj = sample(toy_model, x_T.shape, diff, sampler=sampler, steps=steps, spacing=spacing, eta=eta,
                     x_T=x_T, dtype=torch.float64, return_trajectory=True,
                     generator=torch.Generator().manual_seed(seed), **options)
    return x_T, traj


def use_our_schedule(ref, diff):
    """Give diffusers our float64 schedule (equal to its own up to float32 round-off, see
    test_schedules) so that the solver arithmetic is what is compared."""
    ref.betas, ref.alphas, ref.alphas_cumprod = diff.betas, 1 - diff.betas, diff.alphas_cumprod


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_trajectory_equals_diffusers(diff, eta, spacing, steps):
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing=spacing)
    use_our_schedule(ref, diff)
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == make_timesteps(1000, steps, spacing).tolist()
    x, traj = our_trajectory(diff, "ddim", steps, spacing, eta=eta, seed=7)
    gen = torch.Generator().manual_seed(7)       # our sampler's noise stream: one draw per noisy step
    for i, t in enumerate(ref.timesteps.tolist()):
        last = i == len(ref.timesteps) - 1
        noise = torch.zeros_like(x) if last or eta == 0 else torch.randn(x.shape, generator=gen, dtype=torch.float64)
        out = toy_model(x, torch.full((len(x),), t))
        x = ref.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(traj[i + 1], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("use_clipped", [False, True])
def test_ddim_with_x0_clipping_equals_diffusers(diff, eta, use_clipped):
    """clip_x0 is diffusers' clip_sample (range 1); use_clipped_model_output re-derives eps from the
    clipped x0 in both. The toy model's x0 leaves [-1, 1] at large t, so clipping acts."""
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, clip_sample_range=1.0,
                        set_alpha_to_one=True, timestep_spacing="leading")
    use_our_schedule(ref, diff)
    ref.set_timesteps(10)
    x, traj = our_trajectory(diff, "ddim", 10, "leading", eta=eta, seed=7, clip_x0=True,
                             use_clipped_model_output=use_clipped)
    _, other = our_trajectory(diff, "ddim", 10, "leading", eta=eta, seed=7, clip_x0=True,
                              use_clipped_model_output=not use_clipped)
    assert (traj[-1] - other[-1]).abs().max() > 1e-2          # the option changes the result
    gen = torch.Generator().manual_seed(7)
    for i, t in enumerate(ref.timesteps.tolist()):
        last = i == len(ref.timesteps) - 1
        noise = torch.zeros_like(x) if last or eta == 0 else torch.randn(x.shape, generator=gen, dtype=torch.float64)
        out = toy_model(x, torch.full((len(x),), t))
        x = ref.step(out, t, x, eta=eta, use_clipped_model_output=use_clipped, variance_noise=noise).prev_sample
        torch.testing.assert_close(traj[i + 1], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_linspace_steps_equal_diffusers_and_follow_the_sequence(diff, eta, steps):
    """diffusers' DDIMScheduler steps from t to t - T // steps whatever the spacing; for `linspace`
    that target is not the next element of its own sequence (diffusers issues #11347, #12633). We
    step along the sequence, as its DDPMScheduler does. Here: each step of ours equals diffusers'
    at diffusers' own (t, t_prev) pairs, and our trajectory uses the sequence's next element."""
    from ddpm_lab.diffusion.samplers import ddim_step
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="linspace")
    use_our_schedule(ref, diff)
    ref.set_timesteps(steps)
    seq = make_timesteps(1000, steps, "linspace").tolist()
    assert ref.timesteps.tolist() == seq
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for t in seq:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        out = toy_model(x, torch.full((len(x),), t))
        expected = ref.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        ours = ddim_step(diff, out, x, t, t - 1000 // steps, noise, eta=eta)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        x = expected
    x_T, traj = our_trajectory(diff, "ddim", steps, "linspace", eta=0.0)
    x = x_T
    for i, t in enumerate(seq):                  # along the sequence: t -> seq[i + 1] (-1 at the end)
        t_prev = seq[i + 1] if i + 1 < len(seq) else -1
        x = ddim_step(diff, toy_model(x, torch.full((len(x),), t)), x, t, t_prev, None, eta=0.0)
        torch.testing.assert_close(traj[i + 1], x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_dpmpp_2m_trajectory_equals_diffusers(diff, spacing, steps):
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                      algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                      timestep_spacing=spacing, final_sigmas_type="zero")
    use_our_schedule(ref, diff)
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == dpm_timesteps(1000, steps, spacing).tolist()
    x, traj = our_trajectory(diff, "dpmpp_2m", steps, spacing)
    for i, t in enumerate(ref.timesteps.tolist()):
        out = toy_model(x, torch.full((len(x),), t))
        x = ref.step(out, t, x).prev_sample
        torch.testing.assert_close(traj[i + 1], x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpmpp_2m_sde_trajectory_equals_diffusers(diff, spacing, steps, monkeypatch):
    """SDE-DPM-Solver++(2M) with diffusers given our noise draws (float32 draws, exact in float64,
    since diffusers casts variance_noise to float32)."""
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                      algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint",
                                      timestep_spacing=spacing, final_sigmas_type="zero")
    use_our_schedule(ref, diff)
    ref.set_timesteps(steps)
    x_T = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(123))
    draws = torch.Generator().manual_seed(3)
    noises = [torch.randn(4, 2, 3, 3, generator=draws).double() for _ in range(steps)]
    calls = iter(noises)
    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: next(calls))   # the sampler's draws
    _, traj = sample(toy_model, x_T.shape, diff, sampler="dpmpp_2m_sde", steps=steps, spacing=spacing,
                     x_T=x_T, dtype=torch.float64, return_trajectory=True)
    monkeypatch.undo()
    x = x_T
    for i, t in enumerate(ref.timesteps.tolist()):
        out = toy_model(x, torch.full((len(x),), t))
        x = ref.step(out, t, x, variance_noise=noises[i]).prev_sample
        torch.testing.assert_close(traj[i + 1], x, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(traj[-1], our_trajectory(diff, "dpmpp_2m", steps, spacing)[1][-1])


def test_dpmpp_2m_sde_20_steps_reproduces_the_mixture(three_gaussians):
    gmm = three_gaussians
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    x = sample(gmm.eps_fn(diff), (20_000, 2), diff, sampler="dpmpp_2m_sde", steps=20, dtype=torch.float64,
               generator=torch.Generator().manual_seed(0))
    assert_reproduces_mixture(gmm, x)


def test_dpmpp_20_steps_reproduces_the_mixture_like_ddpm_1000(three_gaussians):
    """Same tolerances as the DDPM-1000 test (test_samplers.py), with 20 network calls."""
    gmm = three_gaussians
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    n = 20_000
    x = sample(gmm.eps_fn(diff), (n, 2), diff, sampler="dpmpp_2m", steps=20, dtype=torch.float64,
               generator=torch.Generator().manual_seed(0))
    assert_reproduces_mixture(gmm, x)


# diffusers keeps trained_betas in float32: agreement is to float32 round-off of the schedule.
@pytest.mark.parametrize("scheduler, ours, spacing", [
    ("DDIMScheduler", "ddim", "leading"), ("DPMSolverMultistepScheduler", "dpmpp_2m", "linspace")])
def test_diffusers_adapter_runs_the_scheduler_on_our_schedule(diff, scheduler, ours, spacing):
    x_T = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = sample(toy_model, x_T.shape, diff, sampler="diffusers", scheduler=scheduler, steps=20,
               spacing=spacing, eta=0.0, x_T=x_T, dtype=torch.float64)
    b = sample(toy_model, x_T.shape, diff, sampler=ours, steps=20, spacing=spacing, eta=0.0, x_T=x_T,
               dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def assert_samples_the_mixture(gmm, x):
    k = gmm.classify(x)
    for c in range(3):       # 4000 samples: weight standard error <= 0.008
        assert abs((k == c).double().mean().item() - gmm.weights[c].item()) < 0.03
        assert (x[k == c].mean(0) - gmm.means[c]).abs().max() < 0.1


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "UniPCMultistepScheduler"])
def test_diffusers_schedulers_sample_the_mixture(three_gaussians, scheduler):
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    x = sample(three_gaussians.eps_fn(diff), (4000, 2), diff, sampler="diffusers", scheduler=scheduler,
               steps=30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_samples_the_mixture(three_gaussians, x)


def test_exact_v_and_x0_outputs_agree_with_the_exact_eps(three_gaussians):
    """GaussianMixture.output_fn: x0 and v built from E[x0 | x_t] convert back to the exact eps."""
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for prediction in ("x0", "v"):
        diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000), prediction=prediction)
        for t in (0, 300, 999):
            tt = torch.full((64,), t)
            _, eps = diff.predict_x0_eps(three_gaussians.output_fn(diff)(x, tt), x, t)
            torch.testing.assert_close(eps, three_gaussians.eps(x, tt, diff), rtol=1e-9, atol=1e-9)


ZERO_SNR_SAMPLERS = [("ddpm", None), ("ddim", None), ("dpmpp_2m", None), ("dpmpp_2m_sde", None),
                     ("diffusers", "DPMSolverMultistepScheduler"), ("diffusers", "EulerDiscreteScheduler"),
                     ("diffusers", "UniPCMultistepScheduler"), ("diffusers", "DDIMScheduler"),
                     ("diffusers", "HeunDiscreteScheduler")]      # Heun: no rescale_betas_zero_snr option


@pytest.mark.parametrize("sampler, scheduler", ZERO_SNR_SAMPLERS)
def test_zero_terminal_snr_v_model_samples_the_mixture(three_gaussians, sampler, scheduler):
    """With abar_T = 0 every sampler (and diffusers' sigma-based schedulers, which divide by abar_T)
    starts from pure noise and reproduces the mixture from the exact v prediction."""
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000, zero_terminal_snr=True),
                             prediction="v")
    assert float(diff.alphas_cumprod[-1]) == 0.0
    x = sample(three_gaussians.output_fn(diff), (4000, 2), diff, sampler=sampler, scheduler=scheduler,
               steps=30, spacing="trailing", dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    assert_samples_the_mixture(three_gaussians, x)


def test_only_schedulers_that_run_on_our_schedule_are_offered():
    from ddpm_lab.diffusion.samplers import diffusers_scheduler_names

    names = diffusers_scheduler_names()
    assert {"DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
            "UniPCMultistepScheduler"} <= set(names)
    assert not any("FlowMatch" in n or "Inverse" in n for n in names)


def test_every_offered_scheduler_samples_on_our_schedule(three_gaussians):
    """Diffusers' exports filtered to those that run here: each samples from our betas; its own
    DDPM-compatible list (KarrasDiffusionSchedulers) is covered where it takes our betas."""
    import diffusers.schedulers

    from ddpm_lab.diffusion.samplers import diffusers_scheduler_names
    from ddpm_lab.diffusion.samplers.scheduler import runs_on_our_schedule

    names = diffusers_scheduler_names()
    karras = [getattr(diffusers.schedulers, e.name) for e in diffusers.schedulers.KarrasDiffusionSchedulers]
    assert {cls.__name__ for cls in karras if runs_on_our_schedule(cls)} <= set(names)
    assert not any(n.startswith("CogVideoX") for n in names)
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    for name in names:
        x = sample(three_gaussians.output_fn(diff), (200, 2), diff, sampler="diffusers", scheduler=name, steps=10,
                   dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        assert x.shape == (200, 2) and torch.isfinite(x).all(), name
        assert x.abs().max() < 10, name


def test_unknown_diffusers_scheduler_lists_the_choices(diff):
    from ddpm_lab.errors import UserError

    with pytest.raises(UserError, match="sampler.scheduler='FooScheduler' is not allowed; choose one of: .*EulerDiscreteScheduler"):
        sample(toy_model, (2, 2), diff, sampler="diffusers", scheduler="FooScheduler", steps=5)
