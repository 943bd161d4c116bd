"""The diffusion transformers: our DiT (adaLN-Zero, Wan-style RoPE, cross-attention) and the adapter
around diffusers' WanTransformer3DModel, behind net(x_t, t, cond); both train and sample."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from ddpm_lab.data.shapes import caption_words
from ddpm_lab.diffusion.guidance import Guider, combine
from ddpm_lab.errors import UserError
from ddpm_lab.nets import DiT
from ddpm_lab.nets.rope import axis_dims, grid_positions, rope_angles, rope_freqs, rotate
from ddpm_lab.nets.wan import WanTransformer

TEXT = {"vocabulary": caption_words(), "max_tokens": 9, "dim": 16, "layers": 1, "heads": 2}
CONDITIONS = ["none", "label", "text"]


def small_dit(condition: str = "none", **kw) -> DiT:
    torch.manual_seed(0)
    return DiT(**{"image_size": 8, "in_channels": 3, "patch_size": 2, "dim": 24, "depth": 2, "heads": 2,
                  "num_classes": 4 if condition == "label" else None, "text": TEXT if condition == "text" else None,
                  **kw})


def small_wan(condition: str = "none", **kw) -> WanTransformer:
    torch.manual_seed(0)
    return WanTransformer(**{"image_size": 8, "in_channels": 3, "patch_size": 2, "num_attention_heads": 2,
                             "attention_head_dim": 8, "num_layers": 2, "ffn_dim": 32,
                             "num_classes": 4 if condition == "label" else None,
                             "text": TEXT if condition == "text" else None, **kw})


def condition_of(net, condition: str, n: int = 3) -> torch.Tensor | None:
    if condition == "label":
        return torch.tensor([0, 3, 1, 2][:n])
    if condition == "text":
        return net.text_encoder.vocabulary.encode(["a red circle", "a large blue square at the top", ""][:n])
    return None


def randomized(net: torch.nn.Module) -> torch.nn.Module:
    """Every weight drawn at random: no zero gate or output hides a wrong path."""
    torch.manual_seed(1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return net.eval()


# ----- rotary position embedding ---------------------------------------------------------------
@pytest.mark.parametrize("head_dim", [6, 8, 12, 16, 32, 64, 128])
def test_rope_split_and_frequencies_are_wans(head_dim):
    wan = WanRotaryPosEmbed(head_dim, patch_size=(1, 2, 2), max_seq_len=16)
    assert axis_dims(head_dim) == (wan.t_dim, wan.h_dim, wan.w_dim) and sum(axis_dims(head_dim)) == head_dim
    cos_wan, sin_wan = wan(torch.zeros(1, 1, 3, 8, 10))           # a (3, 4, 5) token grid
    freqs = rope_freqs((3, 4, 5), head_dim, 10000.0, "cpu")
    torch.testing.assert_close(freqs.real, cos_wan[0, :, 0, 0::2].float())
    torch.testing.assert_close(freqs.imag, sin_wan[0, :, 0, 1::2].float())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rope_scores_depend_only_on_relative_positions(axis):
    torch.manual_seed(0)
    head_dim, positions = 24, grid_positions((3, 4, 5))
    q, k = torch.randn(2, len(positions), head_dim), torch.randn(2, len(positions), head_dim)

    def scores(pos):
        angles = rope_angles(pos, head_dim)
        freqs = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
        return rotate(q, freqs) @ rotate(k, freqs).transpose(-1, -2)

    shifted = positions.clone()
    shifted[:, axis] += 7.0
    torch.testing.assert_close(scores(shifted), scores(positions), rtol=1e-4, atol=1e-4)
    moved = positions.clone()
    moved[0, axis] += 1.0                                         # one token moved: its scores change
    assert (scores(moved) - scores(positions))[:, 0].abs().max() > 1e-3


# ----- our DiT ---------------------------------------------------------------------------------
def test_dit_block_is_the_identity_and_the_network_outputs_zeros_at_init():
    net = small_dit("text")
    ids = condition_of(net, "text")
    emb, context = net.embed(torch.tensor([1, 500, 999]), ids, 3, "cpu", torch.float32)
    mod = net.time_proj(emb).unflatten(1, (6, -1))
    rope = rope_freqs((1, 4, 4), 12, 10000.0, "cpu")[:, None]
    h = torch.randn(3, 16, 24)
    for block in net.blocks:
        assert torch.equal(block(h, mod, rope, context), h)
    for condition in CONDITIONS:
        net = small_dit(condition)
        out = net(torch.randn(3, 3, 8, 8), torch.tensor([1, 500, 999]), condition_of(net, condition))
        assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("condition", CONDITIONS)
def test_dit_shapes_and_time_inputs(condition):
    net = randomized(small_dit(condition, out_channels=6))
    x, cond = torch.randn(3, 3, 8, 8), condition_of(net, condition)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 10, 999]), cond)
        assert out.shape == (3, 6, 8, 8)
        assert net(x, torch.tensor(5), cond).shape == out.shape                  # one time for the batch
        fm = net(x, torch.tensor([0.5, 250.25, 999.9]), cond)                    # flow matching: 1000 * s
        assert torch.isfinite(fm).all() and (fm - out).abs().max() > 1e-4
        assert net.forward_frames(torch.randn(3, 3, 2, 8, 8), torch.tensor(5), cond).shape == (3, 6, 2, 8, 8)
        assert randomized(small_dit(condition, qk_norm=False))(x, torch.tensor(5), cond).shape == (3, 3, 8, 8)


def test_training_moves_every_dit_parameter():
    """adaLN-Zero does not stall training: the first step makes the output non-zero (the output
    layer), the second opens the gates, and from then on every parameter receives a gradient."""
    net = small_dit("text")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, t, ids = torch.randn(3, 3, 8, 8), torch.tensor([1, 500, 999]), condition_of(net, "text")
    for step in range(3):
        opt.zero_grad()
        (net(x, t, ids) - x).pow(2).mean().backward()
        if step < 2:
            opt.step()
        if step == 0:
            assert net(x, t, ids).abs().max() > 1e-3
    silent = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert silent == []


@pytest.mark.parametrize("kw, message", [
    ({"patch_size": 3}, r"net.patch_size=3 must divide the input's height and width \(8x8\)"),
    ({"dim": 24, "heads": 5}, "net.dim=24 must be a multiple of net.heads=5"),
    ({"dim": 16, "heads": 4}, r"net.dim=16 / net.heads=4 gives a head dimension of 4; .* even head dimension >= 6"),
    ({"dim": 18, "heads": 2}, "head dimension of 9"),
])
def test_dit_configuration_errors(kw, message):
    with pytest.raises(UserError, match=message):
        small_dit(**kw)


# ----- diffusers' Wan transformer ----------------------------------------------------------------
@pytest.mark.parametrize("condition", CONDITIONS)
def test_wan_adapter_matches_diffusers_on_one_frame_videos(condition):
    net = small_wan(condition)
    x, cond = torch.randn(3, 3, 8, 8), condition_of(net, condition)
    t = torch.tensor([0.5, 250.25, 999.0])                                       # fractional times work
    with torch.no_grad():
        out = net(x, t, cond)
        assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))  # zero head at init
        randomized(net)
        out = net(x, t, cond)
        direct = net.transformer(x[:, :, None], t, encoder_hidden_states=net.context(cond, 3, "cpu")).sample
        torch.testing.assert_close(out, direct[:, :, 0])
        assert (out[0] - out[1]).abs().max() > 1e-4
        assert net(x, torch.tensor(7), cond).shape == x.shape
    if condition == "text":                                                      # padding states are zero
        states = net.context(cond, 3, "cpu")
        assert (states[cond == 0] == 0).all() and (states[cond != 0] != 0).any()


@pytest.mark.parametrize("kw, message", [
    ({"image_size": 10, "patch_size": 4}, r"net.patch_size=4 must divide the input's height and width \(10x10\)"),
    ({"attention_head_dim": 4}, r"net.attention_head_dim=4 gives a head dimension of 4; .* >= 6"),
    ({"attention_head_dim": 7}, "head dimension of 7"),
    ({"rope_max_seq_len": 3}, r"net.rope_max_seq_len=3 must be >= the tokens per side \(4"),
    ({"qk_norm": None}, "net.qk_norm=None is not allowed"),
])
def test_wan_configuration_errors(kw, message):
    with pytest.raises(UserError, match=message):
        small_wan(**kw)
    with pytest.raises(UserError, match="net.patch_size=2 must divide the input's height and width"):
        small_wan()(torch.randn(1, 3, 8, 9), torch.tensor(1))


# ----- guidance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make_net", [small_dit, small_wan])
@pytest.mark.parametrize("condition", ["label", "text"])
def test_null_condition_serves_the_guider(make_net, condition):
    net = randomized(make_net(condition))
    x, t, cond = torch.randn(3, 3, 8, 8), torch.tensor([5, 50, 500]), condition_of(net, condition)
    with torch.no_grad():
        conditional, unconditional = net(x, t, cond), net(x, t, None)
        torch.testing.assert_close(Guider(1.0)(net, x, t, cond), conditional)
        torch.testing.assert_close(unconditional, net(x, t, net.null_condition(3, "cpu")))
        torch.testing.assert_close(Guider(3.0)(net, x, t, cond), combine(conditional, unconditional, 3.0),
                                   rtol=1e-4, atol=1e-4)
    assert (conditional - unconditional).abs().max() > 1e-4


# ----- training and sampling through the configs -----------------------------------------------
SMALL = ["logger=csv", "sampler.steps=2", "callbacks.sample_grid.num_samples=2", "trainer.max_epochs=1",
         "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "data.batch_size=16"]


def test_dit_small_trains_on_digits(tmp_path):
    from ddpm_lab import train
    from tests.helpers import QUICK, compose_train
    cfg = compose_train(["experiment=digits_ddpm", "net=dit_small", "++trainer.fast_dev_run=true", *QUICK,
                         "data.batch_size=16"], tmp_path)
    assert torch.isfinite(torch.tensor(train.run(cfg)["train/loss_step"]))


@pytest.mark.parametrize("overrides, sample", [
    (["experiment=shapes_text", "net=dit_small", "~net.attention_resolutions", "~net.cross_attention_resolutions",
      "data.num_images=100", "net.depth=2", "net.dim=48", "++net.text={dim:16,layers:1,heads:2}"],
     {"prompts": "a red circle", "guidance_scale": 3.0}),
    (["net=wan_tiny", "guidance=classifier_free"], {"labels": [1, 2], "guidance_scale": 3.0}),
    (["net=wan_tiny", "data=shapes", "data.image_size=16", "data.num_images=100", "guidance=text",
      "++net.text={dim:16,layers:1,heads:2}"], {"prompts": "a blue square"}),
], ids=["dit_text", "wan_label", "wan_text"])
def test_transformers_train_and_sample(tmp_path, overrides, sample):
    from ddpm_lab import train
    from ddpm_lab.modules import DiffusionModule
    from tests.helpers import compose_train
    train.run(compose_train([*overrides, *SMALL], tmp_path))
    module = DiffusionModule.load(tmp_path)
    images = module.sample(2, steps=2, **sample)
    assert images.shape == (2, *module.sample_shape) and torch.isfinite(images).all()
