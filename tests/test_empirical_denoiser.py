"""The exact denoiser of a finite point set (analytic.EmpiricalDistribution)."""

import pytest
import torch

from ddpm_lab.diffusion import FlowMatching, GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.analytic import EmpiricalDistribution, GaussianMixture
from ddpm_lab.diffusion.samplers import sample


@pytest.fixture
def points():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 1, 2, 2, generator=g, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_it_is_the_mixture_of_zero_covariance_gaussians(points, prediction):
    """Equal weights, means at the points, covariances 0: the same posterior, for every output type,
    with and without a class (component = the points of that label)."""
    x_points, labels = points
    empirical = EmpiricalDistribution(x_points, labels)
    flat = x_points.flatten(1)
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=100), prediction=prediction)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 90, 99])
    cond = torch.tensor([0, 1, 2, 0, 1])
    got = empirical.output_fn(diffusion)(x, t, None)
    got_cond = empirical.output_fn(diffusion)(x, t, cond)
    for c, value in ((None, got), (cond, got_cond)):
        if c is None:
            mixture = GaussianMixture(torch.ones(6), flat, torch.zeros(6, 4, 4, dtype=torch.float64))
            expected = mixture.output_fn(diffusion)(x.flatten(1), t, None)
        else:
            expected = torch.stack([   # per row, the mixture of its class's points
                GaussianMixture(torch.ones(2), flat[labels == ci], torch.zeros(2, 4, 4, dtype=torch.float64))
                .output_fn(diffusion)(x[i:i + 1].flatten(1), t[i:i + 1], None)[0] for i, ci in enumerate(c.tolist())])
        torch.testing.assert_close(value.flatten(1), expected, rtol=1e-9, atol=1e-9)


def test_it_reproduces_the_nearest_point_at_low_noise_and_the_mean_at_zero_snr(points):
    x_points, _ = points
    empirical = EmpiricalDistribution(x_points)
    near = x_points[3:4] + 1e-3
    x0, _ = empirical.x0_eps_at(near, torch.tensor([0.9999]))
    torch.testing.assert_close(x0, x_points[3:4], rtol=0, atol=1e-6)
    x0, eps = empirical.x0_eps_at(near, torch.tensor([0.0]))
    torch.testing.assert_close(x0, x_points.mean(0, keepdim=True))
    torch.testing.assert_close(eps, near)


def test_ddim_and_flow_ode_samples_land_on_the_points(points):
    """The exact denoiser's deterministic samplers end on a data point (the empirical
    distribution's samples are its points)."""
    x_points, _ = points
    empirical = EmpiricalDistribution(x_points)
    ddpm = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    flow = FlowMatching()
    for fn, process, sampler in ((empirical.output_fn(ddpm), ddpm, "ddim"),
                                 (empirical.flow_denoiser(flow), flow, "flow_euler")):
        x = sample(fn, (8, 1, 2, 2), process, sampler=sampler, steps=100, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(2))
        nearest = torch.cdist(x.flatten(1), x_points.flatten(1)).min(1).values
        assert nearest.max() < 1e-2, nearest


def test_a_class_needs_labels(points):
    with pytest.raises(ValueError, match="labels"):
        EmpiricalDistribution(points[0]).x0_eps_at(points[0], torch.full((6,), 0.5), component=1)
