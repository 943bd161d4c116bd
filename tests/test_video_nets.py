"""The networks on video clips (N, C, F, H, W): our DiT with full or factorised space-time attention
(Latte's interleaved spatial and temporal blocks) and 3-D RoPE, and diffusers' Wan transformer on
multi-frame input; images stay one-frame clips."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.errors import UserError
from ddpm_lab.nets import DiT
from ddpm_lab.nets.dit import Attention, DiTBlock
from ddpm_lab.nets.rope import absolute_positions, frame_positions, rope_angles, rope_freqs, rotate
from ddpm_lab.nets.video_attention import block_axes, grouped_self_attention
from tests.test_dit import CONDITIONS, condition_of, randomized, small_wan

ATTENTIONS = ["full", "factorised"]
GRID = (3, 2, 2)                     # (frames, height, width) tokens of a (3, 4, 4) clip in 2x2 patches


def video_dit(condition: str = "none", attention: str = "factorised", **kw) -> DiT:
    from tests.test_dit import small_dit
    return small_dit(condition, attention=attention, depth=4, **kw)


def clip(n: int = 3, frames: int = 3, side: int = 8) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(n, 3, frames, side, side)


# ----- the image DiT is the one-frame case --------------------------------------------------------
@pytest.mark.parametrize("frame_embedding", [False, True])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_video_dit_on_one_frame_clips_is_the_image_dit(attention, frame_embedding):
    """Same weights, both modes: a one-frame clip gives the image's output. With factorised attention
    an image is a one-frame clip too, so its temporal blocks attend each token to itself only (see
    the next test); full and factorised share every parameter name and shape. The frame embedding
    is zero at frame 0 and has no parameters."""
    video = randomized(video_dit("text", attention, frame_embedding=frame_embedding))
    image = video_dit("text", attention)
    image.load_state_dict(video.state_dict())
    video_dit("text", "full" if attention == "factorised" else "factorised").load_state_dict(video.state_dict())
    x, t, cond = torch.randn(3, 3, 8, 8), torch.tensor([3, 300, 900]), condition_of(video, "text")
    with torch.no_grad():
        out = video(x[:, :, None], t, cond)
        assert out.shape == (3, 3, 1, 8, 8)
        torch.testing.assert_close(out[:, :, 0], image.eval()(x, t, cond), rtol=0, atol=0)


def test_one_frame_factorised_blocks_are_full_in_space_and_the_value_path_in_time():
    """On one frame a spatial block is a full block, and temporal attention (one key per query) is
    out(v(x)): the softmax over a single key is 1."""
    torch.manual_seed(0)
    full, spatial, temporal = (randomized(DiTBlock(24, 2, 4.0, None, True, axis)) for axis in
                               ("full", "spatial", "temporal"))
    spatial.load_state_dict(full.state_dict())
    grid = (1, 4, 4)
    h, mod = torch.randn(2, 16, 24), torch.randn(2, 6, 24)
    rope = rope_freqs(grid, 12, 10000.0, "cpu")[:, None]
    with torch.no_grad():
        torch.testing.assert_close(spatial(h, mod, rope, grid=grid), full(h, mod, rope, grid=grid))
        attn = temporal.attn
        torch.testing.assert_close(grouped_self_attention(attn, h, rope, grid, "temporal"),
                                   attn.out(attn.kv(h).chunk(2, dim=-1)[1]))


# ----- absolute frame positions --------------------------------------------------------------------
@pytest.mark.parametrize("frame_embedding", [False, True])
def test_the_frame_embedding_tells_frames_apart_where_rope_alone_cannot(frame_embedding):
    """Rotary positions give only relative offsets: on a clip whose frames are all the same (as in
    pure noise, where no frame differs from another in distribution), factorised attention with RoPE
    alone returns the same output in every frame, so it cannot predict a mean clip that moves (the
    ideal prediction at s = 1 for "moving left": benchmarks/video_motion_probe.py). With the
    frame embedding each frame gets its own output."""
    net = randomized(video_dit("text", "factorised", frame_embedding=frame_embedding))
    frame = torch.randn(3, 3, 1, 8, 8)
    with torch.no_grad():
        out = net(frame.expand(-1, -1, 5, -1, -1), torch.tensor([1000, 1000, 1000]), condition_of(net, "text"))
    spread = (out - out[:, :, :1]).abs().amax(dim=(0, 1, 3, 4))        # per frame, against frame 0
    if frame_embedding:
        assert spread[1:].min() > 1e-2
    else:
        torch.testing.assert_close(spread, torch.zeros_like(spread), rtol=0, atol=1e-5)


@pytest.mark.parametrize("position_embedding", [False, True])
def test_the_position_embedding_tells_tokens_apart_where_rope_alone_cannot(position_embedding):
    """On a clip of identical patches every token has the same value vector, so attention with any
    rotary scores returns the same output at every (t, h, w): nothing says where a token is. The
    absolute position embedding gives each token its own output."""
    net = randomized(video_dit("text", "full", position_embedding=position_embedding))
    x = torch.full((3, 3, 3, 8, 8), 0.3)
    with torch.no_grad():
        out = net(x, torch.tensor([1000, 1000, 1000]), condition_of(net, "text"))[..., ::2, ::2]   # a pixel per token
    spread = (out - out[:, :, :1, :1, :1]).abs().amax(dim=(0, 1))
    if position_embedding:
        assert spread.flatten()[1:].min() > 1e-3
    else:
        torch.testing.assert_close(spread, torch.zeros_like(spread), rtol=0, atol=1e-5)


# ----- 3-D rotary positions ------------------------------------------------------------------------
def test_rope_scores_depend_only_on_the_relative_t_h_w_offset():
    torch.manual_seed(0)
    head_dim = 24
    q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)

    def score(p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        angles = rope_angles(torch.stack([p, p + d]), head_dim)
        freqs = torch.polar(torch.ones_like(angles), angles)
        return rotate(q, freqs[0]) @ rotate(k, freqs[1])

    starts = [torch.tensor(p, dtype=torch.float64) for p in ([0, 0, 0], [5, 1, 7], [2, 9, 3], [11, 4, 0])]
    offsets = [torch.tensor(d, dtype=torch.float64) for d in ([0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                                                               [2, -1, 3], [-3, 2, 0])]
    per_offset = []
    for d in offsets:
        scores = torch.stack([score(p, d) for p in starts])
        torch.testing.assert_close(scores, scores[:1].expand_as(scores), rtol=1e-9, atol=1e-9)
        per_offset.append(scores[0])
    gaps = (torch.stack(per_offset)[:, None] - torch.stack(per_offset)[None]).abs()
    assert gaps[~torch.eye(len(offsets), dtype=torch.bool)].min() > 1e-3   # each offset its own score


# ----- factorised attention --------------------------------------------------------------------------
def _attention_inputs():
    torch.manual_seed(0)
    attn = randomized(Attention(24, 2))
    x = torch.randn(2, GRID[0] * GRID[1] * GRID[2], 24)
    return attn, x, rope_freqs(GRID, 12, 10000.0, "cpu")[:, None]


def test_spatial_attention_sees_only_its_frame():
    attn, x, rope = _attention_inputs()
    frame = torch.arange(x.shape[1]) // (GRID[1] * GRID[2])             # each token's frame
    moved = x.clone()
    moved[:, frame == 1] += torch.randn_like(moved[:, frame == 1])
    with torch.no_grad():
        out, out_moved = (grouped_self_attention(attn, y, rope, GRID, "spatial") for y in (x, moved))
        torch.testing.assert_close(out_moved[:, frame != 1], out[:, frame != 1], rtol=0, atol=0)
        assert (out_moved[:, frame == 1] - out[:, frame == 1]).abs().min() > 0
        full, full_moved = attn(x, rope=rope), attn(moved, rope=rope)
        assert (full_moved[:, frame == 0] - full[:, frame == 0]).abs().max() > 1e-3   # full attention does see it
        same_frame = frame[:, None] == frame[None]                      # the reshape is the masked full attention
        torch.testing.assert_close(out, attn(x, rope=rope, mask=same_frame), rtol=1e-5, atol=1e-5)


def test_temporal_attention_sees_only_its_location():
    attn, x, rope = _attention_inputs()
    where = torch.arange(x.shape[1]) % (GRID[1] * GRID[2])               # each token's (h, w) location
    moved = x.clone()
    moved[:, where == 2] += torch.randn_like(moved[:, where == 2])
    with torch.no_grad():
        out, out_moved = (grouped_self_attention(attn, y, rope, GRID, "temporal") for y in (x, moved))
        torch.testing.assert_close(out_moved[:, where != 2], out[:, where != 2], rtol=0, atol=0)
        assert (out_moved[:, where == 2] - out[:, where == 2]).abs().min() > 0
        same_place = where[:, None] == where[None]
        torch.testing.assert_close(out, attn(x, rope=rope, mask=same_place), rtol=1e-5, atol=1e-5)


def test_factorised_blocks_alternate_and_the_choice_is_checked():
    assert block_axes("factorised", 5) == ["spatial", "temporal", "spatial", "temporal", "spatial"]
    assert [b.axis for b in video_dit(attention="full").blocks] == ["full"] * 4
    with pytest.raises(UserError, match="net.attention='divided' is not allowed; choose one of: full, factorised"):
        video_dit(attention="divided")
    with pytest.raises(UserError, match=r"net=DiT takes images \(N, C, H, W\) or clips \(N, C, F, H, W\)"):
        video_dit()(torch.randn(2, 3, 8), torch.tensor(1))


# ----- shapes, conditioning, zero init --------------------------------------------------------------
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("condition", CONDITIONS)
def test_video_dit_shapes_conditioning_and_zero_init(condition, attention):
    net = video_dit(condition, attention, out_channels=6)
    x, t, cond = clip(), torch.tensor([1.0, 500.5, 999.0]), condition_of(net, condition)
    with torch.no_grad():
        out = net(x, t, cond)
        assert out.shape == (3, 6, 3, 8, 8) and torch.equal(out, torch.zeros_like(out))
        randomized(net)
        out = net(x, t, cond)
        assert out.shape == (3, 6, 3, 8, 8) and torch.isfinite(out).all()
        assert (out[:, :, 0] - out[:, :, 1]).abs().max() > 1e-4         # frames differ
        if condition != "none":                                         # the condition reaches every frame
            other = net(x, t, None)
            assert ((out - other).abs().amax(dim=(0, 1, 3, 4)) > 1e-4).all()


# ----- diffusers' Wan on clips ------------------------------------------------------------------------
@pytest.mark.parametrize("condition", CONDITIONS)
def test_wan_on_clips(condition):
    net = small_wan(condition)
    x, t, cond = clip(frames=5), torch.tensor([0.5, 250.0, 999.0]), condition_of(net, condition)
    with torch.no_grad():
        out = net(x, t, cond)
        assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
        randomized(net)
        out = net(x, t, cond)
        direct = net.transformer(x, t, encoder_hidden_states=net.context(cond, 3, "cpu")).sample
        torch.testing.assert_close(out, direct)
        assert (out[:, :, 0] - out[:, :, 1]).abs().max() > 1e-4
        torch.testing.assert_close(net(x[:, :, 2], t, cond), net(x[:, :, 2:3], t, cond)[:, :, 0])


def test_wan_frame_embedding_adds_each_tokens_frame_index_to_the_patch_embedding():
    """The hook adds frame_positions to Wan's patch tokens (frame 0: nothing, so images are unchanged)."""
    plain, marked = small_wan("text"), small_wan("text", frame_embedding=True)
    marked.load_state_dict(randomized(plain).state_dict())
    x = clip(2, frames=4)
    conv = plain.transformer.patch_embedding(x)                              # (N, dim, F, h, w)
    added = marked.transformer.patch_embedding(x) - conv
    expected = frame_positions(tuple(conv.shape[2:]), conv.shape[1]).T.reshape(conv.shape[1:])
    torch.testing.assert_close(added, expected.expand_as(added))
    assert expected[:, 0].abs().max() == 0 and expected[:, 1:].abs().amin(dim=(1, 2, 3)).max() > 0.1
    t, cond = torch.tensor([5.0, 900.0]), condition_of(plain, "text", 2)
    with torch.no_grad():
        torch.testing.assert_close(marked.eval()(x[:, :, 0], t, cond), plain(x[:, :, 0], t, cond))
        assert (marked(x, t, cond) - plain(x, t, cond)).abs().max() > 1e-3


def test_wan_position_embedding_adds_each_tokens_absolute_position_to_the_patch_embedding():
    """The hook adds absolute_positions (t, h, w) to Wan's patch tokens: tokens of a uniform clip differ."""
    plain, marked = small_wan("text"), small_wan("text", position_embedding=True)
    marked.load_state_dict(randomized(plain).state_dict())
    x = torch.zeros(1, 3, 4, 8, 8)
    conv = plain.transformer.patch_embedding(x)
    added = marked.transformer.patch_embedding(x) - conv
    expected = absolute_positions(tuple(conv.shape[2:]), conv.shape[1]).T.reshape(conv.shape[1:])
    torch.testing.assert_close(added, expected.expand_as(added))
    assert torch.unique(added.flatten(2)[0].T, dim=0).shape[0] == 4 * 4 * 4      # every token its own
    assert conv.flatten(2)[0].T.unique(dim=0).shape[0] == 1                       # without it: all alike


def test_wan_checks_frames_against_rope_max_seq_len():
    net = small_wan(rope_max_seq_len=4)                                    # 8 / 2 = 4 tokens per side: fits
    assert net(clip(1, frames=4), torch.tensor(1)).shape == (1, 3, 4, 8, 8)
    with pytest.raises(UserError, match=r"net.rope_max_seq_len=4 must be >= the clip's frames \(5\)"):
        net(clip(1, frames=5), torch.tensor(1))
    with pytest.raises(UserError, match=r"net.rope_max_seq_len=4 must be >= the tokens per side \(5"):
        net(torch.randn(1, 3, 2, 10, 10), torch.tensor(1))


# ----- training --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", ["dit_full", "dit_factorised", "wan"])
def test_video_networks_train(make):
    """A few AdamW steps on a fixed batch reduce a regression loss whose target mixes frames (the
    clip one frame later), so it needs attention across time."""
    net = small_wan() if make == "wan" else video_dit(attention=make.removeprefix("dit_"))
    x, t = clip(4, frames=4), torch.tensor([10, 200, 500, 900])
    target = torch.roll(x, 1, dims=2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = (net(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ----- the configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dit_video", "wan"])
def test_video_net_configs_build_and_run_on_16x16x8_clips(name):
    from hydra.utils import instantiate

    from ddpm_lab.config_check import check_config
    from tests.test_config_check import compose_app
    cfg = compose_app("train", [f"net={name}"])
    check_config(cfg, "train")
    net = instantiate({**cfg.net, "in_channels": 3})
    with torch.no_grad():
        assert net(torch.randn(1, 3, 8, 16, 16), torch.tensor(5)).shape == (1, 3, 8, 16, 16)
    with pytest.raises(UserError, match="net.attention='x' is not allowed"):
        check_config(compose_app("train", ["net=dit_video", "net.attention=x"]), "train")
