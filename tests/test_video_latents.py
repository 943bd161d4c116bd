"""Latent video: Wan 2.1's causal 3-D VAE (vae=wan_tiny) and its frame rule, an image AutoencoderKL
on clips frame by frame, per-channel latent normalisation, stage 1 on clips, and stage 2's latents
(from_run, the 5-D latent cache, the network fitted to video latents, old checkpoints' `latent`)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from ddpm_lab.autoencoders import (
    LatentAutoencoder,
    autoencoder_kl,
    autoencoder_kl_wan,
    from_run,
    measure_normalisation,
    posterior,
)
from ddpm_lab.data.base import BatchDataModule, split_indices
from ddpm_lab.data.batch import Batch, BatchDataset
from ddpm_lab.errors import UserError
from ddpm_lab.viz import clip_rows
from tests.helpers import user_error

FRAME_RULE = "data.frames=8: vae=wan_tiny compresses time by 2 and takes 1 + 2k frames (1, 3, 5, 7, 9, ...)"


def moving_squares(num_clips: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """Clips (N, 3, F, size, size) in [-1, 1]: a coloured square crossing a dark frame in a straight line."""
    gen = torch.Generator().manual_seed(seed)
    clips = -torch.ones(num_clips, 3, frames, size, size)
    side = max(2, size // 4)
    for n in range(num_clips):
        colour = torch.rand(3, generator=gen) * 2 - 1
        start = torch.randint(0, size - side + 1, (2,), generator=gen)
        step = torch.randint(-1, 2, (2,), generator=gen)
        for f in range(frames):
            y, x = ((start + f * step) % (size - side + 1)).tolist()
            clips[n, :, f, y:y + side, x:x + side] = colour[:, None, None]
    return clips


class TinyClips(BatchDataModule):
    """A stand-in video data module: `image_shape` (3, F, H, W), batches of moving-square clips."""

    name = "tiny_clips"

    def __init__(self, num_clips: int = 12, frames: int = 9, image_size: int = 16, batch_size: int = 2,
                 seed: int = 0, val_fraction: float = 0.25, channels: int = 3):
        super().__init__(batch_size, seed, 0, val_fraction)
        self.num_clips, self.frames, self.image_size, self.channels = num_clips, frames, image_size, channels

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.channels, self.frames, self.image_size, self.image_size)

    def make_splits(self) -> tuple[BatchDataset, BatchDataset]:
        data = Batch(image=moving_squares(self.num_clips, self.frames, self.image_size))
        train, val = split_indices(self.num_clips, self.val_fraction)
        return BatchDataset(data.select(train)), BatchDataset(data.select(val))


WAN_TINY = ["vae=wan_tiny", "vae.base_dim=8"]


VIDEO_NET = ["net=dit_video", "net.dim=24", "net.depth=1", "net.heads=2", "net.patch_size=2"]   # tiny, takes clips


def compose(overrides: list[str], out_dir, frames: int = 9, **data):
    """A train config on TinyClips (16x16, `frames` frames); overrides name the VAE (WAN_TINY: the
    stage-1 preset at base_dim 8)."""
    from tests.helpers import compose_train
    cfg = compose_train(["data=shapes", "logger=csv", "trainer.max_epochs=1",
                         "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", *overrides], out_dir)
    with open_dict(cfg):
        cfg.data = OmegaConf.create({"_target_": f"{__name__}.TinyClips", "frames": frames, "image_size": 16,
                                     "channels": 3, "batch_size": 2, "seed": 0, **data})
    return cfg


def tiny_wan(**kw) -> LatentAutoencoder:
    torch.manual_seed(0)
    model = autoencoder_kl_wan(image_size=16, base_dim=8, **kw)
    out = LatentAutoencoder(dict(model.config), source="test")
    out.model.load_state_dict(model.state_dict())
    return out


def tiny_kl() -> LatentAutoencoder:
    torch.manual_seed(0)
    kl = autoencoder_kl(image_size=16, in_channels=3, latent_channels=4, downsample=4, base_channels=8,
                        norm_num_groups=4)
    out = LatentAutoencoder(dict(kl.config), source="test")
    out.model.load_state_dict(kl.state_dict())
    return out


# ----- the Wan VAE and its frame rule --------------------------------------------------------------
def test_wan_tiny_preset_takes_9_frames_of_32x32_to_5x8x8x4_latents(tmp_path):
    from hydra.utils import instantiate

    from tests.helpers import compose_train
    cfg = compose_train(["data=shapes", "vae=wan_tiny"], tmp_path)
    model = instantiate(cfg.vae)
    assert type(model).__name__ == "AutoencoderKLWan"
    vae = LatentAutoencoder(dict(model.config))
    assert vae.kind == "wan" and vae.downsample == 4 and vae.temporal_factor == 2
    assert vae.latent_shape((3, 9, 32, 32)) == (4, 5, 8, 8)
    x = moving_squares(2, 9, 32)
    z = vae.encode(x)
    assert z.shape == (2, 4, 5, 8, 8)
    assert vae.decode(z).shape == x.shape


def test_causal_encode_equals_diffusers_where_its_chunks_fit_and_keeps_every_frame():
    """diffusers' AutoencoderKLWan.encode feeds 4 frames at a time: on 1 + 4k frames ours (2 at a
    time for a VAE that halves time) gives the same posterior; on 7 frames diffusers drops two.
    Decoding equals diffusers' up to its clamp to [-1, 1]."""
    vae = tiny_wan()
    x = moving_squares(2, 9, 16)
    ours = posterior(vae.model, x).parameters
    torch.testing.assert_close(ours, vae.model.encode(x).latent_dist.parameters, rtol=1e-5, atol=1e-5)
    four = tiny_wan(temporal_downsample=(True, True))          # time / 4, as Wan 2.1's own VAE
    torch.testing.assert_close(posterior(four.model, x).parameters, four.model.encode(x).latent_dist.parameters,
                               rtol=1e-5, atol=1e-5)
    assert four.latent_shape((3, 9, 16, 16)) == (4, 3, 4, 4)
    z = torch.randn(2, 4, 3, 4, 4) * 3               # the decoder: diffusers' own, but not clamped
    decoded = vae.decode(z)
    assert decoded.shape == (2, 3, 5, 16, 16) and decoded.abs().max() > 1
    torch.testing.assert_close(decoded.clamp(-1, 1), vae.model.decode(z).sample)
    seven = moving_squares(2, 7, 16)
    assert vae.model.encode(seven).latent_dist.mean.shape[2] == 3        # diffusers: frames 6 and 7 gone
    assert vae.moments(seven).shape == (2, 8, 4, 4, 4)                  # ours: 1 + 3 latent frames
    assert vae.decode(vae.encode(seven)).shape == seven.shape


def test_the_first_frame_alone_encodes_to_the_clips_first_latent_frame():
    """Causal in time: a one-frame clip (image-to-video's first frame) gives the latent frame the
    whole clip starts with."""
    vae = tiny_wan()
    x = moving_squares(2, 9, 16)
    torch.testing.assert_close(vae.moments(x[:, :, :1]), vae.moments(x)[:, :, :1], rtol=1e-5, atol=1e-5)


def test_a_frame_count_the_vae_cannot_take_is_an_error_in_the_encode_path():
    vae = tiny_wan()
    with pytest.raises(UserError, match=r"data.frames=8: the video VAE compresses time by 2 and takes 1 \+ 2k"):
        vae.encode(moving_squares(1, 8, 16))
    with pytest.raises(UserError, match=r"data.frames=8: vae=wan_tiny compresses time by 2"):
        vae.latent_shape((3, 8, 16, 16), vae="vae=wan_tiny")
    with pytest.raises(UserError, match="is a video VAE: it encodes clips"):
        vae.latent_shape((3, 16, 16))


def test_a_frame_count_the_vae_cannot_take_is_an_error_when_building_stage_1(tmp_path):
    from ddpm_lab.build import build
    with user_error("data.frames=8: vae=autoencoder_kl_wan compresses time by 2 and takes 1 + 2k frames (1, 3, 5"):
        build(compose(["stage=autoencoder", *WAN_TINY], tmp_path, frames=8))


def test_frame_rule_message_names_the_vae_choice_from_the_command_line(tmp_path):
    """ddpm-train stops with status 2 and the frame rule, before any checkpoint (the clip data's
    config given on a test-only search path)."""
    from tests.helpers import REPO, last_error_line, run_cli
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "tiny_clips.yaml").write_text(
        f"_target_: {__name__}.TinyClips\nframes: 9\nimage_size: 16\nbatch_size: 2\nseed: ${{seed}}\n")
    proc = run_cli("ddpm-train", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "stage=autoencoder",
                   "data=tiny_clips", "data.frames=8", "vae=wan_tiny", "logger=csv",
                   f"paths.output_dir={tmp_path / 'run'}", cwd=REPO, timeout=300)
    assert proc.returncode == 2 and FRAME_RULE in last_error_line(proc), proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----- an image AutoencoderKL on clips, and the latent normalisation ---------------------------------
def test_an_image_autoencoder_kl_encodes_clips_frame_by_frame():
    vae = tiny_kl()
    clips = moving_squares(3, 5, 16)
    assert vae.latent_shape((3, 5, 16, 16)) == (4, 5, 4, 4)
    moments = vae.moments(clips)
    assert moments.shape == (3, 8, 5, 4, 4)
    for f in range(5):
        torch.testing.assert_close(moments[:, :, f], vae.moments(clips[:, :, f]))
    z = vae.encode(clips, sample=False)
    decoded = vae.decode(z)
    assert decoded.shape == clips.shape
    for f in range(5):
        torch.testing.assert_close(decoded[:, :, f], vae.decode(z[:, :, f]))


def test_per_channel_normalisation_gives_zero_mean_unit_std_latents_on_its_data():
    vae = tiny_wan()
    clips = moving_squares(24, 9, 16, seed=1)
    raw = vae.encode(clips, generator=torch.Generator().manual_seed(0)).transpose(0, 1).flatten(1)
    assert raw.mean(1).abs().max() > 0.05 or (raw.std(1) - 1).abs().max() > 0.05    # not normalised already
    vae.scale, vae.shift = measure_normalisation(vae, clips)
    assert isinstance(vae.scale, list) and len(vae.scale) == len(vae.shift) == 4
    z = vae.encode(clips, generator=torch.Generator().manual_seed(0)).transpose(0, 1).flatten(1)
    assert z.mean(1).abs().max() < 0.05 and (z.std(1) - 1).abs().max() < 0.05
    x = moving_squares(2, 9, 16, seed=2)
    torch.testing.assert_close(vae.decode(vae.encode(x, sample=False)).clamp(-1, 1), vae.model.decode(
        vae.model.encode(x).latent_dist.mode()).sample, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="latent.scale has 3 values for the VAE's 4 latent channels"):
        LatentAutoencoder(dict(vae.model.config), scale=[1.0, 1.0, 1.0])
    # an image VAE keeps one scale (1 / std over everything) and its shift
    kl = tiny_kl()
    scale, shift = measure_normalisation(kl, moving_squares(6, 3, 16))
    assert isinstance(scale, float) and shift == 0.0


def test_clip_rows_put_each_clip_above_its_reconstruction():
    x, rec = torch.rand(3, 3, 5, 4, 4), torch.rand(3, 3, 5, 4, 4)
    frames, nrow = clip_rows(x, rec, max_clips=2)
    assert nrow == 5 and frames.shape == (2 * 2 * 5, 3, 4, 4)
    assert torch.equal(frames[7], rec[0, :, 2]) and torch.equal(frames[10 + 4], x[1, :, 4])


# ----- stage 1 on clips, then stage 2's latents -------------------------------------------------------
@pytest.fixture(scope="module")
def wan_stage1(tmp_path_factory):
    from ddpm_lab.train import run
    d = tmp_path_factory.mktemp("wan_stage1")
    metrics = run(compose(["stage=autoencoder", *WAN_TINY], d))
    return d, metrics


def test_stage1_trains_the_wan_vae_on_clips_and_logs_psnr(wan_stage1):
    d, metrics = wan_stage1
    assert metrics["val/psnr"] > 0 and "train/loss_epoch" in metrics
    assert list((d / "reconstructions").glob("epoch*.png"))
    vae = from_run(str(d))
    assert vae.kind == "wan" and vae.needs_scale and vae.latent_shape((3, 9, 16, 16)) == (4, 5, 4, 4)
    ckpt = torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["vae"]["_target_"] == "ddpm_lab.autoencoders.autoencoder_kl_wan"
    for name, value in vae.model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"model.{name}"]), name


def test_stage1_training_step_on_clips():
    from ddpm_lab.modules import AutoencoderModule
    vae = {"_target_": "ddpm_lab.autoencoders.autoencoder_kl_wan", "image_size": 16, "base_dim": 8}
    module = AutoencoderModule(vae=vae, data_info={"image_shape": [3, 9, 16, 16]})
    x = moving_squares(2, 9, 16)
    loss, parts = module.losses(x, sample=True)
    loss.backward()
    assert parts["reconstruction"].shape == x.shape and parts["kl"] > 0
    assert module.model.encoder.conv_in.weight.grad.abs().sum() > 0
    module.val_psnr.update(parts["reconstruction"].clamp(-1, 1), x)
    assert torch.isfinite(module.val_psnr.compute())


def test_stage2_builds_on_wan_latents_with_a_5d_cache(wan_stage1, tmp_path):
    from ddpm_lab.build import build
    from ddpm_lab.data.latents import encode_moments
    cache = tmp_path / "cache"
    overrides = ["vae=trained", f"vae.path={wan_stage1[0]}", *VIDEO_NET, f"latents.cache_dir={cache}"]
    module, dm = build(compose(overrides, tmp_path / "a"))
    latent = module.hparams["latent"]
    assert latent["kind"] == "wan" and len(latent["scale"]) == len(latent["shift"]) == 4
    assert module.sample_shape == (4, 5, 4, 4)
    assert module.hparams["net"]["in_channels"] == 4 and module.hparams["net"]["image_size"] == 4
    dm.prepare_data()
    assert not dm.cache_hit and len(list(cache.glob("tiny_clips-*.pt"))) == 1
    dm.setup("fit")
    moments = dm.train_set.columns.moments
    assert moments.shape == (9, 8, 5, 4, 4)
    torch.testing.assert_close(moments, encode_moments(module.autoencoder, dm.data.train_set.columns.image))
    z = module.diffusion_input(dm.train_set.columns)
    assert z.shape == (9, 4, 5, 4, 4)
    _, dm2 = build(compose(overrides, tmp_path / "b"))
    dm2.prepare_data()
    assert dm2.cache_hit
    with user_error(FRAME_RULE.replace("vae=wan_tiny", "vae=from_run")):
        build(compose(overrides, tmp_path / "c", frames=8))


def test_stage2_per_frame_option_reuses_an_image_vae_on_clips(tmp_path):
    from ddpm_lab.build import build
    kl = autoencoder_kl(image_size=16, in_channels=3, downsample=4, base_channels=8, norm_num_groups=4)
    kl.register_to_config(scaling_factor=0.5)
    kl.save_pretrained(tmp_path / "vae")
    overrides = ["vae=pretrained", f"vae.path={tmp_path / 'vae'}", *VIDEO_NET,
                 f"latents.cache_dir={tmp_path / 'cache'}"]
    module, dm = build(compose(overrides, tmp_path / "a", frames=4))
    assert module.hparams["latent"]["kind"] == "kl" and module.hparams["latent"]["scale"] == 0.5
    assert module.sample_shape == (4, 4, 4, 4) and module.hparams["net"]["image_size"] == 4
    dm.setup("fit")
    assert dm.train_set.columns.moments.shape == (9, 8, 4, 4, 4)


def test_an_old_format_latent_without_kind_still_builds(tmp_path):
    """Checkpoints written before video latents: `latent` with float scale / shift and no kind."""
    from ddpm_lab.build import container
    from ddpm_lab.modules import DiffusionModule
    from tests.helpers import compose_train
    cfg = compose_train(["data=shapes", "data.image_size=8", "net=unet_tiny", "net.in_channels=4",
                         "net.image_size=4"], tmp_path)
    kl = autoencoder_kl(image_size=8, in_channels=3, downsample=2, base_channels=8, norm_num_groups=4)
    old = {"config": dict(kl.config), "scale": 0.7, "shift": 0.1, "source": "old", "cached": True}
    module = DiffusionModule(net=container(cfg.net), schedule=container(cfg.schedule),
                             diffusion=container(cfg.diffusion), sampler={**container(cfg.sampler), "clip_x0": False},
                             data_info={"image_shape": [3, 8, 8]}, latent=old)
    assert module.autoencoder.kind == "kl" and module.autoencoder.scale == 0.7 and module.autoencoder.shift == 0.1
    assert module.sample_shape == (4, 4, 4)
    moments = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(module.autoencoder.scaled(moments, sample=False), (moments[:, :4] - 0.1) * 0.7)
