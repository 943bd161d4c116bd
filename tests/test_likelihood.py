"""The variational bound in bits/dim (ddpm_lab/diffusion/likelihood.py, ddpm-eval metrics=[nll]):
its parts against torch.distributions and the 256-bin decoder's normalisation, every term >= 0,
the Monte-Carlo estimate against the full sum over t, and the bound above the true -log P of
quantised Gaussian-mixture data under the exact denoiser."""

import json
import math
import re

import pytest
import torch

from ddpm_lab.diffusion import GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.analytic import GaussianMixture
from ddpm_lab.diffusion.likelihood import (
    VariationalBound,
    bits_per_dim,
    discretised_gaussian_log_likelihood,
    full_sum,
    monte_carlo,
    normal_kl,
    quantise,
    rows_of_terms,
)
from ddpm_lab.errors import UserError
from ddpm_lab.evaluate import evaluate
from ddpm_lab.modules import DiffusionModule
from ddpm_lab.tasks.nll import image_bits_per_dim
from tests.helpers import compose_app

GRID = torch.linspace(-1, 1, 256, dtype=torch.float64)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    v1, v2 = (torch.rand(2, 1000, generator=g, dtype=torch.float64) * 3 + 1e-3)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()),
                                                 torch.distributions.Normal(m2, v2.sqrt()))
    assert torch.allclose(normal_kl(m1, v1, m2, v2), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("std", [1e-4, 3e-3, 0.05, 0.7, 4.0])
def test_discretised_decoder_sums_to_one_over_the_256_bins(std):
    """Every mean, on the grid, between bins, at the edges and far outside [-1, 1]."""
    for mean in (-9.0, -1.0, -0.5, -1 / 255, 0.0, 0.3, 1 - 1e-3, 1.0, 2.5):
        logp = discretised_gaussian_log_likelihood(GRID, torch.full_like(GRID, mean), std)
        assert torch.isfinite(logp).all() and (logp <= 0).all()
        assert abs(logp.exp().sum().item() - 1) < 1e-9, (mean, std)
    # the edge bins are open: a mean far outside puts all the mass on the edge value
    below = discretised_gaussian_log_likelihood(GRID[:1], torch.tensor([-9.0], dtype=torch.float64), 0.05)
    assert abs(below.item()) < 1e-12


def test_quantise_puts_data_on_the_8_bit_grid():
    x = torch.rand(500, dtype=torch.float64) * 2.2 - 1.1
    q = quantise(x)
    levels = (q + 1) / 2 * 255
    assert torch.allclose(levels, levels.round(), atol=1e-9) and q.min() >= -1 and q.max() <= 1
    assert (q - x.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-12


@pytest.fixture
def mixture():
    """Two compact Gaussians inside [-1, 1]^2 and 300 points drawn from them, quantised."""
    gmm = GaussianMixture([0.5, 0.5], [[-0.5, -0.3], [0.4, 0.5]],
                          [[[0.02, 0.005], [0.005, 0.01]], [[0.015, 0.0], [0.0, 0.02]]])
    x, _ = gmm.sample(300, torch.Generator().manual_seed(0))
    return gmm, quantise(x)


@pytest.mark.parametrize("variance, t_sampling", [("fixed_large", "importance"), ("fixed_small", "uniform")])
def test_bound_terms_nonnegative_and_monte_carlo_within_two_standard_errors(mixture, variance, t_sampling):
    """Exact denoiser of the mixture, cosine schedule with T = 50 (the full sum is cheap)."""
    gmm, x = mixture
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("cosine", num_steps=50), prediction="eps")
    bound = VariationalBound(diffusion, variance, clip_x0=False)
    model = gmm.output_fn(diffusion)
    # the full sum over t, its x_t noise averaged over 4 draws
    runs = [full_sum(bound, model, x, torch.Generator().manual_seed(seed), batch_size=4096) for seed in range(4)]
    assert all((r["terms"] >= 0).all() and (r["prior"] >= 0).all() for r in runs)   # KLs, and -log P of a bin
    exact = {"total": torch.stack([r["total"] for r in runs]).mean(0)}
    mc = monte_carlo(bound, model, x, 32, torch.Generator().manual_seed(9), batch_size=4096, t_sampling=t_sampling)
    se = mc["se"].pow(2).sum().sqrt() / len(x)
    assert abs(mc["total"].mean() - exact["total"].mean()) < 2 * se
    assert se < 0.1 * exact["total"].mean()          # a real test: the error bar is not huge
    # the bound lies above -log P(x) of the 8-bit data (density times the bin area, 2/255 a side)
    true_nll = -(gmm.log_prob(x) + 2 * math.log(2 / 255))
    assert exact["total"].mean() > true_nll.mean()
    assert bits_per_dim(exact["total"].mean() - true_nll.mean(), 2) < 1.0


def test_bound_on_a_trained_checkpoint(tiny_checkpoint):
    """The tiny digits model: its terms at every 50th t of its own T = 1000 are >= 0; and on a
    50-step schedule (any network gives a valid bound) every term is >= 0 and the Monte-Carlo
    bits/dim lies within 2 standard errors of the full sum over all t, on the same images."""
    module = DiffusionModule.load(tiny_checkpoint)
    x = quantise(digits(2))
    own = VariationalBound(module.diffusion)
    t = torch.arange(0, module.diffusion.num_steps, 50)
    terms = rows_of_terms(own, module.net, x, torch.zeros(len(t), dtype=torch.long), t,
                          torch.Generator().manual_seed(0), batch_size=500)
    assert (terms >= 0).all() and terms[0] > 0               # terms[0]: the decoder, -log P > 0
    short = VariationalBound(GaussianDiffusion(NoiseSchedule.from_name("cosine", num_steps=50)))
    exact = full_sum(short, module.net, x, torch.Generator().manual_seed(0), batch_size=500)
    assert exact["terms"].shape == (2, 50) and (exact["terms"] >= 0).all()
    for t_sampling in ("uniform", "importance"):
        mc = monte_carlo(short, module.net, x, 32, torch.Generator().manual_seed(1), batch_size=500,
                         t_sampling=t_sampling)
        se = mc["se"].pow(2).sum().sqrt() / len(x)
        assert abs(mc["total"].mean() - exact["total"].mean()) < 2 * se, t_sampling
        assert mc["decoder"] is None if t_sampling == "uniform" else (mc["decoder"] > 0).all()


def digits(n: int) -> torch.Tensor:
    from ddpm_lab.data.digits import load_digits_tensors
    return load_digits_tensors(16)[0][:n]


def test_eval_nll_reports_both_splits(tiny_checkpoint, tmp_path):
    cfg = compose_app("eval", [f"ckpt_path={tiny_checkpoint}", "metrics=[nll]", "nll.num_images=4",
                               "nll.draws=4"], tmp_path)
    result = evaluate(cfg)
    nll = json.loads((tmp_path / "metrics.json").read_text())["nll"]
    for split in ("held_out", "train"):
        r = nll[split]
        assert r["num_images"] == 4 and r["draws"] == 4 and r["calls_per_image"] == 4 and r["levels"] == 256
        assert r["bpd"] > 0 and r["se"] > 0 and 0 <= r["prior"] < 0.01 and r["decoder"] > 0
    assert nll["gap"] == pytest.approx(nll["held_out"]["bpd"] - nll["train"]["bpd"])
    assert result["model"]["bpd"] == nll["held_out"]["bpd"]
    assert not (tmp_path / "samples.png").exists()         # nothing sampled


def test_exact_option_uses_every_timestep(tiny_checkpoint):
    module = DiffusionModule.load(tiny_checkpoint)
    module.diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=20))   # 20 calls, not 1000
    r = image_bits_per_dim(module, digits(2), exact=True, batch_size=500)
    assert r["exact"] and r["draws"] == 20 and r["se"] is None and r["calls_per_image"] == 20
    assert r["bpd"] > r["decoder"] > 0 and r["image_se"] > 0
    # variance None is the checkpoint's sampler variance: the bound of the process it samples with
    assert r["variance"] == module.sampler.variance
    large = image_bits_per_dim(module, digits(2), exact=True, variance="fixed_large", batch_size=500)
    small = image_bits_per_dim(module, digits(2), exact=True, variance="fixed_small", batch_size=500)
    assert large["bpd"] != small["bpd"] and r["bpd"] == (small if r["variance"] == "fixed_small" else large)["bpd"]


@pytest.mark.parametrize("args, message", [
    (["nll.draws=3"], "nll.draws=3 must be an integer >= 4"),
    (["nll.variance=learned"], "nll.variance='learned' is not allowed; choose one of: fixed_small, fixed_large"),
    (["nll.exact=maybe"], "nll.exact='maybe' must be true or false"),
    (["nll.num_images=0"], "nll.num_images=0 must be an integer >= 1"),
    (["nll.t_sampling=stratified"], "nll.t_sampling='stratified' is not allowed; choose one of: importance, uniform"),
    (["metrics=[nll,bpd]"], "metrics='bpd' is not allowed; choose one of: fd, kid, accuracy, nll, classify"),
])
def test_bad_nll_options_are_one_line(tiny_checkpoint, tmp_path, args, message):
    cfg = compose_app("eval", [f"ckpt_path={tiny_checkpoint}", "metrics=[nll]", *args], tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate(cfg)
    assert not (tmp_path / "metrics.json").exists()


def test_a_flow_model_has_no_bound_here_but_classifies(tmp_path):
    """Flow matching: `nll` is one line (no ODE likelihood); the diffusion classifier runs on it
    (s uniform in [0, 1), eps-space errors through the flow's conversions)."""
    from hydra.utils import instantiate

    from ddpm_lab.build import build_module
    from ddpm_lab.tasks.classify import classify
    from ddpm_lab.tasks.nll import check_nll_model
    from tests.helpers import TINY_RUN, compose_train

    cfg = compose_train([*TINY_RUN, "diffusion=flow", "sampler=flow_euler", "guidance=classifier_free"], tmp_path)
    module = build_module(cfg, instantiate(cfg.data)).eval()
    with pytest.raises(UserError, match=re.escape("metrics: 'nll' needs a DDPM checkpoint; this one is flow matching")):
        check_nll_model(module)
    result = classify(module, digits(2), draws=2)
    assert result["errors"].shape == (2, 10, 2) and torch.isfinite(result["errors"]).all()
