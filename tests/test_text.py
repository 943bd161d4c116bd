"""Text conditioning: the vocabulary, the text encoder's padding mask, cross-attention in our UNet
and diffusers' UNet2DConditionModel, empty-prompt dropout, and prompts on the command line."""

from __future__ import annotations

import pytest
import torch

from ddpm_lab.data.shapes import ShapesDataModule, caption_words, class_prompt
from ddpm_lab.diffusion.guidance import Guider, combine, drop_condition
from ddpm_lab.errors import UserError
from ddpm_lab.nets.conditioning import PAD, START, TextEncoder, Vocabulary

WORDS = caption_words()


def test_vocabulary_round_trip_and_errors():
    vocab = Vocabulary(WORDS, max_tokens=9)
    ids = vocab.encode(["a Small red circle, at the top left", "", "a blue square"])
    assert ids.shape == (3, 9) and (ids[:, 0] == START).all()
    assert vocab.decode(ids) == ["a small red circle at the top left", "", "a blue square"]
    assert (ids[1, 1:] == PAD).all()                        # the empty prompt: the start token alone
    with pytest.raises(UserError, match=r"unknown word\(s\) 'octagon', 'purple'; the model knows 18 words"):
        vocab.encode(["a purple octagon", "a red octagon"])
    with pytest.raises(UserError, match="has 9 words; the model reads at most 8"):
        vocab.encode(["a small red circle at the top left left"])


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = TextEncoder(WORDS, max_tokens=16, dim=32, layers=2, heads=4).eval()
    short, long = Vocabulary(WORDS, 6).encode(["a red circle"]), enc.vocabulary.encode(["a red circle"])
    with torch.no_grad():
        s_states, s_mask, s_pooled = enc(short)
        l_states, l_mask, l_pooled = enc(long)
        _, _, other = enc(enc.vocabulary.encode(["a blue circle"]))
    assert s_mask.sum() == l_mask.sum() == 4
    torch.testing.assert_close(s_pooled, l_pooled)
    torch.testing.assert_close(s_states[s_mask], l_states[l_mask])
    assert (s_pooled - other).abs().max() > 1e-3            # and the words matter


def tiny_text_unet():
    from ddpm_lab.nets import UNet
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), dropout=0.0, norm_groups=4,
               text={"vocabulary": WORDS, "max_tokens": 9, "dim": 16, "layers": 1, "heads": 2}).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net


def tiny_text_diffusers_unet():
    from ddpm_lab.nets.diffusers import DiffusersUNet2DCondition
    torch.manual_seed(0)
    net = DiffusersUNet2DCondition(image_size=8, in_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                                   attention_levels=(False, True), attention_head_dim=4, norm_num_groups=4,
                                   text={"vocabulary": WORDS, "max_tokens": 9, "dim": 16, "layers": 1, "heads": 2})
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net.eval()


@pytest.mark.parametrize("make_net", [tiny_text_unet, tiny_text_diffusers_unet])
def test_text_networks_condition_on_the_prompt(make_net):
    net = make_net()
    ids = net.text_encoder.vocabulary.encode(["a red circle", "a large blue square at the top", "", "a red circle"])
    x, t = torch.randn(4, 3, 8, 8), torch.tensor([5, 50, 500, 5])
    with torch.no_grad():
        out = net(x, t, ids)
        empty = net(x, t, net.text_encoder.empty(4))
        none = net(x, t, None)
        batched = Guider(3.0, 0.5)(net, x, t, ids)
        separate = combine(net(x, t, ids), net(x, t, None), 3.0, 0.5)
        repeat = net(x[[0, 0]], t[[0, 0]], ids[[0, 3]])
    assert out.shape == x.shape
    torch.testing.assert_close(none, empty)                  # no prompt = the empty prompt
    torch.testing.assert_close(out[2], empty[2])
    assert (out[0] - empty[0]).abs().max() > 1e-4            # the prompt changes the prediction
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(repeat[0], repeat[1])


def test_cross_attention_reads_only_the_prompt_tokens():
    net = tiny_text_unet()
    ids = net.text_encoder.vocabulary.encode(["a red circle"])
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([100])
    with torch.no_grad():
        a = net(x, t, ids)
        # what sits behind the padding mask is never read
        net.text_encoder.position.data[4:] += 5.0
        b = net(x, t, ids)
    torch.testing.assert_close(a, b)


def test_prompt_dropout_replaces_whole_prompts_by_the_empty_prompt():
    enc = TextEncoder(WORDS, max_tokens=9, dim=16, layers=1, heads=2)
    ids = enc.vocabulary.encode(["a small red circle at the top left"]).expand(100_000, -1)
    torch.manual_seed(0)
    dropped = drop_condition(ids, enc.empty(1)[0], 0.1)
    is_empty = (dropped == enc.empty(1)[0]).all(dim=1)
    assert abs(is_empty.float().mean().item() - 0.1) < 0.003
    assert torch.equal(dropped[~is_empty], ids[~is_empty])


def test_shapes_batches_carry_caption_tokens_and_short_captions():
    dm = ShapesDataModule(num_images=400, image_size=16)
    dm.setup()
    split = dm.train_set[:]
    y, ids = split.label, split.tokens
    texts = dm.vocabulary.decode(ids)
    assert texts == dm.train_captions
    short = [t for t in texts if "small" not in t and "large" not in t]
    assert 0.25 < len(short) / len(texts) < 0.45            # 1/2 shortened x 2/3 of those lose the size
    for text, label in zip(texts, y.tolist()):
        assert class_prompt(label).split()[1:] == [w for w in text.split() if w in ("red", "green", "blue", "yellow",
                                                                                   "circle", "square", "triangle")]
    with pytest.raises(UserError, match="data.partial_captions=2 must lie in"):
        ShapesDataModule(partial_captions=2)


# ----- training and the command line --------------------------------------------------------------
TEXT = ["data=shapes", "data.image_size=8", "data.num_images=200", "net=unet_tiny", "guidance=text",
        "++net.text={dim:16,layers:1,heads:2}", "logger=csv", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "sampler.steps=2",
        "callbacks.sample_grid.num_samples=12"]


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    d = tmp_path_factory.mktemp("text")
    run(compose_train(TEXT, d))
    return d / "checkpoints" / "last.ckpt"


def test_text_checkpoint_keeps_its_vocabulary_and_samples_prompts(text_checkpoint):
    from ddpm_lab.modules import DiffusionModule
    ckpt = torch.load(text_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["net"]["text"]["vocabulary"] == WORDS
    assert ckpt["hyper_parameters"]["data_info"]["class_prompts"][:2] == ["a red circle", "a green circle"]
    module = DiffusionModule.load(text_checkpoint.parent.parent)        # a run folder: its last checkpoint
    assert module.sample(2, prompts="a blue square", guidance_scale=3.0, steps=2).shape == (2, 3, 8, 8)
    assert module.sample(2, prompts=["a blue square", ""], steps=2).shape == (2, 3, 8, 8)
    a = module.sampling_conditions(3, labels=[0, 5, 11])
    assert module.net.text_encoder.vocabulary.decode(a) == ["a red circle", "a green square", "a yellow triangle"]
    with pytest.raises(UserError, match="prompt: 2 prompts for 3 samples"):
        module.sample(3, prompts=["a red circle", "a blue square"], steps=2)


@pytest.mark.parametrize("args, message", [
    (["prompt='a purple circle'"], "unknown word(s) 'purple'"),
    (["label=12"], "label=12 is outside the 12 classes of shapes (0..11)"),
    (["guidance.scale=-2"], "guidance.scale=-2.0 must be >= 0"),
])
def test_sample_cli_prompt_errors(text_checkpoint, tmp_path, args, message):
    import re

    from ddpm_lab.sample import run as run_sample
    from tests.helpers import compose_app
    cfg = compose_app("sample", [f"ckpt_path={text_checkpoint}", "num_samples=2", "sampler.steps=2", *args], tmp_path)
    with pytest.raises(UserError, match=re.escape(message)):
        run_sample(cfg)
    assert not (tmp_path / "samples.png").exists()


def test_sample_cli_writes_prompted_samples(text_checkpoint, tmp_path):
    from ddpm_lab.sample import run as run_sample
    from tests.helpers import compose_app
    run_sample(compose_app("sample", [f"ckpt_path={text_checkpoint}", "num_samples=3", "sampler.steps=2",
                                      "prompt='a large yellow triangle at the bottom'", "guidance.scale=4"], tmp_path))
    saved = torch.load(tmp_path / "samples.pt", weights_only=False)
    assert saved["prompt"] == "a large yellow triangle at the bottom" and saved["images"].shape == (3, 3, 8, 8)


def test_prompt_on_a_label_checkpoint_and_text_without_captions_are_errors(tmp_path):
    from hydra.utils import instantiate

    from ddpm_lab.build import build_module
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    cfg = compose_train([*TEXT[:4], "guidance=classifier_free"], tmp_path / "labels")
    module = build_module(cfg, instantiate(cfg.data))
    with pytest.raises(UserError, match="prompt='a red circle': this checkpoint is conditioned on class labels"):
        module.sample(2, prompts="a red circle", steps=2)
    with pytest.raises(UserError, match="guidance.condition=text needs captions, and data=digits has none"):
        run(compose_train(["net=unet_tiny", "guidance=text", "logger=csv"], tmp_path / "a"))
    with pytest.raises(UserError, match="net.text is set but guidance.condition is not text"):
        run(compose_train([*TEXT, "guidance=classifier_free"], tmp_path / "b"))


def test_diffusers_condition_unet_trains_on_prompts(tmp_path):
    from ddpm_lab.modules import DiffusionModule
    from ddpm_lab.train import run
    from tests.helpers import compose_train
    run(compose_train([*TEXT, "net=diffusers_unet2d_condition", "net.block_out_channels=[8,16]",
                       "net.attention_levels=[false,true]", "net.attention_head_dim=4", "net.norm_num_groups=4"],
                      tmp_path))
    module = DiffusionModule.load(tmp_path / "checkpoints" / "last.ckpt")
    assert module.net.unet.config.cross_attention_dim == 16
    assert module.sample(2, prompts="a red circle", steps=2).shape == (2, 3, 8, 8)
