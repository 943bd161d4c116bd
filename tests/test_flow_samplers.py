"""The flow-matching samplers through `sample` (flow_euler, flow_heun, diffusers' flow schedulers):
against the exact velocity of a Gaussian mixture, against DDIM on the mapped grid, against diffusers'
FlowMatchEulerDiscreteScheduler, with guidance, and the errors for a sampler that does not fit the
process."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ddpm_lab.diffusion import FlowMatching, GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.flow import ddpm_x_scale, s_of_abar, shift_time
from ddpm_lab.diffusion.samplers import (
    Sampler,
    check_options,
    ddim_invert,
    flow_grid,
    make_flow_scheduler,
    make_timesteps,
    sample,
    sample_flow_euler,
)
from ddpm_lab.errors import UserError
from tests.helpers import assert_reproduces_mixture

F64 = dict(dtype=torch.float64)
N = 20_000
# Tolerances of the mixture tests (assert_reproduces_mixture): with n = 20,000 samples the Monte-Carlo
# standard error of a weight is sqrt(p (1 - p) / n) <= 0.0035, of a mean coordinate sqrt(var / n_k)
# <= 0.009 (n_k >= 4,000), of a covariance entry about var sqrt(2 / n_k) <= 0.007; the tests allow about
# 4 of them plus the solver's discretisation error: 0.015 on weights, 0.04 on means, 0.03 on covariances.


def toy_velocity(x, t, cond=None):
    """A smooth, nonlinear stand-in for a network's velocity at network time t = 1000 s."""
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / 1000
    return 0.5 * x * torch.cos(3 * tt) - 0.3 * torch.sin(x + tt)


def x_T(n=N, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), **F64)


# ----- the mixture ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, steps, shift", [("flow_euler", 200, 1.0), ("flow_heun", 30, 3.0)])
def test_flow_samplers_reproduce_a_gaussian_mixture(three_gaussians, sampler, steps, shift):
    """With the exact velocity, Euler at 200 steps and Heun at 30 (59 calls) sample the mixture
    (tolerances above; measured: weights <= 0.0006, means <= 0.013, covariances <= 0.011)."""
    flow = FlowMatching(shift=shift)
    x = sample(three_gaussians.flow_denoiser(flow), (N, 2), flow, sampler=sampler, steps=steps,
               dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64 and x.shape == (N, 2)
    assert_reproduces_mixture(three_gaussians, x)


@pytest.mark.parametrize("sampler, scheduler", [("flow_euler", None), ("flow_heun", None),
                                                ("diffusers", "UniPCMultistepScheduler")])
def test_an_edm_preconditioned_flow_samples_as_the_velocity_flow(three_gaussians, sampler, scheduler):
    """The exact EDM-preconditioned output (x0 = c_skip x_s + c_out F) implies the exact velocity, so
    every sampler takes the same steps as with the exact v output (clip_x0 off: the mixture leaves
    [-1, 1]), with and without guidance."""
    kw = dict(sampler=sampler, scheduler=scheduler, steps=12, x_T=x_T(200, seed=3), dtype=torch.float64,
              clip_x0=False, cond=torch.arange(200) % 3, guidance_scale=2.0)
    edm, v = FlowMatching(prediction="edm", sigma_data=1.5, shift=3.0), FlowMatching(shift=3.0)
    torch.testing.assert_close(sample(three_gaussians.flow_denoiser(edm), (200, 2), edm, **kw),
                               sample(three_gaussians.flow_denoiser(v), (200, 2), v, **kw), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_diffusers_flow_solvers_reproduce_the_mixture(three_gaussians, scheduler):
    """20 steps of DPM-Solver++ / UniPC on flow sigmas, with an x0-predicting flow (converted to the
    velocity the scheduler takes); tolerances above (measured: weights <= 0.0013, means <= 0.013,
    covariances <= 0.011)."""
    flow = FlowMatching(prediction="x0")
    x = sample(three_gaussians.flow_denoiser(flow), (N, 2), flow, sampler="diffusers", scheduler=scheduler,
               steps=20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_reproduces_mixture(three_gaussians, x)


# ----- exact equivalences --------------------------------------------------------------------------
def test_flow_euler_equals_ddim_on_the_mapped_grid(three_gaussians):
    """DDIM (eta 0) on the DDPM schedule is Euler on the flow ODE at s = s_of_abar(abar_t) with
    x_s = x_t / ddpm_x_scale(s): the same states, step by step (exact eps vs exact v, float64)."""
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    flow = FlowMatching()
    start = x_T(300, seed=1)
    _, ddim = sample(three_gaussians.eps_fn(diff), start.shape, diff, sampler="ddim", steps=20, eta=0.0, x_T=start,
                     dtype=torch.float64, return_trajectory=True)
    abars = [float(diff.alphas_cumprod[t]) for t in make_timesteps(1000, 20, "leading").tolist()] + [1.0]
    grid = [s_of_abar(a) for a in abars]
    states = []
    fn = three_gaussians.flow_denoiser(flow)
    sample_flow_euler(lambda x, s: fn(x, flow.network_time(s), None), start / ddpm_x_scale(grid[0]), grid, flow,
                      callback=lambda state: states.append(state.x))
    assert grid[-1] == 0.0 and len(states) == 20
    for i, (x_s, s) in enumerate(zip(states, grid[1:])):
        torch.testing.assert_close(x_s * ddpm_x_scale(s), ddim[i + 1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_equals_diffusers_flow_match_euler_step_by_step(shift):
    """Our grid is diffusers' sigmas (its shift applied to the same uniform sigmas), and each Euler step
    is FlowMatchEulerDiscreteScheduler.step (which computes in float32: 1e-5)."""
    flow = FlowMatching(shift=shift)
    grid = flow_grid(flow, 12)
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(sigmas=torch.linspace(1, 0, 13, **F64)[:-1].tolist())
    torch.testing.assert_close(ref.sigmas.double(), torch.tensor(grid, **F64), rtol=1e-6, atol=1e-6)
    start = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(2), **F64)
    _, traj = sample(toy_velocity, start.shape, flow, sampler="flow_euler", steps=12, x_T=start, dtype=torch.float64,
                     return_trajectory=True)
    for i, t in enumerate(ref.timesteps):
        out = toy_velocity(traj[i], t.double().expand(4))
        torch.testing.assert_close(ref.step(out, t, traj[i]).prev_sample, traj[i + 1], rtol=1e-5, atol=1e-5)


def test_diffusers_flow_match_euler_sampler_is_our_euler_on_its_sigmas():
    """sampler="diffusers" with FlowMatchEulerDiscreteScheduler: its own sigmas (here shifted by the
    sampler's shift 2, over the process's 3), the network at time_scale * sigma."""
    flow = FlowMatching(shift=3.0)
    start = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(3), **F64)
    kw = dict(x_T=start, dtype=torch.float64, steps=10, shift=2.0)
    states = []
    got = sample(toy_velocity, start.shape, flow, sampler="diffusers", scheduler="FlowMatchEulerDiscreteScheduler",
                 callback=states.append, **kw)
    sched = make_flow_scheduler("FlowMatchEulerDiscreteScheduler", flow, 2.0)
    sched.set_timesteps(10)
    sigmas = sched.sigmas.tolist()
    assert [state.t for state in states] == sigmas and sigmas[-1] == 0.0
    expected = sample_flow_euler(lambda x, s: toy_velocity(x, 1000 * s), start, sigmas, flow)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ----- time input, grid, callback ------------------------------------------------------------------
@pytest.mark.parametrize("sampler, scheduler", [("flow_euler", None), ("flow_heun", None),
                                                ("diffusers", "UniPCMultistepScheduler")])
def test_the_network_sees_time_scale_times_s_and_states_carry_s(three_gaussians, sampler, scheduler):
    flow = FlowMatching(time_scale=500.0, shift=2.0)
    seen, states = [], []
    fn = three_gaussians.flow_denoiser(flow)

    def model_fn(x, t, cond):
        seen.append(t[0].item())
        return fn(x, t, cond)

    start = x_T(16, seed=4)
    x = sample(model_fn, start.shape, flow, sampler=sampler, scheduler=scheduler, steps=6, x_T=start,
               dtype=torch.float64, callback=states.append)
    times = [state.t for state in states]
    assert times[-1] == 0.0
    torch.testing.assert_close(states[0].x, start, rtol=0, atol=0)
    torch.testing.assert_close(states[-1].x, x, rtol=0, atol=0)
    if sampler != "diffusers":
        assert times == pytest.approx(shift_time(torch.linspace(1, 0, 7, **F64), 2.0).tolist(), abs=1e-12)
        expected = times[:-1]
        if sampler == "flow_heun":          # Heun: s_i, then the corrector at s_{i+1} (none at s = 0)
            expected = [s for pair in zip(times[:-1], times[1:-1]) for s in pair] + [times[-2]]
        assert seen == pytest.approx([500 * s for s in expected], abs=1e-9)
    else:
        assert seen == pytest.approx([500 * s for s in times[:-1]], abs=1e-4)
    same = sample(three_gaussians.flow_denoiser(FlowMatching(shift=2.0)), start.shape, FlowMatching(shift=2.0),
                  sampler=sampler, scheduler=scheduler, steps=6, x_T=start, dtype=torch.float64)
    torch.testing.assert_close(x, same, rtol=1e-9, atol=1e-9)          # time_scale is the network's business


def test_sampler_shift_overrides_the_process_shift_and_defaults_apply(three_gaussians):
    flow = FlowMatching(shift=3.0)
    fn = three_gaussians.flow_denoiser(flow)
    states = []
    sample(fn, (4, 2), flow, steps=5, shift=1.5, dtype=torch.float64, callback=states.append)
    assert [s.t for s in states] == pytest.approx(shift_time(torch.linspace(1, 0, 6, **F64), 1.5).tolist())
    states.clear()
    sample(fn, (4, 2), flow, dtype=torch.float64, callback=states.append)     # flow_euler, 50 steps, shift 3
    assert len(states) == flow.default_sampling_steps + 1 == 51
    assert [s.t for s in states] == pytest.approx(flow_grid(flow, 50))
    x = Sampler(name="flow_heun", steps=4, shift=2.0)(fn, (4, 2), flow, dtype=torch.float64)
    assert x.shape == (4, 2)


# ----- guidance ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, scheduler", [("flow_euler", None), ("flow_heun", None),
                                                ("diffusers", "DPMSolverMultistepScheduler")])
def test_guidance_in_flow_samplers(three_gaussians, sampler, scheduler):
    """Scale 1 is the conditional model (every sample lands in its component); scale w is
    v_u + w (v_c - v_u) at every model call (the combination is linear in any prediction)."""
    flow = FlowMatching(prediction="x0")
    fn = three_gaussians.flow_denoiser(flow)
    labels = torch.arange(300) % 3
    kw = dict(sampler=sampler, scheduler=scheduler, steps=20, x_T=x_T(300, seed=5), dtype=torch.float64)
    cond = sample(fn, (300, 2), flow, cond=labels, guidance_scale=1.0, **kw)
    assert (three_gaussians.classify(cond) == labels).all()
    torch.testing.assert_close(cond, sample(lambda x, t, c: fn(x, t, labels), (300, 2), flow, **kw), rtol=0, atol=0)
    guided = sample(fn, (300, 2), flow, cond=labels, guidance_scale=3.0, **kw)
    by_hand = sample(lambda x, t, c: fn(x, t, None) + 3.0 * (fn(x, t, labels) - fn(x, t, None)), (300, 2), flow, **kw)
    torch.testing.assert_close(guided, by_hand, rtol=1e-12, atol=1e-12)
    assert (guided - cond).abs().max() > 1e-3


# ----- errors --------------------------------------------------------------------------------------
def one_line_error(message, call):
    with pytest.raises(UserError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


FLOW_CHOICES = "choose one of flow_euler, flow_heun, diffusers"
DDPM_CHOICES = "choose one of ddpm, ddim, dpmpp_2m, dpmpp_2m_sde, diffusers"


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "ddim"}, f"sampler.name=ddim is a DDPM sampler; this model is flow matching (diffusion=flow): "
                          f"{FLOW_CHOICES}"),
    ({"sampler": "dpmpp_2m_sde"}, "sampler.name=dpmpp_2m_sde is a DDPM sampler"),
    ({"shift": 0.0}, "sampler.shift=0.0 must be a positive number"),
    ({"shift": -2}, "sampler.shift=-2 must be a positive number"),
    ({"eta": 0.5}, "sampler.eta=0.5 is a DDPM option"),
    ({"spacing": "trailing"}, "sampler.spacing='trailing' is a DDPM option"),
    ({"variance": "fixed_large"}, "sampler.variance='fixed_large' is a DDPM option"),
    ({"steps": 0}, "sampler.steps=0 must be an integer >= 1"),
    ({"sampler": "diffusers", "scheduler": "EulerDiscreteScheduler"},
     "sampler.scheduler='EulerDiscreteScheduler' is not allowed (this model is flow matching); choose one of: "
     "FlowMatchEulerDiscreteScheduler"),
])
def test_options_that_do_not_fit_a_flow_process(three_gaussians, kwargs, message):
    flow = FlowMatching()
    one_line_error(message, lambda: sample(three_gaussians.flow_denoiser(flow), (2, 2), flow, **kwargs))


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "flow_euler"}, f"sampler.name=flow_euler is a flow-matching sampler; this model is DDPM "
                                f"(diffusion=default): {DDPM_CHOICES}"),
    ({"sampler": "flow_heun"}, "sampler.name=flow_heun is a flow-matching sampler"),
    ({"sampler": "ddim", "shift": 3.0}, "sampler.shift=3.0 is a flow-matching option; this model is DDPM"),
    ({"sampler": "diffusers", "scheduler": "FlowMatchEulerDiscreteScheduler"},
     "sampler.scheduler='FlowMatchEulerDiscreteScheduler' is not allowed; choose one of:"),
])
def test_flow_options_on_a_ddpm_process(three_gaussians, kwargs, message):
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=100))
    one_line_error(message, lambda: sample(three_gaussians.eps_fn(diff), (2, 2), diff, steps=10, **kwargs))


def test_other_flow_errors(three_gaussians):
    flow = FlowMatching()
    fn = three_gaussians.flow_denoiser(flow)
    one_line_error("ddim_invert needs a DDPM process (diffusion=default); this model is flow matching",
                   lambda: ddim_invert(fn, x_T(4), flow))
    one_line_error("sampler.shift=0 must be a positive number", lambda: Sampler(name="flow_euler", shift=0))
    eps_flow = FlowMatching(prediction="eps")
    one_line_error("diffusion.prediction=eps cannot be sampled with flow matching",
                   lambda: sample(three_gaussians.flow_denoiser(eps_flow), (2, 2), eps_flow))
    assert check_options("flow_euler", steps=5000, process=flow).loop is sample_flow_euler    # no T limit
