"""Unconditional generation: DDIM samples, turntables, GIFs, interpolation, nearest scene."""
import os
from types import SimpleNamespace

from PIL import Image
import torch

from minissd.config import get_preset
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.triplane import make_field
from minissd.prior.diffusion import DiffusionPrior
from minissd.testtime import generate


def tiny_model(seed=0):
    """Untrained smoke-sized networks, frozen like ssd.model.Model's."""
    torch.manual_seed(seed)
    cfg = get_preset("smoke")
    dec, prior = TriplaneDecoder(cfg.code_ch, cfg.dec_hidden), DiffusionPrior(cfg)
    dec.requires_grad_(False), prior.requires_grad_(False)
    codes = 0.5 * torch.randn(3, 3, cfg.code_ch, cfg.code_res, cfg.code_res)
    return SimpleNamespace(cfg=cfg, decoder=dec, prior=prior, codes=codes, names=[],
                           field=lambda x: make_field(dec, x))


def test_sample_codes_shape_range_and_determinism():
    m = tiny_model()
    a = generate.sample_codes(m, 2, steps=3, generator=torch.Generator().manual_seed(5))
    b = generate.sample_codes(m, 2, steps=3, generator=torch.Generator().manual_seed(5))
    c = generate.sample_codes(m, 2, steps=3, generator=torch.Generator().manual_seed(6))
    assert a.shape == (2, 3, m.cfg.code_ch, m.cfg.code_res, m.cfg.code_res)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 2.0


def test_turntable_strip_and_gif_sizes(tmp_path):
    m = tiny_model()
    frames = generate.turntable(m, m.codes[:2], n_frames=5, res=12)
    assert frames.shape == (2, 5, 12, 12, 3)
    assert frames.min() >= 0 and frames.max() <= 1
    strip = generate.save_strip(frames, str(tmp_path / "strip.png"))
    with Image.open(strip) as im:
        assert im.size == (5 * 12, 2 * 12)
    gif = generate.save_gif(frames[0], str(tmp_path / "sub" / "turn.gif"))
    assert os.path.getsize(gif) > 0
    with Image.open(gif) as im:
        assert im.size == (12, 12) and im.n_frames == 5 and im.is_animated


def test_interpolation_endpoints_equal_the_two_samples():
    m = tiny_model()
    g = torch.Generator().manual_seed(0)
    xa, xb = generate.noise(m, 2, g)
    for mode in ("linear", "slerp"):
        path = generate.interpolate_noise(xa, xb, 5, mode)
        assert torch.equal(path[0], xa) and torch.equal(path[-1], xb)
    codes = generate.interpolate(m, xa, xb, n=4, steps=3)
    ends = generate.codes_from_noise(m, torch.stack([xa, xb]), steps=3)
    assert codes.shape[0] == 4
    assert torch.allclose(codes[0], ends[0], atol=1e-5)
    assert torch.allclose(codes[-1], ends[1], atol=1e-5)
    # linear interpolation shrinks the noise mid-way, slerp keeps its norm
    mid_lin = generate.interpolate_noise(xa, xb, 3, "linear")[1].norm()
    mid_sl = generate.interpolate_noise(xa, xb, 3, "slerp")[1].norm()
    assert mid_lin < 0.8 * xa.norm() and abs(mid_sl / xa.norm() - 1) < 0.05


def test_nearest_training_finds_the_scene():
    m = tiny_model()
    probe = m.codes[[2, 0]] + 0.01 * torch.randn_like(m.codes[[2, 0]])
    idx, dist = generate.nearest_training(m, probe, by="code")
    assert idx.tolist() == [2, 0] and (dist < 1e-3).all()
    idx, _ = generate.nearest_training(m, probe, by="image", c2w=generate.orbit_poses(2, 2.6), res=12)
    assert idx.tolist() == [2, 0]


def saved_tiny_model(path):
    from minissd.ssd.model import Model
    m = tiny_model()
    Model(m.cfg, "single-stage", m.decoder, m.prior, m.codes, ["a", "b", "c"]).save(str(path))
    return str(path)


def test_sample_cli_writes_gifs_and_strip(tmp_path):
    from minissd.cli import main
    ckpt = saved_tiny_model(tmp_path / "model.pt")
    out = tmp_path / "samples"
    assert main(["sample", "--ckpt", ckpt, "--n", "2", "--out", str(out), "--steps", "2",
                 "--frames", "4", "--res", "12", "--device", "cpu"]) == 0
    with Image.open(out / "turntables.png") as im:
        assert im.size == (4 * 12, 2 * 12)
    with Image.open(out / "sample_001.gif") as im:
        assert im.n_frames == 4
    assert torch.load(out / "codes.pt").shape == (2, 3, 6, 16, 16)


def test_reconstruct_cli_writes_figures_and_psnr(tmp_path):
    import json

    from minissd.cli import main
    from minissd.data.procedural import generate as make_data
    ckpt = saved_tiny_model(tmp_path / "model.pt")
    data = make_data(str(tmp_path / "test"), "cars", "test", n_scenes=1, n_views=6,
                     resolution=32, progress=False)
    out = tmp_path / "rec"
    assert main(["reconstruct", "--ckpt", ckpt, "--data", data, "--input-views", "2",
                 "--finetune", "rend", "--out", str(out), "--steps", "2", "--max-eval", "2",
                 "--device", "cpu"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert len(summary["scenes"]) == 1 and summary["scenes"][0]["n_eval"] == 2
    assert 0 < summary["psnr"] < 100
    assert (out / f"{summary['scenes'][0]['scene']}.png").stat().st_size > 0
