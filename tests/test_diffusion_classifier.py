"""The diffusion classifier (Li et al. 2023; ddpm_lab/diffusion/classifier.py, ddpm_lab/tasks/classify.py,
ddpm-eval metrics=[classify]): with the exact class-conditional eps of a Gaussian mixture it agrees
with the Bayes classifier; the API on conditional networks; the one-line errors."""

import re

import pytest
import torch
from hydra.utils import instantiate

from ddpm_lab.diffusion import GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.analytic import GaussianMixture
from ddpm_lab.diffusion.classifier import class_errors, draw_times, predict
from ddpm_lab.errors import UserError
from ddpm_lab.evaluate import evaluate
from ddpm_lab.tasks.classify import accuracy_by_draws, classify
from tests.helpers import TINY_RUN, compose_app, compose_train, last_error_line, run_cli


def test_exact_conditional_eps_agrees_with_the_bayes_classifier(three_gaussians):
    """Each mixture component is a class (equal priors, as the diffusion classifier assumes), its
    exact eps the single-Gaussian eps; the means are pulled together (x 0.35) so that the classes
    overlap. With K = 64 shared draws the diffusion classifier picks the Bayes class on 97% of the
    points (87% at K = 4); a v model compared in eps-space makes the same errors."""
    gmm = GaussianMixture([1 / 3] * 3, 0.35 * three_gaussians.means, three_gaussians.covs)
    x, labels = gmm.sample(300, torch.Generator().manual_seed(0))
    bayes = gmm.classify(x)
    assert (bayes == labels).double().mean() < 0.97            # the classes do overlap
    errors = {}
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (len(x), 64), generator=g)
    noise = torch.randn(len(x), 64, 2, generator=g, dtype=torch.float64)
    for prediction, rows in (("eps", slice(None)), ("v", slice(0, 40))):
        diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000), prediction=prediction)
        errors[prediction] = class_errors(gmm.output_fn(diffusion), diffusion, x[rows], torch.arange(3), t[rows],
                                          noise[rows], batch_size=20_000)
    assert errors["eps"].shape == (300, 3, 64) and (errors["eps"] >= 0).all()
    assert torch.allclose(errors["v"], errors["eps"][:40], rtol=1e-6, atol=1e-9)
    agree = {k: (predict(errors["eps"], k) == bayes).double().mean().item() for k in (4, 64)}
    assert agree[64] >= 0.95 and agree[4] < agree[64], agree


def test_draw_times_are_uniform_over_the_process_times():
    g = torch.Generator().manual_seed(0)
    t = draw_times(GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=10)), (4000,), g)
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 9 and torch.bincount(t).min() > 300
    from ddpm_lab.diffusion import FlowMatching
    s = draw_times(FlowMatching(), (4000,), g)
    assert s.is_floating_point() and 0 <= s.min() and s.max() < 1 and abs(s.mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("overrides", [["guidance=classifier_free"], ["data=shapes", "guidance=text"]])
def test_classify_api_on_a_conditional_network(tmp_path, overrides):
    """An untrained label or text model: N C K calls, one prediction per image, and the accuracy
    at the first k draws equal to the prediction from those draws."""
    from ddpm_lab.build import build_module

    cfg = compose_train([*TINY_RUN, *overrides], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    module = build_module(cfg, dm).eval()
    calls = []
    net_forward = module.net.forward
    module.net.forward = lambda x, t, cond=None: calls.append(len(x)) or net_forward(x, t, cond)
    batch = next(iter(dm.val_dataloader()))
    images, labels = batch.image[:3], batch.label[:3]
    result = classify(module, images, draws=4, batch_size=40)
    classes = module.num_classes
    assert result["errors"].shape == (3, classes, 4) and sum(calls) == 3 * classes * 4
    assert result["predicted"].shape == (3,) and ((0 <= result["predicted"]) & (result["predicted"] < classes)).all()
    by_draws = accuracy_by_draws(result["errors"], labels, [2, 4])
    assert by_draws[4] == (result["predicted"] == labels).double().mean().item()
    assert by_draws[2] == (predict(result["errors"], 2) == labels).double().mean().item()


def test_eval_classify_on_an_unconditional_checkpoint_is_one_line(tiny_checkpoint, tmp_path):
    proc = run_cli("ddpm-eval", f"ckpt_path={tiny_checkpoint}", "metrics=[classify]",
                   f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "metrics: 'classify' needs a class-conditional or text checkpoint; this one is unconditional" \
        in last_error_line(proc)
    assert not (tmp_path / "e" / "metrics.json").exists()


@pytest.mark.parametrize("args, message", [
    (["classify.draws=0"], "classify.draws=0 must be an integer >= 1"),
    (["classify.num_images=-3"], "classify.num_images=-3 must be an integer >= 1"),
    (["classify.batch_size=big"], "classify.batch_size='big' must be an integer >= 1"),
])
def test_bad_classify_options_are_one_line(tiny_checkpoint, tmp_path, args, message):
    cfg = compose_app("eval", [f"ckpt_path={tiny_checkpoint}", "metrics=[classify]", *args], tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate(cfg)
