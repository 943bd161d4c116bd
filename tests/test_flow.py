"""FlowMatching (ddpm_lab/diffusion/flow.py): the path, the exact prediction conversions, the map to
DDPM, the training times and loss, the exact velocity of a Gaussian mixture, and the user errors."""

import math

import pytest
import torch

from ddpm_lab.diffusion import FlowMatching
from ddpm_lab.diffusion.analytic import GaussianMixture
from ddpm_lab.diffusion.flow import abar_of_s, ddpm_x_scale, edm_scalings, s_of_abar, shift_time
from ddpm_lab.errors import UserError

F64 = dict(dtype=torch.float64)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), **F64)


# ----- conversions and the map to DDPM ----------------------------------------------------------
@pytest.mark.parametrize("s", [0.3, torch.tensor([0.05, 0.4, 0.7, 0.95], **F64)])
def test_conversions_are_exact_inverses(s):
    f = FlowMatching()
    x, out = randn(4, 3, 2, seed=1), randn(4, 3, 2, seed=2)
    torch.testing.assert_close(f.v_from_x0(x, s, f.x0_from_v(x, s, out)), out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.v_from_eps(x, s, f.eps_from_v(x, s, out)), out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.eps_from_x0(x, s, f.x0_from_eps(x, s, out)), out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.x0_from_eps(x, s, f.eps_from_x0(x, s, out)), out, rtol=1e-12, atol=1e-12)
    for prediction in ("v", "x0", "eps", "edm"):
        fp = FlowMatching(prediction=prediction, sigma_data=0.7)
        x0, eps = fp.predict_x0_eps(out, x, s)
        sb = s if isinstance(s, float) else s[:, None, None]
        torch.testing.assert_close((1 - sb) * x0 + sb * eps, x, rtol=1e-12, atol=1e-12)   # on the path
        torch.testing.assert_close(fp.velocity(out, x, s), eps - x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", ["v", "x0", "eps", "edm"])
def test_targets_convert_back_to_the_data_and_noise(prediction):
    f = FlowMatching(prediction=prediction, sigma_data=0.7)
    x0, noise, s = randn(5, 2, seed=3), randn(5, 2, seed=4), torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], **F64)
    x_s = f.q_sample(x0, s, noise)
    torch.testing.assert_close(x_s, (1 - s[:, None]) * x0 + s[:, None] * noise)
    got_x0, got_eps = f.predict_x0_eps(f.training_target(x0, noise, s), x_s, s)
    torch.testing.assert_close(got_x0, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_eps, noise, rtol=1e-12, atol=1e-12)


def test_edm_scalings_are_karras_table_1_on_the_flow_path():
    """x = x_s / (1 - s) = x0 + sigma eps, sigma = s / (1 - s): c_skip(s) x_s = c_skip_EDM(sigma) x and
    c_out(s) = c_out_EDM(sigma); s = 0 copies x_s, s = 1 is sd times the output."""
    sd, s = 0.6, torch.tensor([0.02, 0.3, 0.5, 0.8, 0.97], **F64)
    sigma = s / (1 - s)
    c_skip, c_out = edm_scalings(s, sd)
    torch.testing.assert_close(c_skip * (1 - s), sd ** 2 / (sigma ** 2 + sd ** 2), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_out, sigma * sd / (sigma ** 2 + sd ** 2).sqrt(), rtol=1e-12, atol=0)
    assert edm_scalings(0.0, sd) == (1.0, 0.0) and edm_scalings(1.0, sd) == (0.0, sd)


def test_the_edm_target_has_unit_variance_and_stays_finite_at_both_ends():
    """For data of second moment sd^2 F's target has variance 1 at every s (EDM's c_out and c_skip are
    chosen so); n = 200,000, the variance's standard error sqrt(2 / n) = 0.003, tolerance 0.02. At
    s = 0 and 1 the target, x0 and the velocity are finite and exact."""
    f = FlowMatching(prediction="edm", sigma_data=0.6)
    x0, noise = 0.6 * randn(200_000, 1, seed=20), randn(200_000, 1, seed=21)
    for s in (0.0, 0.01, 0.3, 0.7, 0.99, 1.0):
        assert abs(f.training_target(x0, noise, s).var().item() - 1) < 0.02
    x0, noise, s = randn(4, 3, seed=22), randn(4, 3, seed=23), torch.tensor([0.0, 1.0, 0.0, 1.0], **F64)
    x_s, target = f.q_sample(x0, s, noise), f.training_target(x0, noise, s)
    assert torch.isfinite(target).all()
    torch.testing.assert_close(f.predict_x0_eps(target, x_s, s)[0], x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.velocity(target, x_s, s), noise - x0, rtol=1e-12, atol=1e-12)


def test_the_map_to_ddpm():
    """x_s = x_t / (sqrt(abar) + sqrt(1 - abar)) at s = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar))."""
    abar = torch.linspace(0, 1, 101, **F64)
    s = s_of_abar(abar)
    torch.testing.assert_close(abar_of_s(s), abar, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_of_abar(abar_of_s(s)), s, rtol=1e-12, atol=1e-12)
    assert s[0] == 1 and s[-1] == 0 and (s.diff() < 0).all()          # abar 0 is pure noise, 1 the data
    torch.testing.assert_close(ddpm_x_scale(s), abar.sqrt() + (1 - abar).sqrt(), rtol=1e-12, atol=1e-12)
    x0, eps = randn(101, 2, seed=5), randn(101, 2, seed=6)
    x_t = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * eps
    torch.testing.assert_close(FlowMatching().q_sample(x0, s, eps) * ddpm_x_scale(s)[:, None], x_t)
    assert abar_of_s(0.5) == 0.5 and s_of_abar(0.5) == pytest.approx(0.5)


# ----- training times and loss -------------------------------------------------------------------
def test_logit_normal_times_have_the_stated_moments_and_the_shift_formula():
    """n = 200,000: the standard error of the mean of logit(s) is 0.8 / sqrt(n) = 0.0018, of its std
    about 0.8 / sqrt(2n) = 0.0013; 0.01 is over 5 standard errors."""
    n = 200_000
    plain = FlowMatching(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    s = plain.sample_timesteps(n, generator=torch.Generator().manual_seed(0)).double()
    logit = torch.log(s / (1 - s))
    assert abs(logit.mean().item() - 0.5) < 0.01 and abs(logit.std().item() - 0.8) < 0.01
    shifted = FlowMatching(time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8, shift=3.0)
    s3 = shifted.sample_timesteps(n, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(s3, 3 * s / (1 + 2 * s), rtol=1e-6, atol=1e-6)   # the same draws, shifted
    assert s3.mean() > s.mean()                                                 # towards the noise


def test_uniform_times_shifted_have_the_shifted_distribution():
    """P(k s / (1 + (k - 1) s) <= u) = P(s <= u / (k - (k - 1) u)); n = 200,000: the CDF's standard
    error is <= 0.0011, tolerance 0.006."""
    f = FlowMatching(shift=3.0)
    s = f.sample_timesteps(200_000, generator=torch.Generator().manual_seed(1)).double()
    assert 0 <= s.min() and s.max() < 1
    for u in (0.1, 0.5, 0.9):
        assert abs((s <= u).double().mean().item() - u / (3 - 2 * u)) < 0.006
    assert shift_time(1.0, 3.0) == 1.0 and shift_time(0.0, 3.0) == 0.0 and shift_time(0.5, 3.0) == 0.75


def test_training_losses_call_the_network_at_1000_s_and_use_the_target():
    f = FlowMatching()
    x0, noise = randn(6, 2, seed=7), randn(6, 2, seed=8)
    s = torch.linspace(0.05, 0.95, 6, **F64)
    seen = {}

    def model_fn(x, t, cond):
        seen.update(x=x, t=t, cond=cond)
        return torch.zeros_like(x)

    loss = f.training_losses(model_fn, x0, t=s, noise=noise, cond="c")
    torch.testing.assert_close(seen["t"], 1000 * s)
    torch.testing.assert_close(seen["x"], f.q_sample(x0, s, noise))
    assert seen["cond"] == "c"
    torch.testing.assert_close(loss, (noise - x0).pow(2).mean(1))
    drawn = f.training_losses(model_fn, x0.float())                      # s drawn: float, in [0, 1)
    assert drawn.shape == (6,) and 0 <= seen["t"].min() and seen["t"].max() < 1000


VELOCITY_WEIGHTS = {"cosmap": lambda s: 2 / (math.pi * (1 - 2 * s + 2 * s ** 2)), "velocity": torch.ones_like}


@pytest.mark.parametrize("weighting", sorted(VELOCITY_WEIGHTS))
def test_velocity_space_weightings_agree_in_every_prediction_space(weighting):
    """One predictor, output as v, x0, eps or EDM's F: the weighted losses agree (dv = -dx0/s =
    deps/(1 - s) = -(c_out / s) dF), and the weight on the v error is cosmap's 2 / (pi (1 - 2s + 2s^2)), or 1 for
    "velocity" (its plain mean squared error)."""
    x0, noise, delta = randn(6, 3, seed=9), randn(6, 3, seed=10), 0.1 * randn(6, 3, seed=11)
    s = torch.linspace(0.06, 0.94, 6, **F64)
    v = noise - x0 + delta
    c_skip, c_out = edm_scalings(s[:, None], 0.7)
    outputs = {"v": lambda x, t, c: v, "x0": lambda x, t, c: x - s[:, None] * v,
               "eps": lambda x, t, c: x + (1 - s[:, None]) * v,
               "edm": lambda x, t, c: (x - s[:, None] * v - c_skip * x) / c_out}
    losses = {prediction: FlowMatching(prediction=prediction, loss_weighting=weighting, sigma_data=0.7)
              .training_losses(model_fn, x0, t=s, noise=noise) for prediction, model_fn in outputs.items()}
    for prediction in ("x0", "eps", "edm"):
        torch.testing.assert_close(losses[prediction], losses["v"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses["v"], VELOCITY_WEIGHTS[weighting](s) * delta.pow(2).mean(1))


def test_the_velocity_weight_of_an_x0_network_stops_growing_at_the_floor():
    weights = FlowMatching(prediction="x0", loss_weighting="velocity").loss_weights(torch.tensor([0.0, 0.05, 0.5]))
    torch.testing.assert_close(weights, torch.tensor([400.0, 400.0, 4.0]))


def test_edm_uniform_loss_is_karras_lambda_on_the_x0_error():
    """EDM's weighting lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2 on the x0 error is
    the plain mean squared error of F."""
    f = FlowMatching(prediction="edm", sigma_data=0.5)
    x0, noise, delta = randn(5, 4, seed=24), randn(5, 4, seed=25), 0.1 * randn(5, 4, seed=26)
    s = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], **F64)
    sigma = s / (1 - s)
    c_skip, c_out = edm_scalings(s[:, None], 0.5)
    x0_hat = x0 + delta
    loss = f.training_losses(lambda x, t, c: (x0_hat - c_skip * x) / c_out, x0, t=s, noise=noise)
    lam = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss, lam * delta.pow(2).mean(1), rtol=1e-10, atol=1e-12)


# ----- the exact velocity of a Gaussian mixture --------------------------------------------------
def test_exact_flow_posterior_of_one_gaussian_is_the_closed_form():
    """x_s ~ N((1 - s) mu, C), C = (1 - s)^2 S + s^2 I: E[x0 | x_s] = mu + (1 - s) S C^-1 (x - m),
    E[eps | x_s] = s C^-1 (x - m), v = E[eps] - E[x0]."""
    mu, S = torch.tensor([2.0, -1.0], **F64), torch.tensor([[0.3, 0.1], [0.1, 0.2]], **F64)
    g = GaussianMixture([1.0], mu[None], S[None])
    x = randn(7, 2, seed=12)
    for s in (0.0, 0.2, 0.6, 0.99, 1.0):
        C = (1 - s) ** 2 * S + s ** 2 * torch.eye(2, **F64)
        r = torch.linalg.solve(C, (x - (1 - s) * mu).T).T
        x0, eps = mu + (1 - s) * r @ S, s * r
        got_x0, got_eps = g.flow_x0_eps(x, s)
        torch.testing.assert_close(got_x0, x0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_eps, eps, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g.velocity(x, s), eps - x0, rtol=1e-10, atol=1e-10)


def test_exact_velocity_of_the_mixture_from_the_score(three_gaussians):
    """Tweedie on the flow path: E[eps | x_s] = -s grad log p_s(x), E[x0 | x_s] = (x - s E[eps]) /
    (1 - s), p_s = sum_k pi_k N((1 - s) mu_k, (1 - s)^2 S_k + s^2 I) (torch.distributions, autograd)."""
    g = three_gaussians
    x = randn(9, 2, seed=13).requires_grad_(True)
    for s in (0.1, 0.5, 0.9):
        comps = [torch.distributions.MultivariateNormal((1 - s) * m, (1 - s) ** 2 * S + s ** 2 * torch.eye(2, **F64))
                 for m, S in zip(g.means, g.covs)]
        logp = torch.logsumexp(torch.stack([c.log_prob(x) + w.log() for c, w in zip(comps, g.weights)]), 0)
        eps = -s * torch.autograd.grad(logp.sum(), x)[0]
        x0 = (x.detach() - s * eps) / (1 - s)
        torch.testing.assert_close(g.velocity(x.detach(), s), eps - x0, rtol=1e-9, atol=1e-9)
    s_rows = torch.tensor([0.1, 0.5, 0.9, 1.0, 0.3, 0.7, 0.2, 0.4, 0.6], **F64)    # per row
    per_row = torch.stack([g.velocity(x.detach()[i:i + 1], s_rows[i].item())[0] for i in range(9)])
    torch.testing.assert_close(g.velocity(x.detach(), s_rows), per_row, rtol=1e-12, atol=1e-12)
    mean = (g.weights[:, None] * g.means).sum(0)
    torch.testing.assert_close(g.velocity(x.detach(), 1.0), x.detach() - mean)      # s = 1: x - E[x0]


@pytest.mark.parametrize("prediction", ["v", "x0", "eps", "edm"])
def test_flow_denoiser_outputs_the_prediction_at_the_network_time(three_gaussians, prediction):
    f = FlowMatching(prediction=prediction, time_scale=1000.0, sigma_data=1.3)
    fn = three_gaussians.flow_denoiser(f)
    x, s = randn(8, 2, seed=14), torch.linspace(0.1, 0.9, 8, **F64)
    torch.testing.assert_close(f.velocity(fn(x, 1000 * s, None), x, s), three_gaussians.velocity(x, s),
                               rtol=1e-9, atol=1e-9)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.testing.assert_close(f.velocity(fn(x, 1000 * s, labels), x, s),
                               three_gaussians.velocity(x, s, component=labels), rtol=1e-9, atol=1e-9)


# ----- user errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"shift": 0}, "diffusion.shift=0 must be a positive number"),
    ({"shift": -1.0}, "diffusion.shift=-1.0 must be a positive number"),
    ({"logit_std": 0}, "diffusion.logit_std=0 must be a positive number"),
    ({"prediction": "score"}, "diffusion.prediction='score' is not allowed; choose one of: v, x0, eps, edm"),
    ({"sigma_data": 0}, "diffusion.sigma_data=0 must be a positive number (EDM's sigma_data, the data's spread)"),
    ({"time_sampling": "mode"}, "diffusion.time_sampling='mode' is not allowed; choose one of: uniform, logit_normal"),
    ({"loss_weighting": "min_snr"}, "diffusion.loss_weighting='min_snr' is not allowed; choose one of: uniform, cosmap, velocity"),
    ({"time_scale": 0}, "diffusion.time_scale=0 must be a positive number"),
])
def test_bad_process_values_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError) as err:
        FlowMatching(**kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
