import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_lab.diffusion import GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.guidance import Guider
from ddpm_lab.diffusion.samplers import ddpm_step, make_timesteps, sample
from ddpm_lab.errors import UserError
from tests.helpers import assert_reproduces_mixture


def diffusers_ddpm(num_steps, variance, clip, prediction="epsilon"):
    return DDPMScheduler(num_train_timesteps=num_steps, beta_schedule="linear", variance_type=variance,
                         clip_sample=clip, prediction_type=prediction)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("inference_steps", [None, 50])
def test_ddpm_step_equals_diffusers(variance, clip, inference_steps):
    """One step of ours == DDPMScheduler.step for the same model output and noise (float64)."""
    ref = diffusers_ddpm(1000, variance, clip)
    # Give diffusers our float64 schedule (equal to its own up to float32 round-off, see
    # test_schedules) so that only the step arithmetic is compared, at float64 precision.
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    ref.betas, ref.alphas, ref.alphas_cumprod = diff.betas, 1 - diff.betas, diff.alphas_cumprod
    if inference_steps:
        ref.set_timesteps(inference_steps)
        seq = ref.timesteps.tolist()
        assert seq == make_timesteps(1000, inference_steps, "leading").tolist()
    else:
        seq = list(range(999, -1, -1))
    for i in (0, 1, len(seq) // 2, len(seq) - 2, len(seq) - 1):
        t = seq[i]
        t_prev = seq[i + 1] if i + 1 < len(seq) else -1
        x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        out = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + i))
        expected = ref.step(out, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        got = ddpm_step(diff, out, x, t, t_prev, noise, variance, clip_x0=clip)
        if t_prev < 0 and t > 0:
            continue  # diffusers adds noise on the last step when t > 0; Algorithm 2 does not
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 10, 50, 1000])
def test_timestep_spacing_equals_diffusers(spacing, steps):
    ref = DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert make_timesteps(1000, steps, spacing).tolist() == ref.timesteps.tolist()


def test_analytic_eps_of_one_gaussian_is_the_closed_form():
    """Single component: eps* = sqrt(1 - abar) C^{-1} (x - sqrt(abar) mu), C = abar S + (1 - abar) I."""
    from ddpm_lab.diffusion.analytic import GaussianMixture

    mu = torch.tensor([2.0, -1.0], dtype=torch.float64)
    S = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)
    g = GaussianMixture([1.0], mu[None], S[None])
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    x = torch.randn(6, 2, dtype=torch.float64)
    for t in (0, 250, 999):
        a = diff.alphas_cumprod[t]
        C = a * S + (1 - a) * torch.eye(2, dtype=torch.float64)
        expected = (1 - a).sqrt() * torch.linalg.solve(C, (x - a.sqrt() * mu).T).T
        torch.testing.assert_close(g.eps(x, torch.full((6,), t), diff), expected)


def test_analytic_eps_of_a_mixture_is_minus_scaled_score(three_gaussians):
    diff = GaussianDiffusion(NoiseSchedule.from_name("cosine", num_steps=1000))
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    for t in (0, 300, 900):
        a = diff.alphas_cumprod[t]
        # log q_t by sampling-free formula: each component's marginal, independent of our code
        comps = [torch.distributions.MultivariateNormal(a.sqrt() * m, a * S + (1 - a) * torch.eye(2, dtype=torch.float64))
                 for m, S in zip(three_gaussians.means, three_gaussians.covs)]
        logq = torch.logsumexp(torch.stack([c.log_prob(x) + w.log() for c, w in zip(comps, three_gaussians.weights)]), 0)
        score = torch.autograd.grad(logq.sum(), x)[0]
        torch.testing.assert_close(three_gaussians.eps(x.detach(), torch.full((6,), t), diff), -(1 - a).sqrt() * score)


def test_ddpm_reproduces_a_gaussian_mixture(three_gaussians):
    """With the exact eps, 1000 DDPM steps sample the mixture.

    Tolerances: n = 20,000 samples; the Monte-Carlo standard error of a weight is
    sqrt(p(1-p)/n) <= 0.0035, of a mean coordinate sqrt(var/n_k) <= 0.012 (n_k >= 4,000), of a
    covariance entry about var*sqrt(2/n_k) <= 0.007. We allow about 4 standard errors plus a small
    discretisation bias of the 1000-step chain: 0.015 on weights, 0.04 on means, 0.03 on covariances.
    """
    gmm = three_gaussians
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    n = 20_000
    x = sample(gmm.eps_fn(diff), (n, 2), diffusion=diff, sampler="ddpm", dtype=torch.float64,
               generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64 and x.shape == (n, 2)
    # assign each sample to its most likely component of the data distribution
    assert_reproduces_mixture(gmm, x)


def test_same_seed_same_samples_different_seed_different(three_gaussians):
    """The lecture: different noise samples (dice rolls) give different images; the same give the same."""
    diff = GaussianDiffusion(NoiseSchedule.from_name("cosine", num_steps=100))
    fn = three_gaussians.eps_fn(diff)

    def draw(seed):
        return sample(fn, (64, 2), diff, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    torch.testing.assert_close(draw(0), draw(0), rtol=0, atol=0)
    assert (draw(0) - draw(1)).abs().mean() > 0.1


def test_x_T_fixes_the_start_and_trajectory_is_returned(three_gaussians):
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=100))
    x_T = torch.randn(5, 2, dtype=torch.float64)
    x0, traj = sample(three_gaussians.eps_fn(diff), (5, 2), diff, steps=20, x_T=x_T,
                      return_trajectory=True, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0))
    assert traj.shape == (21, 5, 2)
    torch.testing.assert_close(traj[0], x_T)
    torch.testing.assert_close(traj[-1], x0)


def test_ddim_eta0_is_deterministic_and_samples_the_mixture(three_gaussians):
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    fn = three_gaussians.eps_fn(diff)
    a = sample(fn, (4000, 2), diff, sampler="ddim", steps=100, eta=0.0, dtype=torch.float64,
               generator=torch.Generator().manual_seed(0))
    b = sample(fn, (4000, 2), diff, sampler="ddim", steps=100, eta=0.0, dtype=torch.float64,
               generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    k = three_gaussians.classify(a)
    for c in range(3):
        assert abs((k == c).double().mean().item() - three_gaussians.weights[c].item()) < 0.03


def test_sampler_argument_errors(three_gaussians):
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=100))
    fn = three_gaussians.eps_fn(diff)
    with pytest.raises(UserError, match=r"sampler.steps=101 must be an integer in \[1, 100\]"):
        sample(fn, (2, 2), diff, steps=101)
    with pytest.raises(UserError, match="sampler.steps=0"):
        sample(fn, (2, 2), diff, steps=0)
    with pytest.raises(UserError, match="sampler.name='euler'.*ddpm, ddim"):
        sample(fn, (2, 2), diff, sampler="euler")
    with pytest.raises(UserError, match="sampler.spacing='middle'"):
        sample(fn, (2, 2), diff, steps=10, spacing="middle")
    with pytest.raises(UserError, match="guidance.scale=-1"):
        sample(fn, (2, 2), diff, steps=10, cond=torch.zeros(2, dtype=torch.long), guidance_scale=-1)


def test_guidance_plain_callable_and_batched_network_agree():
    from ddpm_lab.nets import UNet

    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(), dropout=0.0, norm_groups=4, num_classes=3).eval()
    for p in net.parameters():  # the class embedding starts at zero-mean noise; make it matter
        torch.nn.init.normal_(p, std=0.1)
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 10), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        batched = Guider(3.0)(net, x, t, y)
        separate = net(x, t, None) + 3.0 * (net(x, t, y) - net(x, t, None))
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-5)
    assert (net(x, t, y) - net(x, t, None)).abs().max() > 1e-3


@pytest.mark.parametrize("steps, tol", [(50, 0.05), (200, 0.015)])
def test_ddim_inversion_round_trip(three_gaussians, steps, tol):
    """x_T -> (DDIM, eta 0) -> x_0 -> (inversion) -> x_T' -> (DDIM) -> x_0': x_0' returns to x_0.

    The inversion evaluates eps at the step's target timestep (x_{t_next} is unknown), a first-order
    error per step, so the tolerance on the mean absolute error shrinks with the number of steps.
    """
    from ddpm_lab.diffusion.samplers import ddim_invert

    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    fn = three_gaussians.eps_fn(diff)
    x_T = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x0 = sample(fn, x_T.shape, diff, sampler="ddim", steps=steps, eta=0.0, x_T=x_T, dtype=torch.float64)
    x_T2 = ddim_invert(fn, x0, diff, steps=steps)
    x0_again = sample(fn, x_T.shape, diff, sampler="ddim", steps=steps, eta=0.0, x_T=x_T2, dtype=torch.float64)
    assert (x0_again - x0).abs().mean() < tol        # measured: 0.040 (50 steps), 0.011 (200)
    assert (x_T2 - x_T).abs().mean() < 1.5 * tol    # measured: 0.048 (50 steps), 0.012 (200)


def test_ddim_inversion_is_the_same_for_a_v_model(three_gaussians):
    """Inversion converts the model output to eps: a v model of the same denoiser inverts alike."""
    from ddpm_lab.diffusion.samplers import ddim_invert

    sched = NoiseSchedule.from_name("linear", num_steps=1000)
    d_eps, d_v = GaussianDiffusion(sched), GaussianDiffusion(sched, prediction="v")
    eps_fn = three_gaussians.eps_fn(d_eps)

    def v_fn(x, t, cond):
        eps = eps_fn(x, t, cond)
        return d_v.v_from_x0_eps(d_v.x0_from_eps(x, t, eps), eps, t)

    x0 = three_gaussians.sample(200, torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(ddim_invert(v_fn, x0, d_v, steps=20), ddim_invert(eps_fn, x0, d_eps, steps=20),
                               rtol=1e-9, atol=1e-9)


# ----- the registry and the callback ---------------------------------------------------------------
def test_unknown_sampler_names_every_registered_one(three_gaussians):
    from ddpm_lab.diffusion.samplers import SAMPLERS, Sampler

    assert list(SAMPLERS) == ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "diffusers", "flow_euler", "flow_heun",
                             "consistency"]
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=100))
    message = ("sampler.name='euler' is not allowed; choose one of: ddpm, ddim, dpmpp_2m, dpmpp_2m_sde, diffusers, "
               "flow_euler, flow_heun, consistency")
    with pytest.raises(UserError, match=message):
        sample(three_gaussians.eps_fn(diff), (2, 2), diff, sampler="euler")
    with pytest.raises(UserError, match=message):
        Sampler(name="euler")
    with pytest.raises(UserError, match=message):
        Sampler(name="ddim").replace(name="euler")


def test_a_new_sampler_is_one_loop_and_one_registry_line(three_gaussians, monkeypatch):
    """A loop gets the model, x, its own time grid, the process, generator, callback and options."""
    from ddpm_lab.diffusion.samplers import SAMPLERS, Sampler, SamplerDef, sample_ddim

    seen = {}

    def every_tenth(diffusion, steps, spacing, **_):
        return [*range(diffusion.num_steps - 1, -1, -10), -1]

    def sample_ddim_copy(model, x, timesteps, diffusion, *, generator=None, callback=None, eta=0.0, **options):
        seen.update(timesteps=list(timesteps), eta=eta, options=options)
        return sample_ddim(model, x, timesteps, diffusion, generator=generator, callback=callback, eta=eta)

    monkeypatch.setitem(SAMPLERS, "ddim_copy", SamplerDef(sample_ddim_copy, every_tenth))
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=100))
    fn = three_gaussians.eps_fn(diff)
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = Sampler(name="ddim_copy", steps=7, eta=0.0)(fn, x_T.shape, diff, x_T=x_T, dtype=torch.float64)
    assert seen["timesteps"] == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9, -1] and seen["eta"] == 0.0
    assert {"clip_x0", "variance", "spacing", "steps", "scheduler"} <= set(seen["options"])
    expected = sample_ddim(lambda x, t: fn(x, t, None), x_T, every_tenth(diff, 7, "leading"), diff, clip_x0=False)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


@pytest.mark.parametrize("sampler, scheduler", [("ddpm", None), ("ddim", None), ("dpmpp_2m", None),
                                                ("dpmpp_2m_sde", None), ("diffusers", "HeunDiscreteScheduler")])
def test_callback_receives_every_state_in_order(three_gaussians, sampler, scheduler):
    from diffusers import HeunDiscreteScheduler

    from ddpm_lab.diffusion.samplers import Trajectory, dpm_timesteps

    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=100))
    fn = three_gaussians.eps_fn(diff)
    x_T = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    states = []
    kw = dict(sampler=sampler, scheduler=scheduler, steps=8, spacing="trailing", x_T=x_T, dtype=torch.float64)
    x = sample(fn, x_T.shape, diff, callback=states.append, generator=torch.Generator().manual_seed(2), **kw)
    if sampler in ("ddpm", "ddim"):
        grid = make_timesteps(100, 8, "trailing").tolist()
    elif sampler.startswith("dpmpp"):
        grid = dpm_timesteps(100, 8, "trailing").tolist()
    else:
        ref = HeunDiscreteScheduler(num_train_timesteps=100, timestep_spacing="trailing")
        ref.set_timesteps(8)
        grid = ref.timesteps.tolist()          # Heun's own: the inner timesteps twice
        assert len(grid) == 15
    assert [s.i for s in states] == list(range(len(grid) + 1))
    assert [s.t for s in states] == [*grid, -1]
    assert states[0].x is x_T or torch.equal(states[0].x, x_T)
    torch.testing.assert_close(states[-1].x, x, rtol=0, atol=0)
    trajectory = Trajectory()
    again = sample(fn, x_T.shape, diff, callback=trajectory, return_trajectory=True,
                   generator=torch.Generator().manual_seed(2), **kw)
    torch.testing.assert_close(again[1], torch.stack([s.x for s in states]), rtol=0, atol=0)
    torch.testing.assert_close(trajectory.stack(), again[1], rtol=0, atol=0)
    assert trajectory.times == [*grid, -1]


def test_callback_states_are_the_steps_of_ddpm_with_their_noise(three_gaussians):
    """Each reported state is one DDPM step from the one before, with the generator's next draw."""
    diff = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=100))
    fn = three_gaussians.eps_fn(diff)
    states = []
    sample(fn, (5, 2), diff, sampler="ddpm", steps=10, dtype=torch.float64, callback=states.append,
           generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)       # x_T: the first draw
    torch.testing.assert_close(states[0].x, x, rtol=0, atol=0)
    for before, after in zip(states, states[1:]):
        z = torch.randn(5, 2, generator=gen, dtype=torch.float64) if after.t >= 0 else None
        x = ddpm_step(diff, fn(x, torch.full((5,), before.t), None), x, before.t, after.t, z)
        torch.testing.assert_close(after.x, x, rtol=0, atol=0)
