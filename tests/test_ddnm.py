"""Linear operators and DDNM / DDNM+ (ddpm_lab/diffusion/operators.py, ddnm.py) with exact
denoisers of an image-shaped Gaussian mixture; DDIM and flow ODE inversion round trips."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lab.diffusion import FlowMatching, GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.analytic import GaussianMixture
from ddpm_lab.diffusion.ddnm import ddnm, ddnm_step, noise_aware_scale
from ddpm_lab.diffusion.operators import AveragePool, Identity, Masked
from ddpm_lab.diffusion.samplers import ddim_invert, ddim_step, flow_invert, sample
from ddpm_lab.errors import UserError

SHAPE = (1, 8, 8)


def image_mixture(size: int = 8) -> GaussianMixture:
    """Three classes of size x size images (a vertical bar, a horizontal bar, a ring) with
    correlated pixel noise: a mixture whose exact denoisers are known."""
    gen = torch.Generator().manual_seed(0)
    means = torch.full((3, *SHAPE), -0.8)
    means[0, :, :, 3:5] = 0.8
    means[1, :, 3:5, :] = 0.8
    means[2, :, 1:7, 1:7] = 0.8
    means[2, :, 3:5, 3:5] = -0.8
    means = torch.nn.functional.interpolate(means, size=(size, size), mode="area")
    dim = size * size
    u = torch.randn(3, dim, 4, generator=gen, dtype=torch.float64) * 0.15
    covs = 0.01 * torch.eye(dim, dtype=torch.float64) + u @ u.transpose(1, 2)
    return GaussianMixture([1 / 3] * 3, means.flatten(1).double(), covs)


def as_images(fn):
    """A points model_fn(x (N, D), t, cond) as one on images (N, 1, 8, 8)."""
    return lambda x, t, cond=None: fn(x.flatten(1), t, cond).reshape(x.shape)


@pytest.fixture(scope="module")
def mixture():
    gmm = image_mixture()
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))
    x0, labels = gmm.sample(8, torch.Generator().manual_seed(1))
    return gmm, diffusion, x0.reshape(-1, *SHAPE), labels


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / ((x - ref) ** 2).mean().item())


# ----- operators ---------------------------------------------------------------------------------
@pytest.mark.parametrize("operator", [Identity(), AveragePool(2), AveragePool(4),
                                      Masked(torch.rand(8, 8, generator=torch.Generator().manual_seed(2)) < 0.4)],
                         ids=["identity", "pool2", "pool4", "mask"])
def test_pseudo_inverse_and_projections(operator):
    gen = torch.Generator().manual_seed(3)
    x, z = torch.randn(2, 5, 2, 8, 8, generator=gen, dtype=torch.float64)
    y = operator.A(x)
    assert torch.allclose(operator.A(operator.pinv(y)), y, atol=1e-12)             # A A^+ = I
    p = operator.range_part
    assert torch.allclose(p(p(x)), p(x), atol=1e-12)                                # idempotent
    assert math.isclose((p(x) * z).sum().item(), (x * p(z)).sum().item(), rel_tol=1e-9)   # symmetric
    assert operator.A(operator.null_part(x)).abs().max() < 1e-12                   # A (I - A^+ A) = 0
    assert torch.allclose(operator.A(operator.consistent(z, y)), y, atol=1e-12)
    # white noise n on y reaches the image as A^+ n, in the range only, with variance 1 / s^2 along
    # each of its y.numel() directions (s: the singular value)
    n = torch.randn(operator.A(torch.zeros(100, 2, 8, 8)).shape, generator=gen, dtype=torch.float64)
    noise = operator.pinv(n)
    assert torch.allclose(p(noise), noise, atol=1e-12)
    assert math.isclose(noise.pow(2).sum().item() * operator.singular_value ** 2 / n.numel(), 1.0, rel_tol=0.15)


def test_average_pool_pinv_is_the_moore_penrose_inverse():
    op = AveragePool(2)
    eye = torch.eye(16, dtype=torch.float64).reshape(16, 1, 4, 4)
    a = op.A(eye).flatten(1).T                                   # (4, 16)
    a_pinv = op.pinv(torch.eye(4, dtype=torch.float64).reshape(4, 1, 2, 2)).flatten(1).T
    assert torch.allclose(a_pinv, torch.linalg.pinv(a), atol=1e-12)


def test_operator_errors():
    with pytest.raises(UserError, match="does not divide the image size 16x12"):
        AveragePool(8).A(torch.zeros(1, 1, 16, 12))
    with pytest.raises(UserError, match="mask: a \\(8, 8\\) mask for images of size \\(16, 16\\)"):
        Masked(torch.ones(8, 8, dtype=torch.bool)).A(torch.zeros(1, 1, 16, 16))


# ----- the DDNM step -------------------------------------------------------------------------------
def test_consistent_x0_gives_the_plain_ddim_step(mixture):
    """An estimate already consistent (A x0|t = y) is kept: at eta = 0 the DDNM step is the DDIM step."""
    gmm, diffusion, x0, _ = mixture
    op = AveragePool(2)
    x_t = diffusion.q_sample(x0, torch.full((8,), 600), torch.randn_like(x0))
    eps = as_images(gmm.eps_fn(diffusion))(x_t, torch.full((8,), 600))
    x0_t = diffusion.x0_from_eps(x_t, 600, eps)
    x_prev, x0_hat = ddnm_step(op, op.A(x0_t), x0_t, eps, float(diffusion.alphas_cumprod[400]), None, eta=0.0)
    assert torch.allclose(x0_hat, x0_t, atol=1e-12)
    assert torch.allclose(x_prev, ddim_step(diffusion, eps, x_t, 600, 400, None, 0.0), atol=1e-12)
    # eta = 1: x_{t-1} is x^0|t noised afresh to abar_{t-1}, q(x_{t-1} | x^0|t)
    z = torch.randn_like(x0)
    x_prev, x0_hat = ddnm_step(op, op.A(x0), x0_t, eps, float(diffusion.alphas_cumprod[400]), z, eta=1.0)
    assert torch.allclose(x_prev, diffusion.q_sample(x0_hat, torch.full((8,), 400), z), atol=1e-12)


def test_noise_aware_scale():
    assert noise_aware_scale(0.5, 0.3, 0.0) == (1.0, 0.09)                        # noiseless: DDNM
    lam, phi = noise_aware_scale(0.5, 0.3, 0.4)                                    # 0.2 <= 0.3: full correction
    assert lam == 1.0 and math.isclose(phi, 0.09 - 0.04)
    lam, phi = noise_aware_scale(0.9, 0.3, 1.0, singular_value=0.5)               # carried 1.8 > 0.3
    assert math.isclose(lam, 0.3 / 1.8) and phi == 0.0
    assert noise_aware_scale(1.0, 0.0, 0.1) == (0.0, 0.0)                          # last step: the model's x0


@pytest.mark.parametrize("operator", [AveragePool(4), Masked(torch.arange(64).reshape(8, 8) < 32)], ids=["pool4", "mask"])
@pytest.mark.parametrize("process", ["ddpm", "flow"])
def test_ddnm_output_is_consistent(mixture, operator, process):
    """|A x - y| <= 1e-5 in float32, whatever the model does in the null space."""
    gmm, diffusion, x0, _ = mixture
    if process == "flow":
        diffusion, model = FlowMatching(), as_images(gmm.flow_denoiser(FlowMatching()))
    else:
        model = as_images(gmm.eps_fn(diffusion))
    y = operator.A(x0).float()
    x = ddnm(lambda x, t, c: model(x.double(), t, c).float(), y, operator, x0.shape, diffusion, steps=10,
             generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32
    assert (operator.A(x) - y).abs().max() <= 1e-5


def test_ddnm_restores_from_the_measurement(mixture):
    """With the exact prior, x2 super-resolution recovers the image (and its class) far better than
    A^+ y, and DDNM+ denoising at sigma = 1 beats the noisy input; identity A without noise is y."""
    gmm, diffusion, x0, labels = mixture
    model = as_images(gmm.eps_fn(diffusion))
    gen = torch.Generator().manual_seed(0)
    op = AveragePool(2)
    x = ddnm(model, op.A(x0), op, x0.shape, diffusion, steps=100, generator=gen, dtype=torch.float64)
    assert psnr(x, x0) > psnr(op.pinv(op.A(x0)), x0) + 6
    assert (gmm.classify(x.flatten(1)) == labels).float().mean() >= 0.85
    y = x0 + torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    x = ddnm(model, y, Identity(), x0.shape, diffusion, steps=50, sigma_y=1.0, generator=gen, dtype=torch.float64)
    assert psnr(x, x0) > psnr(y, x0) + 6
    x = ddnm(model, x0, Identity(), x0.shape, diffusion, steps=5, generator=gen, dtype=torch.float64)
    assert torch.allclose(x, x0, atol=1e-12)


def test_ddnm_option_errors(mixture):
    gmm, diffusion, x0, _ = mixture
    for kwargs, message in (({"eta": 1.5}, "eta=1.5 must be a number in [0, 1]"),
                            ({"sigma_y": -0.1}, "sigma=-0.1 must be a number >= 0"),
                            ({"sigma_y": 0.5, "eta": 0.0}, "eta=0 with sigma=0.5")):
        with pytest.raises(UserError, match=message.replace("[", "\\[").replace("]", "\\]")):
            ddnm(gmm.eps_fn(diffusion), x0, Identity(), x0.shape, diffusion, steps=2, **kwargs)


# ----- inversion round trips ---------------------------------------------------------------------
def test_inversion_round_trip_returns_the_image(mixture):
    """Inversion under the image's class, then generation under the same class: PSNR >= 25 dB at 50
    steps and higher at 200, for DDIM inversion (DDPM) and the flow ODE's (flow matching); on 4x4
    images, where the exact denoisers are cheap."""
    _, diffusion, _, _ = mixture
    gmm = image_mixture(4)
    x0, labels = gmm.sample(8, torch.Generator().manual_seed(1))
    x0 = x0.reshape(-1, 1, 4, 4)
    flow = FlowMatching()
    cases = {"ddpm": (as_images(gmm.eps_fn(diffusion)), diffusion, ddim_invert, "ddim"),
             "flow": (as_images(gmm.flow_denoiser(flow)), flow, flow_invert, "flow_euler")}
    for name, (model, process, invert, sampler) in cases.items():
        figures = []
        for steps in (50, 200):
            noise = invert(model, x0, process, steps, cond=labels)
            back = sample(model, x0.shape, process, sampler=sampler, steps=steps, x_T=noise, cond=labels,
                          dtype=torch.float64)
            figures.append(psnr(back, x0))
        assert figures[0] >= 25 and figures[1] > figures[0] + 3, (name, figures)


def test_flow_invert_needs_a_flow_process(mixture):
    gmm, diffusion, x0, _ = mixture
    with pytest.raises(UserError, match="flow_invert needs a flow-matching process"):
        flow_invert(gmm.eps_fn(diffusion), x0, diffusion)
