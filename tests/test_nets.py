import pytest
import torch
from diffusers import UNet2DModel

from ddpm_lab.diffusion.guidance import Guider
from ddpm_lab.errors import UserError
from ddpm_lab.nets import UNet
from ddpm_lab.nets.diffusers import DiffusersUNet2D


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_ddpm_cifar10_network_has_35_7M_parameters():
    """DDPM paper, App. B: the CIFAR-10 model has 35.7M parameters."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ddpm_lab.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["net=unet_ddpm_cifar10", "data.image_size=32", "data.channels=1"])
    cfg.net.in_channels = 3
    net = instantiate(cfg.net)
    assert abs(n_params(net) - 35.7e6) / 35.7e6 < 0.005
    # the same architecture in diffusers (as google/ddpm-cifar10-32 is configured) counts the same
    ref = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                      layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    assert n_params(net) == n_params(ref)


@pytest.mark.parametrize("num_classes", [None, 4])
def test_unet_shapes_and_class_hook(num_classes):
    net = UNet(image_size=16, in_channels=1, base_channels=16, channel_mult=(1, 2, 2),
               num_res_blocks=1, attention_resolutions=(8,), norm_groups=8, num_classes=num_classes)
    x = torch.randn(3, 1, 16, 16)
    out = net(x, torch.tensor([0, 10, 999]), torch.tensor([0, 1, 3]) if num_classes else None)
    assert out.shape == x.shape
    assert net(x, torch.tensor(5)).shape == x.shape  # scalar t broadcasts


def test_unet_time_embedding_changes_output():
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(), dropout=0.0, norm_groups=4).eval()
    x = torch.randn(2, 1, 8, 8)
    assert (net(x, torch.tensor([1, 1])) - net(x, torch.tensor([900, 900]))).abs().max() > 1e-4


def test_image_size_the_unet_cannot_divide():
    with pytest.raises(UserError, match=r"data.image_size=20 .* multiple of 8"):
        UNet(image_size=20, channel_mult=(1, 2, 2, 2))
    with pytest.raises(UserError, match=r"data.image_size=18 .* multiple of 4"):
        DiffusersUNet2D(image_size=18, block_out_channels=(32, 32, 32))


@pytest.mark.parametrize("num_classes", [None, 3])
def test_diffusers_adapter(num_classes):
    net = DiffusersUNet2D(image_size=8, in_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                          attention_levels=(False, True), norm_num_groups=8, num_classes=num_classes)
    x = torch.randn(2, 1, 8, 8)
    cond = torch.tensor([0, 2]) if num_classes else None
    assert net(x, torch.tensor([3, 500]), cond).shape == x.shape
    if num_classes:
        assert net.unet.class_embedding.num_embeddings == 4   # + the null class
        out = Guider(2.0)(net, x, torch.tensor([3, 500]), cond)
        assert out.shape == x.shape
