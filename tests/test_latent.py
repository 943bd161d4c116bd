"""Latent diffusion: the stage-1 AutoencoderKL module, the scaled frozen VAE, the latent cache,
stage 2 through the command line, diffusers AutoencoderKL directories, and the errors."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_lab.autoencoders import (
    LatentAutoencoder,
    autoencoder_kl,
    from_pretrained,
    from_run,
    measure_scale,
)
from ddpm_lab.data.shapes import make_shapes
from ddpm_lab.errors import UserError

# tiny and quick: 8x8 shapes, a 2-level VAE (downsample 2), a 1-level UNet on 4x4x4 latents
SMALL_DATA = ["data=shapes", "data.image_size=8", "data.num_images=200", "logger=csv",
              "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
SMALL_VAE = ["vae.downsample=2", "vae.base_channels=8", "vae.norm_num_groups=4"]


def tiny_vae(size: int = 8, downsample: int = 2) -> LatentAutoencoder:
    torch.manual_seed(0)
    kl = autoencoder_kl(image_size=size, in_channels=3, latent_channels=4, downsample=downsample,
                        base_channels=8, norm_num_groups=4)
    out = LatentAutoencoder(dict(kl.config), source="test")
    out.model.load_state_dict(kl.state_dict())
    return out


def test_encode_decode_shapes_and_the_scale_gives_unit_variance():
    vae = tiny_vae(16, 4)
    x, _, _ = make_shapes(64, image_size=16, seed=0)
    assert vae.latent_shape((3, 16, 16)) == (4, 4, 4)
    assert vae.moments(x).shape == (64, 8, 4, 4)
    assert vae.decode(vae.encode(x)).shape == x.shape
    vae.scale = measure_scale(vae, x)
    z = vae.encode(x, generator=torch.Generator().manual_seed(1))
    assert abs(z.std().item() - 1.0) < 0.05
    torch.testing.assert_close(vae.encode(x, sample=False), vae.moments(x)[:, :4] * vae.scale)


def test_the_posterior_is_diffusers_diagonal_gaussian_with_the_same_numbers():
    """LatentAutoencoder.scaled draws through diffusers' DiagonalGaussianDistribution: the same
    latents as mean + exp(logvar / 2) * noise (log-variance clamped to [-30, 20]), then scaled."""
    vae = tiny_vae()
    vae.scale, vae.shift = 0.7, 0.1
    moments = torch.randn(16, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    moments[:2, 4:] *= 40                                    # log-variances beyond the clamp
    mean, logvar = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    by_hand = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise
    assert torch.equal(vae.scaled(moments, generator=torch.Generator().manual_seed(5)), (by_hand - 0.1) * 0.7)
    assert torch.equal(vae.scaled(moments, sample=False), (mean - 0.1) * 0.7)
    torch.manual_seed(3)
    drawn = vae.scaled(moments)                              # the global generator, as in training
    torch.manual_seed(3)
    assert torch.equal(drawn, (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn(mean.shape) - 0.1) * 0.7)


def test_vae_errors():
    with pytest.raises(UserError, match="data.image_size=12 cannot be divided by the VAE: vae downsamples by 8"):
        autoencoder_kl(image_size=12, downsample=8)
    with pytest.raises(UserError, match="vae.downsample=3 must be a power of two"):
        autoencoder_kl(image_size=12, downsample=3)
    with pytest.raises(UserError, match="data.image_size=10 cannot be divided"):
        tiny_vae(8, 4).latent_shape((3, 10, 10))


def test_diffusers_autoencoder_directory_loads_with_its_own_scale(tmp_path):
    kl = autoencoder_kl(image_size=8, in_channels=3, downsample=2, base_channels=8, norm_num_groups=4)
    kl.register_to_config(scaling_factor=0.3)
    kl.save_pretrained(tmp_path / "vae")
    vae = from_pretrained(str(tmp_path / "vae"))
    assert vae.scale == 0.3 and vae.latent_shape((3, 8, 8)) == (4, 4, 4)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(vae.decode(vae.encode(x, sample=False)), kl.decode(kl.encode(x).latent_dist.mode()).sample)
    with pytest.raises(UserError, match="is not a diffusers AutoencoderKL directory"):
        from_pretrained(str(tmp_path))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(UserError, match="holds a 'UNet2DModel', not an AutoencoderKL"):
        from_pretrained(str(tmp_path / "unet"))


# ----- both stages through ddpm-train ---------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    d = tmp_path_factory.mktemp("stage1")
    metrics = run(compose_train(["experiment=shapes_vae", *SMALL_DATA, *SMALL_VAE], d))
    return d, metrics


def stage2_overrides(stage1_dir, cache_dir, *extra):
    path = [] if "vae=f4" in extra else [f"vae.path={stage1_dir}"]
    return ["experiment=shapes_ldm", *SMALL_DATA, *path, "net=unet_tiny",
            "++net.text={dim:16,layers:1,heads:2}", "net.channel_mult=[1,2]", "net.attention_resolutions=[2]",
            "net.cross_attention_resolutions=[4,2]", f"latents.cache_dir={cache_dir}", "sampler.steps=2",
            "callbacks.sample_grid.num_samples=4", *extra]


def test_stage1_trains_and_logs_psnr_and_reconstructions(stage1):
    d, metrics = stage1
    assert "val/psnr" in metrics and metrics["val/psnr"] > 0
    assert list((d / "reconstructions").glob("epoch*.png"))
    vae = from_run(str(d))
    assert vae.needs_scale and vae.latent_shape((3, 8, 8)) == (4, 4, 4)


def test_stage2_trains_in_latent_space_and_samples_from_its_path_alone(stage1, tmp_path):
    from ddpm_lab.build import build
    from ddpm_lab.modules import DiffusionModule
    from ddpm_lab.train import run
    from tests.helpers import compose_train, run_cli
    cache = tmp_path / "cache"
    cfg = compose_train(stage2_overrides(stage1[0], cache), tmp_path / "a")
    run(cfg)
    files = list(cache.glob("shapes-*.pt"))
    assert len(files) == 1
    ckpt_file = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    latent = ckpt["hyper_parameters"]["latent"]
    assert latent["cached"] and latent["config"]["latent_channels"] == 4
    assert ckpt["hyper_parameters"]["net"]["in_channels"] == 4 and ckpt["hyper_parameters"]["net"]["image_size"] == 4
    assert any(k.startswith("autoencoder.model.decoder") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["sampler"]["clip_x0"] is False

    module = DiffusionModule.load(ckpt_file)
    assert module.sample_shape == (4, 4, 4)
    images = module.sample(3, prompts="a red circle", steps=2)
    assert images.shape == (3, 3, 8, 8) and images.abs().max() <= 1
    with pytest.raises(UserError, match="sampler.clip_x0=true: latents are not bounded"):
        module.sample(2, steps=2, clip_x0=True)
    # the command line needs nothing but the checkpoint (the stage-1 run may be gone)
    proc = run_cli("ddpm-sample", f"ckpt_path={tmp_path / 'a'}", "num_samples=2", "prompt='a blue square'",
                   f"paths.output_dir={tmp_path / 's'}", cwd=tmp_path, env={"DDPM_LAB_OUTPUTS": str(tmp_path / "none")})
    assert proc.returncode == 0, proc.stderr
    assert torch.load(tmp_path / "s" / "samples.pt", weights_only=False)["images"].shape == (2, 3, 8, 8)

    with pytest.raises(UserError, match="is a diffusion checkpoint, not a stage-1 autoencoder"):
        from_run(str(tmp_path / "a"))
    # the same data and VAE reuse the cache; the scale measured again is the same
    module2, dm = build(compose_train(stage2_overrides(stage1[0], cache), tmp_path / "b"))
    dm.prepare_data()
    assert dm.cache_hit and module2.hparams["latent"]["scale"] == latent["scale"]
    # the latents are unit variance (what the scale is for)
    dm.setup()
    z = module2.diffusion_input(dm.train_set.columns)
    assert abs(z.std().item() - 1.0) < 0.1


def test_cache_is_invalidated_when_the_vae_changes(stage1, tmp_path):
    from ddpm_lab.build import build
    from tests.helpers import compose_train
    cache = tmp_path / "cache"
    _, dm = build(compose_train(stage2_overrides(stage1[0], cache), tmp_path / "a"))
    dm.prepare_data()
    assert not dm.cache_hit
    dm.autoencoder.model.decoder.conv_out.bias.data += 0.01        # another VAE (here: its decoder)
    dm.prepare_data()
    assert not dm.cache_hit and len(list(cache.glob("*.pt"))) == 2
    _, dm = build(compose_train(stage2_overrides(stage1[0], cache, "data.num_images=100"), tmp_path / "b"))
    dm.prepare_data()
    assert not dm.cache_hit                                      # another data set


def test_encoding_every_step_trains_too(stage1, tmp_path):
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    run(compose_train(stage2_overrides(stage1[0], tmp_path / "cache", "latents.cache=false"), tmp_path / "a"))
    assert not (tmp_path / "cache").exists()
    ckpt = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["latent"]["cached"] is False


def test_pretrained_vae_trains_stage2(tmp_path):
    from ddpm_lab.build import build
    from tests.helpers import compose_train
    kl = autoencoder_kl(image_size=8, in_channels=3, downsample=2, base_channels=8, norm_num_groups=4)
    kl.register_to_config(scaling_factor=0.5)
    kl.save_pretrained(tmp_path / "vae")
    module, _ = build(compose_train(stage2_overrides(tmp_path, tmp_path / "cache", "vae=pretrained",
                                                     f"vae.path={tmp_path / 'vae'}"), tmp_path / "a"))
    assert module.hparams["latent"]["scale"] == 0.5


@pytest.mark.parametrize("extra, message", [
    (["vae.path=/nonexistent/run"], "vae.path: ckpt_path='/nonexistent/run': no such checkpoint file or run folder"),
    (["net.in_channels=7"], "net.in_channels=7 does not match the VAE's 4 latent channels"),
    (["data.image_size=9"], "data.image_size=9 cannot be divided by the VAE"),
    (["vae=f4"], "is a stage-1 preset"),
])
def test_stage2_errors(stage1, tmp_path, extra, message):
    from ddpm_lab.build import build
    from ddpm_lab.cli import find_user_error
    from tests.helpers import compose_train
    with pytest.raises(Exception) as err:     # noqa: PT011 - Hydra may wrap it; the CLI unwraps it
        build(compose_train(stage2_overrides(stage1[0], tmp_path / "cache", *extra), tmp_path / "a"))
    assert isinstance(find_user_error(err.value), UserError)
    assert message in str(find_user_error(err.value))


def test_sampling_an_autoencoder_checkpoint_is_a_clear_error(stage1):
    from ddpm_lab.modules import DiffusionModule
    with pytest.raises(UserError, match="is a stage-1 autoencoder checkpoint"):
        DiffusionModule.load(stage1[0] / "checkpoints" / "last.ckpt")


def test_ema_in_stage2_averages_the_network_and_leaves_the_frozen_vae_out(tmp_path):
    """ForeachEMA on a latent-diffusion module: every update gets the network's tensors and none of
    the frozen VAE's; the average of the network follows avg <- decay avg + (1 - decay) theta over
    the steps, and the average's VAE is the VAE."""
    import lightning as L

    from ddpm_lab.build import build
    from ddpm_lab.callbacks.ema import ForeachEMA
    from tests.helpers import compose_train
    kl = autoencoder_kl(image_size=8, in_channels=3, downsample=2, base_channels=8, norm_num_groups=4)
    kl.register_to_config(scaling_factor=0.5)
    kl.save_pretrained(tmp_path / "vae")
    module, dm = build(compose_train(stage2_overrides(tmp_path, tmp_path / "cache", "vae=pretrained",
                                                     f"vae.path={tmp_path / 'vae'}"), tmp_path / "a"))
    vae = {k: v.clone() for k, v in module.autoencoder.state_dict().items()}
    decay, steps = 0.9, 4
    ema = ForeachEMA(decay=decay)
    update, sizes = ema.average_fn.update, []
    ema.average_fn.update = lambda avg, cur, n: (sizes.append(len(avg)), update(avg, cur, n))

    class Record(L.Callback):
        def __init__(self):
            self.thetas = []          # the network's weights after each optimizer step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.thetas.append([p.detach().clone() for p in pl_module.net.parameters()])

    record = Record()
    trainer = L.Trainer(max_steps=steps, callbacks=[record, ema], logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    net_params = list(module.net.parameters())
    assert len(ema.average_fn.frozen) == len(list(module.autoencoder.parameters())) > 0
    assert sizes == [len(net_params)] * (steps - 1)             # the first update copies; then the net alone
    average = ema._average_model.module
    for name, value in average.autoencoder.state_dict().items():
        assert torch.equal(value, vae[name]), name
    assert len(record.thetas) == steps and not torch.equal(record.thetas[0][0], record.thetas[-1][0])
    expected = record.thetas[0]
    for theta in record.thetas[1:]:
        expected = [decay * e + (1 - decay) * t for e, t in zip(expected, theta)]
    for avg, exp in zip(average.net.parameters(), expected):
        torch.testing.assert_close(avg, exp, rtol=1e-5, atol=1e-6)


def test_flow_matching_with_the_transformer_trains_and_samples_in_latent_space(stage1, tmp_path):
    """experiment=shapes_ldm_flow (flow matching, DiT, prompts) on the stage-1 run's latents."""
    from ddpm_lab.modules import DiffusionModule
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    overrides = ["experiment=shapes_ldm_flow", *SMALL_DATA, f"vae.path={stage1[0]}", "net.dim=32", "net.depth=1",
                 "net.heads=2", "net.patch_size=2", "++net.text={dim:16,layers:1,heads:2}",
                 f"latents.cache_dir={tmp_path / 'cache'}", "sampler.steps=2", "callbacks.sample_grid.num_samples=4"]
    run(compose_train(overrides, tmp_path / "a"))
    module = DiffusionModule.load(tmp_path / "a")
    assert type(module.diffusion).__name__ == "FlowMatching" and type(module.net).__name__ == "DiT"
    assert module.sample_shape == (4, 4, 4)
    images = module.sample(2, prompts="a red circle", steps=2)
    assert images.shape == (2, 3, 8, 8) and images.abs().max() <= 1
