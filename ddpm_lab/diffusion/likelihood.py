"""The variational bound on -log p(x_0) of a DDPM, in bits per dimension (Ho et al. 2020, Sec. 3.3,
Eq. 5 and 13; Nichol & Dhariwal 2021, Sec. 2 and 3).

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0                                               (Eq. 5)
    L_T     = KL(q(x_T | x_0) || N(0, I))                      the prior term
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),   x_t ~ q(x_t | x_0)
    L_0     = -log p(x_0 | x_1)                                the discretised decoder (Eq. 13)

The model's p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), sigma_t^2 I): its mean is the posterior mean
(Eq. 7) at the x0_hat of its output (eps, x0 or v; for eps this is Eq. 11), its variance fixed,
one of the paper's two choices (Sec. 3.2): sigma_t^2 = beta_t ("fixed_large") or beta~_t
("fixed_small"). The decoder's sigma_1^2 is beta~_2 for both (beta~_1 = 0), as in the DDPM and
improved-DDPM code. Data must lie on the 256-level grid of [-1, 1] (`quantise`): the decoder
gives each 8-bit value the mass of its bin, so the bound is on -log P of the 8-bit image.

Timesteps are 0-based: term index i is the paper's t = i + 1, i.e. index 0 is L_0 and index
i >= 1 is L_i = KL(q(x_i | x_{i+1}, x_0) || p(x_i | x_{i+1})) in the paper's numbering. All terms
are in nats per image (summed over dimensions), computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm_lab.diffusion.process import GaussianDiffusion, gather
from ddpm_lab.diffusion.samplers.steps import VARIANCES
from ddpm_lab.errors import UserError, choice_error

Tensor = torch.Tensor
ModelFn = Callable[[Tensor, Tensor, object], Tensor]
BINS = 256
T_SAMPLINGS = ("importance", "uniform")     # how monte_carlo draws t


def quantise(x: Tensor, bins: int = BINS) -> Tensor:
    """x in [-1, 1] rounded to the nearest of `bins` evenly spaced levels -1, ..., 1 (8-bit data)."""
    levels = ((x.clamp(-1, 1) + 1) / 2 * (bins - 1)).round()
    return levels / (bins - 1) * 2 - 1


def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element:
    0.5 (log var2 - log var1 + var1 / var2 + (mean1 - mean2)^2 / var2 - 1)."""
    return 0.5 * (var2.log() - var1.log() + var1 / var2 + (mean1 - mean2) ** 2 / var2 - 1.0)


def log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, accurate in both tails: on the right (a > 0) by symmetry as
    log(Phi(-a) - Phi(-b)); then log Phi(hi) + log(1 - Phi(lo) / Phi(hi))."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1.0))


def discretised_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor | float,
                                        bins: int = BINS) -> Tensor:
    """log P(x) per element for x on the `bins`-level grid of [-1, 1] under N(mean, std^2)
    integrated over x's bin [x - 1/(bins-1), x + 1/(bins-1)]; the edge bins are open:
    (-inf, -1 + 1/(bins-1)] and [1 - 1/(bins-1), inf) (DDPM Eq. 13)."""
    half = 1.0 / (bins - 1)
    x, mean = x.double(), mean.double()
    std = torch.as_tensor(std, dtype=torch.float64, device=x.device)
    upper = torch.where(x > 1 - half, torch.full_like(x, math.inf), (x + half - mean) / std)
    lower = torch.where(x < -1 + half, torch.full_like(x, -math.inf), (x - half - mean) / std)
    return log_ndtr_diff(lower, upper)


class VariationalBound:
    """The terms of L (Eq. 5) for a model of a `GaussianDiffusion`, per image, in nats."""

    def __init__(self, diffusion: GaussianDiffusion, variance: str = "fixed_large", clip_x0: bool = True):
        if variance not in VARIANCES:
            raise choice_error("nll.variance", variance, VARIANCES)
        if float(diffusion.alphas_cumprod[-1]) == 0.0:
            raise UserError("nll: a zero-terminal-SNR schedule has q(x_T | x_0) = N(0, I) but no likelihood "
                            "bound at t = T (beta_T = 1); evaluate bits/dim on a schedule with abar_T > 0")
        self.diffusion, self.variance, self.clip_x0 = diffusion, variance, clip_x0
        d = diffusion
        large = torch.cat([d.posterior_variance[1:2], d.betas[1:]])            # beta_t, beta~_2 at t=1
        small = torch.cat([d.posterior_variance[1:2], d.posterior_variance[1:]])   # beta~_t, beta~_2 at t=1
        self.model_variance = large if variance == "fixed_large" else small

    @property
    def num_steps(self) -> int:
        return self.diffusion.num_steps

    def prior_kl(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)), per image."""
        x0 = x0.double()
        t = torch.full((len(x0),), self.num_steps - 1, dtype=torch.long, device=x0.device)
        mean, var = self.diffusion.q_mean_variance(x0, t)
        return normal_kl(mean, var, torch.zeros_like(mean), torch.ones_like(var)).flatten(1).sum(1)

    def model_mean(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """mu_theta(x_t, t) = mu~_t(x_t, x0_hat) (Eq. 7) with x0_hat from the model's output
        (clipped to [-1, 1] when `clip_x0`)."""
        x0_hat, _ = self.diffusion.predict_x0_eps(output.double(), x_t, t)
        if self.clip_x0:
            x0_hat = x0_hat.clamp(-1, 1)
        return self.diffusion.q_posterior(x0_hat, x_t, t)[0]

    def terms(self, model_fn: ModelFn, x0: Tensor, t: Tensor, noise: Tensor, cond=None) -> Tensor:
        """The term of index t[i] for image x0[i] (L_0 where t = 0, else the KL L_t), x_t drawn
        from q(x_t | x_0) with `noise`; one network call per row. Per image, in nats."""
        x0 = x0.double()
        x_t = self.diffusion.q_sample(x0, t, noise.double())
        output = model_fn(x_t.to(noise.dtype), t, cond)
        mean = self.model_mean(output, x_t, t)
        var = gather(self.model_variance, t, x0)
        true_mean, true_var = self.diffusion.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, true_var.clamp(min=1e-300), mean, var.expand_as(mean)).flatten(1).sum(1)
        decoder = -discretised_gaussian_log_likelihood(x0, mean, var.sqrt()).flatten(1).sum(1)
        return torch.where(t == 0, decoder, kl)


def bits_per_dim(nats: Tensor | float, dims: int) -> Tensor | float:
    """Nats per image to bits per dimension: / (D ln 2)."""
    return nats / (dims * math.log(2))


def full_sum(bound: VariationalBound, model_fn: ModelFn, x0: Tensor, generator: torch.Generator,
             batch_size: int = 256, cond=None) -> dict[str, Tensor]:
    """Every term t = 0..T-1 of every image (one x_t draw each): {"terms" (N, T), "prior" (N,),
    "total" (N,) = prior + the sum}, in nats. N T network calls."""
    n, steps = len(x0), bound.num_steps
    image = torch.arange(n).repeat_interleave(steps)
    t = torch.arange(steps).repeat(n)
    terms = rows_of_terms(bound, model_fn, x0, image, t, generator, batch_size, cond).reshape(n, steps)
    prior = bound.prior_kl(x0).cpu()
    return {"terms": terms, "prior": prior, "total": prior + terms.sum(1)}


def monte_carlo(bound: VariationalBound, model_fn: ModelFn, x0: Tensor, draws: int,
                generator: torch.Generator, batch_size: int = 256, cond=None,
                t_sampling: str = "importance") -> dict[str, Tensor]:
    """An unbiased Monte-Carlo estimate of L with `draws` (t, x_t) per image, in nats:
    - "uniform":    L ~ L_T + T E_t[L_t], t ~ Uniform{0..T-1} (the decoder is one of the T terms);
    - "importance": L ~ L_T + E[L_0] + E_{t~q}[L_t / q(t)], stratified: a quarter of the draws
      (at least 2) on the decoder L_0, the rest on t in 1..T-1 drawn from
      q(t) = 1/2 (1/t) / sum_{s=1}^{T-1} (1/s) + 1/2 1/(T-1): the terms fall steeply with t and
      uniform draws rarely see the large ones at small t; the uniform half bounds every weight
      1/q(t) by 2 (T - 1). A far smaller standard error for the same draws.
    Returns {"t" (N, K), "terms" (N, K), "prior", "decoder" (None for "uniform"), "total", "se"
    (N,)}, `se` the standard error of each image's total (per stratum: the std of its per-draw
    estimates / sqrt(its draws)). N K network calls."""
    if t_sampling not in T_SAMPLINGS:
        raise choice_error("nll.t_sampling", t_sampling, T_SAMPLINGS)
    if draws < 4:
        raise UserError(f"nll.draws={draws} must be >= 4 (a standard error needs two draws per stratum)")
    n, steps = len(x0), bound.num_steps
    if steps < 2:
        raise UserError("nll: a one-step schedule has only the decoder term; use nll.exact=true")
    if t_sampling == "uniform":
        t = torch.randint(0, steps, (n, draws), generator=generator)
        weight = torch.full((n, draws), float(steps), dtype=torch.float64)
    else:
        on_decoder = max(2, draws // 4)
        inverse_t = 1.0 / torch.arange(1, steps, dtype=torch.float64)
        q = 0.5 * inverse_t / inverse_t.sum() + 0.5 / (steps - 1)
        rest = 1 + torch.multinomial(q, n * (draws - on_decoder), replacement=True, generator=generator)
        t = torch.cat([torch.zeros(n, on_decoder, dtype=torch.long), rest.reshape(n, -1)], dim=1)
        weight = torch.cat([torch.ones(n, on_decoder, dtype=torch.float64), 1.0 / q[t[:, on_decoder:] - 1]], dim=1)
    image = torch.arange(n).repeat_interleave(draws)
    terms = rows_of_terms(bound, model_fn, x0, image, t.reshape(-1), generator, batch_size, cond).reshape(n, draws)
    estimates = terms * weight          # each draw's estimate of its stratum's sum over t
    strata = [slice(None)] if t_sampling == "uniform" else [slice(0, on_decoder), slice(on_decoder, None)]
    prior = bound.prior_kl(x0).cpu()
    total = prior + sum(estimates[:, s].mean(1) for s in strata)
    se = sum(estimates[:, s].var(1) / estimates[:, s].shape[1] for s in strata).sqrt()
    decoder = None if t_sampling == "uniform" else terms[:, strata[0]].mean(1)
    return {"t": t, "terms": terms, "prior": prior, "decoder": decoder, "total": total, "se": se}


def rows_of_terms(bound: VariationalBound, model_fn: ModelFn, x0: Tensor, image: Tensor, t: Tensor,
                  generator: torch.Generator, batch_size: int, cond=None) -> Tensor:
    """`bound.terms` of the rows (image[j], t[j]) in batches, noise drawn on the CPU `generator`."""
    out = []
    for start in range(0, len(image), batch_size):
        rows = image[start:start + batch_size]
        x = x0[rows.to(x0.device)]
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        c = None if cond is None else cond[rows.to(cond.device)]
        out.append(bound.terms(model_fn, x, t[start:start + batch_size].to(x.device), noise, c).cpu())
    return torch.cat(out)
