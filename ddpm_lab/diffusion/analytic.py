"""Exact denoisers for Gaussian-mixture data and for a finite data set, to test samplers and
tasks without a network.

If x_0 ~ sum_k pi_k N(mu_k, S_k), then q(x_t) = sum_k pi_k N(sqrt(abar_t) mu_k,
abar_t S_k + (1 - abar_t) I), and the optimal eps prediction is
eps*(x_t, t) = -sqrt(1 - abar_t) * grad log q(x_t) (Tweedie; Song et al. 2021, Eq. 4 of DDIM's
score view). Conditioning on a component k (a "class") keeps only that component.
On the flow-matching path x_s = (1 - s) x_0 + s eps the same posterior means hold at
abar(s) = (1 - s)^2 / ((1 - s)^2 + s^2) for x_t = x_s / sqrt((1 - s)^2 + s^2) (flow.py).

A finite set of points x^(k) is the mixture's limit of zero covariances: its exact denoiser, the
posterior mean E[x_0 | x_t] = sum_k w_k x^(k) with w = softmax_k(-|x_t - sqrt(abar_t) x^(k)|^2 /
(2 (1 - abar_t))), is the best any network trained on that set can do (the "ideal denoiser" of
Karras et al. 2022, EDM, appendix B; it reproduces training points, so it bounds what a task can get from the
data's distribution alone).
"""

from __future__ import annotations

import math

import torch

from ddpm_lab.diffusion.flow import FlowMatching, abar_of_s, ddpm_x_scale
from ddpm_lab.diffusion.process import GaussianDiffusion, gather

Tensor = torch.Tensor


class ExactDenoiser:
    """The predictions of an exact posterior `x0_eps_at(x, abar, component)` as DDPM and flow
    `model_fn`s (subclasses give `x0_eps_at`)."""

    def x0_eps_at(self, x: Tensor, abar: Tensor, component=None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def eps(self, x: Tensor, t: Tensor, diffusion: GaussianDiffusion, component=None) -> Tensor:
        """The exact eps*(x_t, t) (conditional on `component` when given: int or (N,) labels)."""
        return self.x0_eps_at(x, self._abar(diffusion, t, x), component)[1]

    def x0(self, x: Tensor, t: Tensor, diffusion: GaussianDiffusion, component=None) -> Tensor:
        """The exact E[x_0 | x_t] at timestep t (`x0_eps_at`)."""
        return self.x0_eps_at(x, self._abar(diffusion, t, x), component)[0]

    @staticmethod
    def _abar(diffusion: GaussianDiffusion, t: Tensor, x: Tensor) -> Tensor:
        return gather(diffusion.alphas_cumprod, t, x).reshape(-1).expand(x.shape[0])

    def eps_fn(self, diffusion: GaussianDiffusion):
        """A `model_fn(x_t, t, cond)`: cond None is the mixture, else the component labels."""
        return lambda x, t, cond: self.eps(x, t, diffusion, component=cond)

    def output_fn(self, diffusion: GaussianDiffusion):
        """The exact network output in `diffusion.prediction` (eps, x0 or v = (sqrt(abar) x_t - x0)
        / sqrt(1 - abar)), computed from E[x_0 | x_t] so that it is finite at abar_T = 0."""
        def fn(x: Tensor, t: Tensor, cond=None) -> Tensor:
            if diffusion.prediction == "eps":
                return self.eps(x, t, diffusion, component=cond)
            x0 = self.x0(x, t, diffusion, component=cond)
            if diffusion.prediction == "x0":
                return x0
            abar = gather(diffusion.alphas_cumprod, t, x)
            return (abar.sqrt() * x - x0) / (1 - abar).sqrt()
        return fn

    # ----- flow matching: x_s = (1 - s) x_0 + s eps, through the DDPM map (flow.py) -------------
    def flow_x0_eps(self, x: Tensor, s: Tensor | float, component=None) -> tuple[Tensor, Tensor]:
        """The exact E[x_0 | x_s] and E[eps | x_s] on the flow path at s (a float or (N,)): the
        DDPM ones at abar(s) of x_t = ddpm_x_scale(s) x_s, since both states share (x_0, eps)."""
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        abar = abar_of_s(s)
        x_t = ddpm_x_scale(s).reshape(-1, *[1] * (x.ndim - 1)) * x
        return self.x0_eps_at(x_t, abar, component)

    def velocity(self, x: Tensor, s: Tensor | float, component=None) -> Tensor:
        """The exact flow velocity E[eps - x_0 | x_s] (the minimiser of the v loss)."""
        x0, eps = self.flow_x0_eps(x, s, component)
        return eps - x0

    def flow_denoiser(self, flow: FlowMatching):
        """A `model_fn(x_s, time_input, cond)` with the network's time input (time_scale * s) that
        outputs the exact prediction of `flow.prediction` (v, x0, eps or edm); cond None is the mixture,
        else the component labels."""
        def fn(x: Tensor, time_input: Tensor, cond=None) -> Tensor:
            s = time_input / flow.time_scale
            x0, eps = self.flow_x0_eps(x, s, component=cond)
            return flow.training_target(x0, eps, torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(-1)
                                        .expand(x.shape[0]))
        return fn


class GaussianMixture(ExactDenoiser):
    """A mixture of full-covariance Gaussians in D dimensions (float64)."""

    def __init__(self, weights, means, covs):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n points and their component labels."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)[k]
        z = torch.randn(n, self.dim, 1, dtype=torch.float64, generator=generator)
        return self.means[k] + (chol @ z).squeeze(-1), k

    def marginal_terms(self, x: Tensor, abar: Tensor, component=None) -> tuple[Tensor, Tensor]:
        """For q_t = sum_k pi_k N(m_k, C_k) with m_k = sqrt(abar) mu_k, C_k = abar S_k + (1 - abar) I:
        log(pi_k N(x; m_k, C_k)) as (N, K) and C_k^{-1} (x - m_k) as (N, K, D), per-row abar.
        `component` (int or (N,) labels) keeps only that component."""
        if bool((abar == abar[0]).all()):   # one t for the batch (as in samplers): K matrices only
            abar = abar[:1]
        a = abar.reshape(-1, 1, 1, 1)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        means = a[..., 0].sqrt() * self.means.to(x)[None]                   # (1|N, K, D)
        cov = a * self.covs.to(x)[None] + (1 - a) * eye                     # (1|N, K, D, D)
        precision = torch.linalg.inv(cov)
        diff = x[:, None, :] - means                                        # (N, K, D)
        prec_diff = (precision @ diff[..., None])[..., 0]                   # C^{-1} (x - m)
        logdet = torch.linalg.slogdet(cov)[1]
        logp = -0.5 * ((diff * prec_diff).sum(-1) + logdet + self.dim * math.log(2 * math.pi))
        logp = logp + self.weights.to(x).log()[None]
        if component is not None:
            keep = torch.as_tensor(component, device=x.device).reshape(-1, 1).expand(len(x), 1)
            logp = torch.full_like(logp, float("-inf")).scatter(1, keep, logp.gather(1, keep))
        return logp, prec_diff

    def log_prob(self, x: Tensor) -> Tensor:
        """log p_0(x) of the mixture, per row."""
        return torch.logsumexp(self.marginal_terms(x, torch.ones(len(x), dtype=x.dtype))[0], dim=1)

    def classify(self, x: Tensor) -> Tensor:
        """The most likely component of each row of data-space x."""
        return self.marginal_terms(x, torch.ones(len(x), dtype=x.dtype))[0].argmax(dim=1)

    def x0_eps_at(self, x: Tensor, abar: Tensor, component=None) -> tuple[Tensor, Tensor]:
        """The exact E[x_0 | x_t] and eps*(x_t) = -sqrt(1 - abar) grad log q_t(x_t) at per-row abar
        (N,): E[x_0 | x_t] = sum_k r_k (mu_k + sqrt(abar) S_k C_k^{-1} (x - m_k)), r_k the component
        responsibilities, finite at abar = 0 (zero terminal SNR), where it is the mean."""
        logp, prec_diff = self.marginal_terms(x, abar, component)
        resp = torch.softmax(logp, dim=1)                                   # (N, K)
        score = -(resp[..., None] * prec_diff).sum(1)                       # grad log q_t(x)
        per_component = self.means.to(x)[None] + abar.sqrt()[:, None, None] * (
            self.covs.to(x)[None] @ prec_diff[..., None])[..., 0]
        return (resp[..., None] * per_component).sum(1), -(1 - abar).sqrt()[:, None] * score


class EmpiricalDistribution(ExactDenoiser):
    """The uniform distribution on `points` (K, *shape), e.g. a training split of images, with
    optional class `labels` (K,); its exact denoiser is the posterior mean of the module docstring
    (float64; `component` keeps the points of that class, per row)."""

    def __init__(self, points: Tensor, labels: Tensor | None = None):
        self.points = points.to(torch.float64).flatten(1)
        self.sq_norms = self.points.pow(2).sum(1)
        self.labels = None if labels is None else torch.as_tensor(labels).reshape(-1)

    def x0_eps_at(self, x: Tensor, abar: Tensor, component=None) -> tuple[Tensor, Tensor]:
        """E[x_0 | x_t] and E[eps | x_t] = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar) at per-row
        abar (N,); at abar = 0 the mean of the points and x_t."""
        flat = x.to(torch.float64).flatten(1)
        points = self.points.to(flat.device)
        a = abar.to(flat).reshape(-1, 1)
        # |x - sqrt(a) p|^2 = |x|^2 - 2 sqrt(a) x.p + a |p|^2; the |x|^2 term cancels in the softmax
        logits = (2 * a.sqrt() * (flat @ points.T) - a * self.sq_norms.to(flat.device)) / (2 * (1 - a))
        if component is not None:
            if self.labels is None:
                raise ValueError("EmpiricalDistribution: a component needs the points' labels")
            keep = torch.as_tensor(component, device=flat.device).reshape(-1, 1) == self.labels.to(flat.device)
            logits = logits.masked_fill(~keep, float("-inf"))
        x0 = logits.softmax(1) @ points
        eps = (flat - a.sqrt() * x0) / (1 - a).sqrt()
        return x0.reshape(x.shape).to(x.dtype), eps.reshape(x.shape).to(x.dtype)
