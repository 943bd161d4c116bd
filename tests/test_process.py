import pytest
import torch

from ddpm_lab.diffusion import GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.samplers import ddpm_step


@pytest.fixture
def diff():
    return GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))


def test_q_sample_closed_form_mean_and_variance(diff):
    """q(x_t|x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (the lecture's slide has typos here)."""
    x0 = torch.tensor([[0.7, -0.3, 1.0]], dtype=torch.float64)
    for t in (0, 100, 999):
        n = 200_000
        tt = torch.full((n,), t)
        noise = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
        xt = diff.q_sample(x0.expand(n, 3), tt, noise)
        abar = diff.alphas_cumprod[t]
        se = (1 - abar).sqrt() / n ** 0.5
        assert (xt.mean(0) - abar.sqrt() * x0[0]).abs().max() < 5 * se
        assert (xt.var(0) / (1 - abar) - 1).abs().max() < 0.02   # var SE ~ sqrt(2/n) = 0.003
        mean, var = diff.q_mean_variance(x0, torch.tensor([t]))
        torch.testing.assert_close(mean, abar.sqrt() * x0)
        torch.testing.assert_close(var, (1 - abar).expand(1, 3))


def test_forward_steps_compose_to_closed_form(diff):
    """Iterating q(x_t|x_{t-1}) gives the mean and variance of q(x_t|x_0) (exact recursion)."""
    x0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    mean, var = x0.clone(), torch.zeros_like(x0)
    for t in range(diff.num_steps):
        tt = torch.tensor([t])
        mean = diff.q_step(mean, tt, torch.zeros_like(mean))     # linear in x: the mean maps alone
        var = (1 - diff.betas[t]) * var + diff.betas[t]
        m_ref, v_ref = diff.q_mean_variance(x0, tt)
        torch.testing.assert_close(mean, m_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var, v_ref, rtol=1e-10, atol=1e-12)


def test_posterior_is_bayes_rule_of_the_two_gaussians(diff):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): product of Gaussians in x_{t-1}."""
    x0 = torch.randn(4, 3, dtype=torch.float64)
    xt = torch.randn(4, 3, dtype=torch.float64)
    for t in (1, 10, 500, 999):
        tt = torch.full((4,), t)
        abar_prev, alpha, beta = diff.alphas_cumprod[t - 1], 1 - diff.betas[t], diff.betas[t]
        precision = 1 / (1 - abar_prev) + alpha / beta
        mean = (abar_prev.sqrt() * x0 / (1 - abar_prev) + alpha.sqrt() * xt / beta) / precision
        got_mean, got_var = diff.q_posterior(x0, xt, tt)
        torch.testing.assert_close(got_mean, mean)
        torch.testing.assert_close(got_var, (1 / precision).expand(4, 3))


def test_parameterisation_conversions_are_exact_inverses(diff):
    x0 = torch.randn(8, 2, dtype=torch.float64)
    eps = torch.randn(8, 2, dtype=torch.float64)
    t = torch.randint(0, 1000, (8,))
    xt = diff.q_sample(x0, t, eps)
    torch.testing.assert_close(diff.x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(diff.eps_from_x0(xt, t, x0), eps)
    v = diff.v_from_x0_eps(x0, eps, t)
    torch.testing.assert_close(diff.x0_from_v(xt, t, v), x0)
    for prediction, output in (("eps", eps), ("x0", x0), ("v", v)):
        d = GaussianDiffusion(diff.schedule, prediction=prediction)
        got_x0, got_eps = d.predict_x0_eps(output, xt, t)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_for_the_exact_prediction_and_positive_otherwise(diff, prediction):
    d = GaussianDiffusion(diff.schedule, prediction=prediction)
    x0 = torch.randn(16, 2, dtype=torch.float64)

    def oracle(xt, t, cond):
        eps = d.eps_from_x0(xt, t, x0)
        return {"eps": eps, "x0": x0, "v": d.v_from_x0_eps(x0, eps, t)}[prediction]

    assert d.training_losses(oracle, x0).max().item() < 1e-12
    wrong = lambda xt, t, cond: oracle(xt, t, cond) + 0.1  # noqa: E731
    torch.testing.assert_close(d.training_losses(wrong, x0), torch.full((16,), 0.01, dtype=torch.float64))


def test_ddpm_step_mean_is_algorithm_2(diff):
    """x_{t-1} = (x_t - (1 - alpha_t)/sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z."""
    xt = torch.randn(5, 3, dtype=torch.float64)
    eps = torch.randn(5, 3, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64)
    for t in (1, 37, 999):
        alpha, abar = 1 - diff.betas[t], diff.alphas_cumprod[t]
        ref_mean = (xt - (1 - alpha) / (1 - abar).sqrt() * eps) / alpha.sqrt()
        torch.testing.assert_close(ddpm_step(diff, eps, xt, t, t - 1, None), ref_mean)
        sigma_large = diff.betas[t].sqrt()
        torch.testing.assert_close(ddpm_step(diff, eps, xt, t, t - 1, z, "fixed_large"), ref_mean + sigma_large * z)
    # the last step (lecture t = 1) adds no noise
    torch.testing.assert_close(ddpm_step(diff, eps, xt, 0, -1, z), diff.x0_from_eps(xt, torch.zeros(5, dtype=torch.long), eps))


def test_bad_prediction_type():
    from ddpm_lab.errors import UserError

    with pytest.raises(UserError, match="diffusion.prediction='score'.*eps, x0, v"):
        GaussianDiffusion(NoiseSchedule.from_name("linear"), prediction="score")


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_scalar_timestep_path_equals_tensor_path(diff, prediction):
    """Samplers pass one int t for the batch (float coefficients); it must equal the gathered path."""
    d = GaussianDiffusion(diff.schedule, prediction=prediction)
    xt, out = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    for t in (0, 17, 999):
        a = d.predict_x0_eps(out, xt, t)
        b = d.predict_x0_eps(out, xt, torch.full((4,), t))
        torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a[1], b[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d.q_step(xt, 3, out), d.q_step(xt, torch.full((4,), 3), out))


def test_zero_terminal_snr_rescale_equals_diffusers():
    from diffusers import DDPMScheduler

    ours = NoiseSchedule.from_name("linear", num_steps=1000, zero_terminal_snr=True)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", rescale_betas_zero_snr=True)
    assert ours.alphas_cumprod[-1].item() == 0.0 and ours.betas[-1].item() == pytest.approx(1.0)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-4, atol=1e-7)
    plain = NoiseSchedule.from_name("linear", num_steps=1000)
    assert ours.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item())


def test_zero_terminal_snr_refuses_eps_prediction():
    from ddpm_lab.errors import UserError

    sched = NoiseSchedule.from_name("cosine", num_steps=100, zero_terminal_snr=True)
    with pytest.raises(UserError, match="needs diffusion.prediction=v"):
        GaussianDiffusion(sched, prediction="eps")
    GaussianDiffusion(sched, prediction="v")


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_is_the_same_x0_space_loss_for_every_prediction(diff, prediction):
    """Hang et al. 2023: weight min(SNR, gamma) on ||x0_hat - x0||^2, whatever the network predicts."""
    d = GaussianDiffusion(diff.schedule, prediction=prediction, loss_weighting="min_snr", min_snr_gamma=5.0)
    x0 = torch.randn(64, 3, dtype=torch.float64)
    t = torch.arange(0, 1000, 1000 // 64)[:64]
    noise = torch.randn(64, 3, dtype=torch.float64)
    delta = 0.01 * torch.randn(64, 3, dtype=torch.float64)        # an error of the x0 prediction

    def model(xt, tt, cond):      # a model whose x0 prediction is off by delta
        x0_hat = x0 + delta
        eps_hat = d.eps_from_x0(xt, tt, x0_hat)
        return {"eps": eps_hat, "x0": x0_hat, "v": d.v_from_x0_eps(x0_hat, eps_hat, tt)}[prediction]

    loss = d.training_losses(model, x0, t=t, noise=noise)
    snr = diff.schedule.snr()[t]
    expected = snr.clamp(max=5.0) * delta.pow(2).mean(1)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-12)


def test_gather_interpolates_fractional_timesteps(diff):
    """Schedulers with fractional timesteps (Euler) read the schedule by linear interpolation."""
    from ddpm_lab.diffusion.process import gather

    like = torch.zeros(3, 2, dtype=torch.float64)
    a = diff.alphas_cumprod
    got = gather(a, torch.tensor([10.0, 10.25, 998.5]), like).reshape(-1)
    expected = torch.stack([a[10], 0.75 * a[10] + 0.25 * a[11], 0.5 * a[998] + 0.5 * a[999]])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(gather(a, torch.tensor([7, 999]), like[:2]).reshape(-1), a[[7, 999]])
