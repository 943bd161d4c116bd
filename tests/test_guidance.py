"""Classifier-free guidance: the math against a Gaussian mixture's exact conditional eps, the
training-time label dropout, the batched pass, and guidance through every sampler and the CLI."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.diffusion import GaussianDiffusion, NoiseSchedule
from ddpm_lab.diffusion.guidance import Guidance, Guider, combine, drop_condition
from ddpm_lab.diffusion.samplers import sample
from ddpm_lab.errors import UserError
from tests.helpers import assert_reproduces_mixture


@pytest.fixture(scope="module")
def diff():
    return GaussianDiffusion(NoiseSchedule.from_name("linear", num_steps=1000))


def guided_samples(gmm, diff, label, scale, n=3000, sampler="ddpm", steps=200, **kw):
    cond = None if label is None else torch.full((n,), label)
    return sample(gmm.eps_fn(diff), (n, 2), diff, sampler=sampler, steps=steps, cond=cond,
                  guidance_scale=scale, dtype=torch.float64, generator=torch.Generator().manual_seed(0), **kw)


def test_scale_zero_samples_the_unconditional_mixture(three_gaussians, diff):
    x = guided_samples(three_gaussians, diff, label=1, scale=0.0, n=6000, steps=1000)
    assert_reproduces_mixture(three_gaussians, x)


def test_scale_one_samples_the_requested_component(three_gaussians, diff):
    gmm = three_gaussians
    for c in range(3):
        x = guided_samples(gmm, diff, label=c, scale=1.0, steps=1000)
        assert (gmm.classify(x) == c).float().mean() > 0.995
        assert (x.mean(0) - gmm.means[c]).abs().max() < 0.04
        assert (torch.cov(x.T) - gmm.covs[c]).abs().max() < 0.03


def test_scale_above_one_pushes_samples_away_from_the_other_components(three_gaussians, diff):
    gmm, c = three_gaussians, 0
    others = gmm.means[[1, 2]]

    def distance_to_others(x):
        return torch.cdist(x, others).min(dim=1).values.mean()

    d = [distance_to_others(guided_samples(gmm, diff, label=c, scale=w)) for w in (1.0, 3.0, 6.0)]
    assert d[0] < d[1] < d[2]
    x = guided_samples(gmm, diff, label=c, scale=6.0)
    assert torch.cov(x.T).trace() < gmm.covs[c].trace()        # and sharpens the class


@pytest.mark.parametrize("sampler, kw", [("ddpm", {}), ("ddim", {"eta": 0.0}), ("ddim", {"eta": 1.0}),
                                         ("dpmpp_2m", {}), ("diffusers", {"scheduler": "EulerDiscreteScheduler"})])
def test_every_sampler_accepts_guidance(three_gaussians, diff, sampler, kw):
    gmm = three_gaussians
    x = guided_samples(gmm, diff, label=2, scale=2.0, n=1000, sampler=sampler, steps=50, **kw)
    assert (gmm.classify(x) == 2).float().mean() > 0.99
    u = guided_samples(gmm, diff, label=2, scale=0.0, n=1000, sampler=sampler, steps=50, **kw)
    assert 0.1 < (gmm.classify(u) == 2).float().mean() < 0.3   # weight 0.2 when unconditional


def test_label_dropout_rate():
    labels = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    dropped = drop_condition(labels, null_value=10, p_uncond=0.1)
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.1) < 0.003
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    assert torch.equal(drop_condition(labels, 10, 0.0), labels)
    assert (drop_condition(labels, 10, 1.0) == 10).all()


def test_guidance_rescale_restores_the_conditional_std():
    torch.manual_seed(0)
    out_c, out_u = torch.randn(4, 3, 8, 8), 0.5 * torch.randn(4, 3, 8, 8)
    plain = combine(out_c, out_u, 5.0)
    full = combine(out_c, out_u, 5.0, rescale=1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), out_c.std(dim=(1, 2, 3)))
    torch.testing.assert_close(combine(out_c, out_u, 5.0, rescale=0.3), 0.3 * full + 0.7 * plain)


def test_batched_pass_equals_two_passes_with_rescale():
    from ddpm_lab.nets import UNet

    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(), dropout=0.0, norm_groups=4, num_classes=3).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 10), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        batched = Guider(3.0, 0.7)(net, x, t, y)
        separate = combine(net(x, t, y), net(x, t, None), 3.0, 0.7)
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": -1.0}, "guidance.scale=-1.0 must be >= 0"),
    ({"p_uncond": 1.5}, "guidance.p_uncond=1.5 must lie in"),
    ({"rescale": 2.0}, "guidance.rescale=2.0 must lie in"),
    ({"condition": "caption"}, "guidance.condition='caption' is not allowed"),
])
def test_guidance_config_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        Guidance(**kwargs)


# ----- the trained model and the command line ----------------------------------------------------
TINY = ["net=unet_tiny", "logger=csv", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1", "sampler.steps=3", "callbacks.sample_grid.num_samples=10"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    out = {}
    for name, extra in (("conditional", ["guidance=classifier_free"]), ("unconditional", [])):
        d = tmp_path_factory.mktemp(name)
        run(compose_train([*TINY, *extra], d))
        out[name] = d / "checkpoints" / "last.ckpt"
    return out


def test_conditional_checkpoint_samples_the_requested_labels(checkpoints):
    from ddpm_lab.modules import DiffusionModule
    module = DiffusionModule.load(checkpoints["conditional"])
    assert module.net.num_classes == 10 and module.guidance.p_uncond == 0.1
    assert module.sampling_labels(12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    a = module.sample(4, labels=3, guidance_scale=4.0, steps=3)
    b = module.sample(4, labels=3, guidance_scale=1.0, steps=3)
    assert a.shape == (4, 1, 16, 16) and not torch.equal(a, b)
    with pytest.raises(UserError, match="label: 3 labels for 4 samples"):
        module.sample(4, labels=[1, 2, 3], steps=2)


@pytest.mark.parametrize("which, args, message", [
    ("conditional", ["label=12"], "label=12 is outside the 10 classes of digits (0..9)"),
    ("conditional", ["guidance.scale=-1"], "guidance.scale=-1.0 must be >= 0"),
    ("unconditional", ["label=3"], "label=3: this checkpoint is unconditional"),
    ("unconditional", ["guidance.scale=4"], "guidance.scale=4: this checkpoint is unconditional"),
])
def test_sample_cli_guidance_errors(checkpoints, tmp_path, which, args, message):
    import re

    from ddpm_lab.sample import run as run_sample
    from tests.helpers import compose_app
    cfg = compose_app("sample", [f"ckpt_path={checkpoints[which]}", "num_samples=2", "sampler.steps=2", *args],
                      tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        run_sample(cfg)


def test_eval_sweeps_guidance_scales(checkpoints, tmp_path, capsys):
    import json

    from ddpm_lab.evaluate import evaluate
    from tests.helpers import compose_app
    evaluate(compose_app("eval", [f"ckpt_path={checkpoints['conditional']}", "num_samples=70", "sampler.steps=2",
                                  "metrics=[fd,accuracy]", "guidance.scales=[0,1,3]"], tmp_path))
    result = json.loads((tmp_path / "metrics.json").read_text())
    sweep = result["guidance_sweep"]
    assert [row["guidance_scale"] for row in sweep] == [0.0, 1.0, 3.0]
    assert all({"fd", "accuracy", "diversity"} <= set(row) for row in sweep)
    assert result["floor"]["accuracy"] == 1.0
    assert (tmp_path / "guidance_sweep.png").is_file()
    assert "guidance sweep" in capsys.readouterr().out


def test_class_guidance_needs_a_labelled_data_set(tmp_path):
    from PIL import Image

    from ddpm_lab.train import run
    from tests.helpers import compose_train
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    cfg = compose_train([*TINY, "guidance=classifier_free", "data=image_folder", f"data.path={tmp_path}",
                         "data.image_size=8", "data.num_workers=0"], tmp_path / "run")
    with pytest.raises(UserError, match="guidance.condition=label needs class labels, and data=image_folder"):
        run(cfg)


@pytest.mark.slow
def test_gmm_guidance_experiment_draws_the_figure(tmp_path):
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    run(compose_train(["experiment=gmm_guidance", "trainer.max_epochs=1", "data.num_points=2000",
                       "sampler.steps=20", "callbacks.guidance_figure.per_class=50"], tmp_path))
    assert (tmp_path / "guidance_gmm.png").stat().st_size > 10_000


def test_diffusers_unet_trains_class_conditional(tmp_path):
    from ddpm_lab.modules import DiffusionModule
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    run(compose_train([*TINY, "net=diffusers_unet2d", "guidance=classifier_free",
                       "trainer.limit_train_batches=2"], tmp_path))
    module = DiffusionModule.load(tmp_path / "checkpoints" / "last.ckpt")
    assert module.net.unet.config.num_class_embeds == 11          # 10 digits + the null class
    assert module.sample(3, labels=[1, 2, 3], guidance_scale=2.0, steps=2).shape == (3, 1, 16, 16)


# ----- the Guider ----------------------------------------------------------------------------------
class Recorder:
    """A model that records its calls; with `null` it names its null condition (NullConditioned)."""

    def __init__(self, null: int | None = None):
        self.calls = []
        if null is not None:
            self.null_condition = lambda batch, device: torch.full((batch,), null, device=device)

    def __call__(self, x, t, cond):
        self.calls.append((x, t, cond))
        c = torch.zeros(len(x)) if cond is None else cond.to(x.dtype)
        return x * (1 + c[:, None]) + t[:, None].to(x.dtype) / 100


def test_guider_combines_and_rescales_as_by_hand():
    out_c = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    out_u = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # w = 2: u + 2 (c - u) = [2, 4] and [-1, 5]; their std is twice the conditional one's (ratio 1/2)
    torch.testing.assert_close(Guider(2.0).combine(out_c, out_u), torch.tensor([[2.0, 4.0], [-1.0, 5.0]]))
    # phi = 1/2: 0.5 * out * 0.5 + 0.5 * out = 0.75 out
    torch.testing.assert_close(Guider(2.0, 0.5).combine(out_c, out_u), torch.tensor([[1.5, 3.0], [-0.75, 3.75]]))
    torch.testing.assert_close(Guider(2.0, 1.0).combine(out_c, out_u), torch.tensor([[1.0, 2.0], [-0.5, 2.5]]))


def test_guider_runs_both_passes_as_one_forward_on_the_doubled_batch():
    model = Recorder(null=7)
    x, t, cond = torch.randn(3, 2), torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2])
    out = Guider(3.0, 0.5)(model, x, t, cond)
    assert len(model.calls) == 1
    x2, t2, c2 = model.calls[0]
    assert torch.equal(x2, torch.cat([x, x])) and torch.equal(t2, torch.cat([t, t]))
    assert c2.tolist() == [0, 1, 2, 7, 7, 7]
    plain = Recorder()
    separate = combine(plain(x, t, cond), plain(x, t, torch.full((3,), 7)), 3.0, 0.5)
    torch.testing.assert_close(out, separate)


def test_guider_asks_a_plain_callable_twice_and_skips_needless_passes():
    x, t, cond = torch.randn(3, 2), torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2])
    model = Recorder()
    out = Guider(3.0)(model, x, t, cond)
    assert [c if c is None else c.tolist() for _, _, c in model.calls] == [[0, 1, 2], None]
    torch.testing.assert_close(out, model(x, t, None) + 3.0 * (model(x, t, cond) - model(x, t, None)))
    for guider, c, passed in ((Guider(1.0), cond, [0, 1, 2]), (Guider(0.0, 0.5), cond, None), (Guider(4.0), None, None)):
        model = Recorder(null=7)
        guider(model, x, t, c)
        assert len(model.calls) == 1
        assert (model.calls[0][2] if passed is None else model.calls[0][2].tolist()) == passed


def test_networks_name_their_null_condition_instead_of_guiding():
    from ddpm_lab.diffusion.guidance import NullConditioned
    from ddpm_lab.nets import MLPDenoiser

    net = MLPDenoiser(num_classes=3)
    assert isinstance(net, NullConditioned) and not hasattr(net, "guided")
    assert net.null_condition(2, "cpu").tolist() == [3, 3]
    assert not isinstance(lambda x, t, c: x, NullConditioned)


@pytest.mark.parametrize("sampler, scheduler", [("ddpm", None), ("ddim", None), ("dpmpp_2m", None),
                                                ("dpmpp_2m_sde", None), ("diffusers", "EulerDiscreteScheduler"),
                                                ("ddim_invert", None)])
def test_every_sampler_guides_with_one_batched_forward(diff, sampler, scheduler):
    from ddpm_lab.diffusion.samplers import ddim_invert

    model, cond = Recorder(null=7), torch.tensor([0, 1, 2])
    if sampler == "ddim_invert":
        ddim_invert(model, torch.randn(3, 2), diff, steps=4, cond=cond, guidance_scale=2.0)
    else:
        sample(model, (3, 2), diff, sampler=sampler, scheduler=scheduler, steps=4, cond=cond,
               guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert len(model.calls) == 4
    assert all(len(x) == 6 and c.tolist() == [0, 1, 2, 7, 7, 7] for x, _, c in model.calls)
