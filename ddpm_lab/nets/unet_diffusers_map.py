"""Our `UNet` <-> diffusers' `UNet2DModel`: the configuration and the weight map, both ways.

The DDPM authors' CIFAR-10 network (net=unet_ddpm_cifar10) is diffusers' google/ddpm-cifar10-32
configuration: block_out_channels (128, 256, 256, 256), DownBlock2D / AttnDownBlock2D at 16x16,
layers_per_block 2, single-head attention (attention_head_dim null), GroupNorm 32 groups with eps
1e-6, the sinusoidal time embedding with sin before cos (flip_sin_to_cos false) and frequencies
10000^(-i / (half - 1)) (freq_shift 1), and TensorFlow's SAME padding before the stride-2
convolutions (downsample_padding 0). The two networks hold the same tensors under other names; our
attention's one 1x1 qkv convolution is diffusers' to_q / to_k / to_v linear layers stacked.

Which UNets map: any without text conditioning (UNet2DModel has no cross-attention) whose every
GroupNorm has `norm_groups` groups (each channel count a multiple of it) and whose attention blocks
have one head size (num_heads 1, or the same channels at every attention level and in the middle).
A class-conditional UNet maps to `num_class_embeds` = classes + 1 (the null class).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from ddpm_lab.errors import UserError
from ddpm_lab.nets.unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample

Tensor = torch.Tensor

PADDING_TO_DIFFUSERS = {"same": 0, "symmetric": 1}
# UNet2DModel's settings our UNet has no other value for
FIXED = {"time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1, "act_fn": "silu",
         "norm_eps": 1e-6, "center_input_sample": False, "mid_block_scale_factor": 1,
         "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
         "downsample_type": "conv", "upsample_type": "conv", "mid_block_type": "UNetMidBlock2D",
         "attn_norm_num_groups": None, "time_embedding_dim": None}
RES_NAMES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
             "conv2": "conv2", "skip": "conv_shortcut"}


def diffusers_config(unet: UNet) -> dict:
    """The UNet2DModel keyword arguments of `unet`'s structure, or a UserError saying why it has none."""
    a = unet.architecture
    if a["text"]:
        raise UserError("net.text: a text-conditioned UNet has cross-attention, which diffusers' UNet2DModel "
                        "lacks; unconditional and class-conditional UNets map")
    groups = a["norm_groups"]
    odd = [m.num_channels for m in unet.modules() if isinstance(m, torch.nn.GroupNorm) and m.num_groups != groups]
    if odd:
        raise UserError(f"net.norm_groups={groups} does not divide {odd[0]} channels (our GroupNorm then uses "
                        f"fewer groups, UNet2DModel cannot): choose a norm_groups that divides every width")
    chans = [a["base_channels"] * m for m in a["channel_mult"]]
    sizes = [a["image_size"] // 2 ** i for i in range(len(chans))]
    levels = [s in a["attention_resolutions"] for s in sizes]
    head_dim = None
    if a["num_heads"] > 1:
        widths = {c for c, att in zip(chans, levels, strict=True) if att} | {chans[-1]}
        if len(widths) != 1:
            raise UserError(f"net.num_heads={a['num_heads']} with attention at widths {sorted(widths)}: "
                            f"UNet2DModel has one head size for every attention block; use num_heads=1")
        head_dim = widths.pop() // a["num_heads"]
    return {**FIXED, "sample_size": a["image_size"], "in_channels": a["in_channels"],
            "out_channels": a["out_channels"], "block_out_channels": tuple(chans),
            "down_block_types": tuple("AttnDownBlock2D" if x else "DownBlock2D" for x in levels),
            "up_block_types": tuple("AttnUpBlock2D" if x else "UpBlock2D" for x in reversed(levels)),
            "layers_per_block": a["num_res_blocks"], "attention_head_dim": head_dim, "norm_num_groups": groups,
            "downsample_padding": PADDING_TO_DIFFUSERS[a["downsample_padding"]], "dropout": a["dropout"],
            "num_class_embeds": a["num_classes"] + 1 if a["num_classes"] else None}


def unet_kwargs(config: dict) -> dict:
    """Our UNet's keyword arguments for a UNet2DModel config, or a UserError naming the first key that
    our UNet has no equivalent of."""
    for key, value in FIXED.items():
        if key in config and config[key] != value and not (key == "time_embedding_dim" and value is None
                                                           and config[key] == 4 * config["block_out_channels"][0]):
            raise UserError(f"the UNet2DModel has {key}={config[key]!r}; our UNet is the DDPM one ({key}={value!r})")
    chans = list(config["block_out_channels"])
    base = chans[0]
    if any(c % base for c in chans):
        raise UserError(f"the UNet2DModel's block_out_channels {chans} are not multiples of the first")
    attention = [t.startswith("Attn") for t in config["down_block_types"]]
    if [t.startswith("Attn") for t in reversed(config["up_block_types"])] != attention or any(
            t.replace("Attn", "") not in ("DownBlock2D", "UpBlock2D")
            for t in (*config["down_block_types"], *config["up_block_types"])):
        raise UserError(f"the UNet2DModel's blocks {config['down_block_types']} / {config['up_block_types']}: "
                        f"our UNet has DownBlock2D / AttnDownBlock2D and the matching up blocks")
    head_dim = config.get("attention_head_dim")
    heads = 1 if head_dim is None else chans[-1] // head_dim
    widths = {c for c, att in zip(chans, attention, strict=True) if att} | {chans[-1]}
    if head_dim is not None and any(c != heads * head_dim for c in widths):
        raise UserError(f"the UNet2DModel's attention_head_dim={head_dim} gives a different number of heads per "
                        f"block; our UNet has one number of heads")
    padding = {v: k for k, v in PADDING_TO_DIFFUSERS.items()}.get(config.get("downsample_padding", 1))
    if padding is None:
        raise UserError(f"the UNet2DModel's downsample_padding={config['downsample_padding']}; 0 or 1 map")
    num_class = config.get("num_class_embeds")
    size = config["sample_size"]
    if not isinstance(size, int):
        raise UserError(f"the UNet2DModel's sample_size={size}: our UNet takes square images")
    return {"image_size": size, "in_channels": config["in_channels"], "out_channels": config["out_channels"],
            "base_channels": base, "channel_mult": [c // base for c in chans],
            "num_res_blocks": config["layers_per_block"],
            "attention_resolutions": [size // 2 ** i for i, att in enumerate(attention) if att],
            "dropout": float(config.get("dropout", 0.0)), "num_heads": heads,
            "norm_groups": config["norm_num_groups"], "num_classes": num_class - 1 if num_class else None,
            "downsample_padding": padding}


def block_names(ours: str, layer, theirs: str, index: int) -> list[tuple[str, str]]:
    """A residual block (and its attention) of ours as the index-th of a diffusers block."""
    pairs = [(f"{ours}.0", f"{theirs}.resnets.{index}")]
    if len(layer) > 1:
        pairs.append((f"{ours}.1", f"{theirs}.attentions.{index}"))
    return pairs


def path_names(layers, ours: str, resample: type, theirs: str, resamplers: str) -> list[tuple[str, str]]:
    """The down (or up) path: ours is one list of blocks and resampling layers, diffusers' one block
    per resolution, each with its residual blocks and then its resampler."""
    pairs, level, index = [], 0, 0
    for i, layer in enumerate(layers):
        if isinstance(layer, resample):
            pairs.append((f"{ours}.{i}.conv", f"{theirs}.{level}.{resamplers}.0.conv"))
            level, index = level + 1, 0
        else:
            pairs += block_names(f"{ours}.{i}", layer, f"{theirs}.{level}", index)
            index += 1
    return pairs


def weight_names(unet: UNet) -> list[tuple[str, str]]:
    """(our module name, UNet2DModel module name) of every layer holding weights; an attention block's
    qkv is split into to_q / to_k / to_v (and merged back) by `to_diffusers_state` / `from_diffusers_state`."""
    pairs = [("conv_in", "conv_in"), ("time_mlp.0", "time_embedding.linear_1"),
             ("time_mlp.2", "time_embedding.linear_2"), ("norm_out", "conv_norm_out"), ("conv_out", "conv_out")]
    if unet.class_emb is not None:
        pairs.append(("class_emb", "class_embedding"))
    pairs += path_names(unet.down, "down", Downsample, "down_blocks", "downsamplers")
    pairs += [*block_names("mid", unet.mid, "mid_block", 0), ("mid_res", "mid_block.resnets.1")]
    pairs += path_names(unet.up, "up", Upsample, "up_blocks", "upsamplers")
    return pairs


def to_diffusers_state(unet: UNet) -> dict[str, Tensor]:
    """`unet`'s weights under UNet2DModel's names."""
    state = {}
    for ours, theirs in weight_names(unet):
        module = unet.get_submodule(ours)
        if isinstance(module, ResBlock):
            for name, tensor in module.state_dict().items():
                layer, _, kind = name.partition(".")
                state[f"{theirs}.{RES_NAMES[layer]}.{kind}"] = tensor
        elif isinstance(module, AttentionBlock):
            state[f"{theirs}.group_norm.weight"] = module.norm.weight
            state[f"{theirs}.group_norm.bias"] = module.norm.bias
            for name, w, b in zip(("to_q", "to_k", "to_v"), module.qkv.weight[:, :, 0, 0].chunk(3),
                                  module.qkv.bias.chunk(3), strict=True):
                state[f"{theirs}.{name}.weight"], state[f"{theirs}.{name}.bias"] = w, b
            state[f"{theirs}.to_out.0.weight"] = module.proj.weight[:, :, 0, 0]
            state[f"{theirs}.to_out.0.bias"] = module.proj.bias
        else:
            state.update({f"{theirs}.{k}": v for k, v in module.state_dict().items()})
    return {k: v.detach().clone() for k, v in state.items()}


def from_diffusers_state(unet: UNet, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A UNet2DModel state dict under the names of `unet` (of the matching structure)."""
    out = {}
    for ours, theirs in weight_names(unet):
        module = unet.get_submodule(ours)
        if isinstance(module, ResBlock):
            for name in module.state_dict():
                layer, _, kind = name.partition(".")
                out[f"{ours}.{name}"] = state[f"{theirs}.{RES_NAMES[layer]}.{kind}"]
        elif isinstance(module, AttentionBlock):
            out[f"{ours}.norm.weight"] = state[f"{theirs}.group_norm.weight"]
            out[f"{ours}.norm.bias"] = state[f"{theirs}.group_norm.bias"]
            names = ("to_q", "to_k", "to_v")
            out[f"{ours}.qkv.weight"] = torch.cat([state[f"{theirs}.{n}.weight"] for n in names])[:, :, None, None]
            out[f"{ours}.qkv.bias"] = torch.cat([state[f"{theirs}.{n}.bias"] for n in names])
            out[f"{ours}.proj.weight"] = state[f"{theirs}.to_out.0.weight"][:, :, None, None]
            out[f"{ours}.proj.bias"] = state[f"{theirs}.to_out.0.bias"]
        else:
            out.update({f"{ours}.{k}": state[f"{theirs}.{k}"] for k in module.state_dict()})
    return {k: v.detach().clone() for k, v in out.items()}


def unet_to_diffusers(unet: UNet) -> UNet2DModel:
    """A UNet2DModel computing what `unet` computes (its weights copied), in `unet`'s dtype."""
    model = UNet2DModel(**diffusers_config(unet))
    model.load_state_dict(to_diffusers_state(unet), strict=True)
    return model.to(next(unet.parameters()).dtype).eval() if next(unet.parameters()).dtype != model.dtype else model.eval()


def unet_from_diffusers(model: UNet2DModel, dropout: float | None = None) -> UNet:
    """Our UNet computing what `model` computes (its weights copied); `dropout` for fine-tuning
    (None: the model config's)."""
    kwargs = unet_kwargs(dict(model.config))
    if dropout is not None:
        kwargs["dropout"] = dropout
    unet = UNet(**kwargs)
    unet.load_state_dict(from_diffusers_state(unet, model.state_dict()), strict=True)
    return unet.to(model.dtype).eval()
