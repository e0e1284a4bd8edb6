import pytest
import torch

from minissd.config import get_preset
from minissd.prior.unet import UNet, count_params, timestep_embedding


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 1, 999]), 16)
    assert e.shape == (3, 16)
    assert torch.allclose(e[0, :8], torch.ones(8)) and torch.allclose(e[0, 8:], torch.zeros(8))


@pytest.mark.parametrize("name", ["smoke", "laptop"])
def test_unet_shape_and_time_dependence(name):
    cfg = get_preset(name)
    torch.manual_seed(0)
    net = UNet.from_config(cfg)
    for p in net.parameters():                  # un-zero the zero-init layers so t matters
        if p.abs().max() == 0:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3 * cfg.code_ch, cfg.code_res, cfg.code_res)
    with torch.no_grad():
        y1 = net(x, torch.tensor([0, 0]))
        y2 = net(x, torch.tensor([999, 999]))
    assert y1.shape == x.shape
    assert not torch.allclose(y1, y2)


def test_unet_zero_init_output():
    cfg = get_preset("smoke")
    net = UNet.from_config(cfg)
    x = torch.randn(1, 3 * cfg.code_ch, cfg.code_res, cfg.code_res)
    assert net(x, torch.tensor([3])).abs().max() == 0


def test_param_counts():
    n = {k: count_params(get_preset(k)) for k in ["smoke", "laptop", "gpu", "paper"]}
    assert n["smoke"] < 500_000
    assert n["laptop"] < 3_000_000
    assert n["smoke"] < n["laptop"] < n["gpu"] < n["paper"]
    assert 115e6 < n["paper"] < 130e6           # the paper's denoiser: ~122M


def test_gpu_preset_shape_on_meta():
    cfg = get_preset("gpu")
    with torch.device("meta"):
        net = UNet.from_config(cfg)
        y = net(torch.empty(2, 18, 128, 128), torch.tensor([1, 2]))
    assert y.shape == (2, 18, 128, 128)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unet.py"):
        UNet.from_config(get_preset("smoke", code_res=18, unet_mults=(1, 2, 2)))
    net = UNet.from_config(get_preset("smoke"))
    with pytest.raises(ValueError, match="unet.py"):
        net(torch.randn(1, 5, 16, 16), torch.tensor([0]))
