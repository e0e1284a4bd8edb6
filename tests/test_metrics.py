"""Tests for minissd.eval.metrics, fid and geometry: hand-checkable values, no network, no
pretrained weights."""
import math
import os

import lpips as lpips_pkg  # noqa: F401 (imported first, as torchvision)
import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  before empty_hub patches torch.hub: torchvision binds its loader

from minissd.eval import fid, geometry
from minissd.eval import metrics as M

# ----------------------------------------------------------------------------- PSNR

def test_psnr_constant_error_is_20db():
    gt = torch.full((2, 8, 8, 3), 0.2)
    p = M.psnr(gt + 0.1, gt, quantize=False)
    assert p.shape == (2,)
    assert torch.allclose(p, torch.full((2,), 20.0), atol=1e-4)


def test_psnr_quantisation_and_clamp():
    gt = torch.full((8, 8, 3), 0.5)                   # 0.5 is not on the 8-bit grid
    # round(127.5) -> 128 (half to even): error 0.5/255 -> PSNR = 20 log10(510)
    assert M.psnr(gt, gt).item() == pytest.approx(20 * math.log10(510), abs=1e-3)
    assert M.psnr(gt, gt, quantize=False).item() == math.inf
    one = torch.ones(8, 8, 3)
    assert M.psnr(one * 1.3, one).item() == math.inf  # clamped to 1 first
    q = M.quantize8(torch.tensor([-0.2, 0.3 / 255, 0.7 / 255, 2.0]))
    assert torch.allclose(q, torch.tensor([0.0, 0.0, 1 / 255, 1.0]))


def test_psnr_per_image_and_shape_errors():
    gt = torch.zeros(2, 4, 4, 3)
    pred = torch.stack([torch.full((4, 4, 3), 0.1), torch.full((4, 4, 3), 0.01)])
    p = M.psnr(pred, gt, quantize=False)
    assert p[0].item() == pytest.approx(20.0, abs=1e-4) and p[1].item() == pytest.approx(40.0, abs=1e-3)
    with pytest.raises(ValueError):
        M.psnr(torch.zeros(2, 4, 4, 3), torch.zeros(2, 4, 5, 3))


# ----------------------------------------------------------------------------- SSIM

def _img(seed, n=1, h=32, w=32):
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 0.7, w)[None, None, :, None]
    return (0.3 * torch.rand(n, h, w, 3, generator=g) + base).clamp(0, 1)


def test_ssim_identity_is_one():
    x = M.quantize8(_img(0, n=2))
    s = M.ssim(x, x)
    assert s.shape == (2,)
    assert torch.allclose(s, torch.ones(2), atol=1e-6)


def test_ssim_decreases_with_noise():
    gt = _img(1)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(gt.shape, generator=g)
    vals = [M.ssim((gt + s * noise).clamp(0, 1), gt).item() for s in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a > b for a, b in zip(vals, vals[1:])), vals
    assert vals[0] > 0.999 and vals[-1] < 0.5


def test_ssim_constant_images_closed_form():
    a, b = 0.2, 0.6                                     # quantize=False keeps the means exact
    x, y = torch.full((16, 20, 3), a), torch.full((16, 20, 3), b)
    C1 = 0.01 ** 2
    expected = (2 * a * b + C1) / (a * a + b * b + C1)  # variance terms are 0: (0 + C2)/(0 + C2)
    assert M.ssim(x, y, quantize=False).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_too_small_raises():
    with pytest.raises(ValueError, match="window"):
        M.ssim(torch.zeros(6, 8, 3), torch.zeros(6, 8, 3))            # 7x7 box
    with pytest.raises(ValueError, match="window"):
        M.ssim(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3), window="gaussian")   # 11x11


def _box_ssim_by_hand(x, y, k=7, ddof=1, C1=0.01 ** 2, C2=0.03 ** 2):
    """SSIM of two (H, W) arrays from plain statistics of every k x k patch (numpy)."""
    vals = []
    for i in range(x.shape[0] - k + 1):
        for j in range(x.shape[1] - k + 1):
            a, b = x[i:i + k, j:j + k].ravel(), y[i:i + k, j:j + k].ravel()
            mx, my = a.mean(), b.mean()
            vx, vy = a.var(ddof=ddof), b.var(ddof=ddof)
            cxy = ((a - mx) * (b - my)).sum() / (a.size - ddof)
            vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx * mx + my * my + C1) * (vx + vy + C2)))
    return float(np.mean(vals))


def test_ssim_default_is_7x7_box_with_sample_covariance_by_hand():
    """No scikit-image needed: patch statistics written out by hand (7x7, N/(N-1) = 49/48).
    A 7x9 image has exactly 3 window positions, so a 5x5, 9x9 or 11x11 window, a Gaussian
    window or the population covariance all give different numbers (or raise)."""
    g = torch.Generator().manual_seed(3)
    x = 0.7 + 0.1 * torch.rand(7, 9, 3, generator=g, dtype=torch.float64)   # low contrast:
    y = x + 0.05 * torch.randn(7, 9, 3, generator=g, dtype=torch.float64)   # C2 matters
    want = np.mean([_box_ssim_by_hand(x[..., c].numpy(), y[..., c].numpy()) for c in range(3)])
    got = M.ssim(x, y, quantize=False).item()
    assert got == pytest.approx(want, abs=1e-6)
    # what the wrong variants would give is far outside the tolerance
    for wrong in (dict(ddof=0), dict(k=5), dict(k=3)):
        other = np.mean([_box_ssim_by_hand(x[..., c].numpy(), y[..., c].numpy(), **wrong)
                         for c in range(3)])
        assert abs(got - other) > 1e-4, wrong
    with pytest.raises(ValueError, match="window"):
        M.ssim(x, y, window="gaussian")                 # 7x9 is smaller than the 11x11 window


def test_ssim_gaussian_window_single_position_by_hand():
    """11x11 image: one window position; Gaussian weights w_ij ~ exp(-(i^2+j^2)/(2*1.5^2))."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(11, 11, 3, generator=g, dtype=torch.float64)
    y = (0.5 * x + 0.3 * torch.rand(11, 11, 3, generator=g, dtype=torch.float64)).clamp(0, 1)
    r = np.arange(-5, 6)
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    C1, C2, want = 0.01 ** 2, 0.03 ** 2, []
    for c in range(3):
        a, b = x[..., c].numpy(), y[..., c].numpy()
        mx, my = (w * a).sum(), (w * b).sum()
        vx, vy, cxy = (w * a * a).sum() - mx ** 2, (w * b * b).sum() - my ** 2, (w * a * b).sum() - mx * my
        want.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx * mx + my * my + C1) * (vx + vy + C2)))
    assert M.ssim(x, y, quantize=False, window="gaussian").item() == pytest.approx(np.mean(want), abs=1e-6)
    assert M.ssim(x, y, quantize=False).item() != pytest.approx(np.mean(want), abs=1e-3)


def _object_on_white(seed, h=64, w=48):
    """A blurry coloured blob on a white background, and a noisy, shifted 'prediction'."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    mask = ((xx / 0.6) ** 2 + (yy / 0.4) ** 2 < 1).float()[..., None]
    colour = torch.rand(3, generator=g) * 0.6 + 0.2 * torch.rand(h, w, 3, generator=g)
    gt = mask * colour + (1 - mask)
    pred = torch.roll(gt, shifts=1, dims=1) + 0.05 * torch.randn(h, w, 3, generator=g)
    return pred.clamp(0, 1), gt


@pytest.mark.parametrize("window", ["uniform", "gaussian"])
def test_ssim_matches_scikit_image(window):
    skm = pytest.importorskip("skimage.metrics")
    kw = {} if window == "uniform" else dict(gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False)
    pairs = [_object_on_white(s) for s in range(3)]
    pairs += [(_img(10 + s, h=40, w=53)[0], _img(20 + s, h=40, w=53)[0]) for s in range(2)]
    for pred, gt in pairs:
        pq = M.quantize8(pred)
        want = skm.structural_similarity(pq.double().numpy(), gt.double().numpy(), data_range=1,
                                         channel_axis=-1, **kw)
        assert M.ssim(pred, gt, window=window).item() == pytest.approx(want, abs=1e-6)


def test_ssim_unknown_window_raises():
    with pytest.raises(ValueError, match="window"):
        M.ssim(torch.zeros(16, 16, 3), torch.zeros(16, 16, 3), window="box")


# ----------------------------------------------------------------------------- geometry

def test_chamfer_known_values():
    p = torch.tensor([[0.0, 0, 0]])
    q = torch.tensor([[1.0, 0, 0], [2.0, 0, 0]])
    # p->q: 1^2 = 1 ; q->p: mean(1, 4) = 2.5
    assert geometry.chamfer_distance(p, q) == pytest.approx(3.5)
    assert geometry.chamfer_distance(q, p) == pytest.approx(3.5)
    r = torch.randn(50, 3)
    assert geometry.chamfer_distance(r, r) == pytest.approx(0.0, abs=1e-6)


def test_coverage_mmd_known_values():
    pt = lambda x: torch.tensor([[x, 0.0, 0.0]])        # single points: CD = 2 d^2
    refs = [pt(0.0), pt(10.0), pt(20.0)]
    gens = [pt(0.1), pt(0.2)]
    out = geometry.coverage_mmd(gens, refs)
    assert out["cov"] == pytest.approx(1 / 3)
    expected = (2 * 0.1 ** 2 + 2 * 9.8 ** 2 + 2 * 19.8 ** 2) / 3
    assert out["mmd"] == pytest.approx(expected, rel=1e-5)
    out = geometry.coverage_mmd(gens + [pt(19.0)], refs)
    assert out["cov"] == pytest.approx(2 / 3)
    assert out["mmd"] == pytest.approx((0.02 + 2 * 9.0 ** 2 + 2 * 1.0 ** 2) / 3, rel=1e-5)


def test_points_from_density_sphere_shell():
    sphere = lambda xyz: torch.where(xyz.norm(dim=-1) < 0.5, 100.0, 0.0)
    g = torch.Generator().manual_seed(0)
    pts = geometry.points_from_density(sphere, res=32, threshold=10.0, n_points=500, generator=g)
    assert pts.shape == (500, 3)
    r = pts.norm(dim=-1)
    h = 2.0 / 32
    assert (r - 0.5).abs().max() < math.sqrt(3) * h + 1e-6   # within one cell of the surface
    assert r.min() > 0.5 - math.sqrt(3) * h                  # no interior points (shell only)
    empty = geometry.points_from_density(lambda xyz: torch.zeros(len(xyz)), res=8, n_points=10)
    assert empty.shape == (0, 3)


# ----------------------------------------------------------------------------- FID / KID

def test_fid_self_zero_and_mean_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2000, 8))
    assert abs(fid.frechet_distance(a, a)) < 1e-6
    shift = np.arange(8) * 0.1
    # b = a + shift has exactly the same covariance: FID = ||shift||^2 exactly
    assert fid.frechet_distance(a, a + shift) == pytest.approx((shift ** 2).sum(), rel=1e-6)
    # independent samples: FID ~ ||shift||^2 (+ small sampling bias)
    b = rng.standard_normal((20000, 8)) + shift
    c = rng.standard_normal((20000, 8))
    assert fid.frechet_distance(c, b) == pytest.approx((shift ** 2).sum(), abs=0.05)
    # N(0, I) vs N(0, 4I): sum_i (1 + 4 - 2*2) = d
    assert fid.frechet_distance(c, 2 * b - 2 * shift) == pytest.approx(8.0, abs=0.3)


def test_kid_near_zero_same_distribution_positive_when_shifted():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    same, _ = fid.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted, std = fid.kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 0.02
    assert shifted > 0.1 and shifted > 10 * abs(same) and std > 0


# ----------------------------------------------------------------------------- LPIPS / Inception

@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """Empty torch hub dir, fresh warn/model caches, and any download attempt fails the test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    monkeypatch.setattr(M, "_WARNED", set())
    monkeypatch.setattr(M, "_MODELS", {})
    monkeypatch.setattr(fid, "_MODELS", {})

    def no_download(*a, **k):
        raise AssertionError("metrics tried to download")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    yield tmp_path
    torch.hub.set_dir(old)


def test_lpips_unavailable_message_once(empty_hub, capsys):
    x = torch.rand(2, 32, 32, 3)
    assert M.lpips(x, x) is None
    assert M.lpips(x, x) is None
    err = capsys.readouterr().err
    assert err.count("LPIPS unavailable") == 1
    assert os.path.join(str(empty_hub), "checkpoints", "vgg16-397923af.pth") in err
    assert "IMAGENET1K_V1" in err
    assert fid.inception_features(x) is None
    assert fid.inception_features(x) is None
    assert capsys.readouterr().err.count("FID/KID unavailable") == 1


def test_lpips_plumbing_shape_random_trunk(empty_hub):
    model = M._lpips_model(pnet_rand=True)            # shapes only: NOT an LPIPS value
    pred, gt = torch.rand(3, 32, 32, 3), torch.rand(3, 32, 32, 3)
    d = M.lpips(pred, gt, model=model)
    assert d.shape == (3,) and torch.isfinite(d).all()
    assert torch.allclose(M.lpips(gt, gt, model=model, quantize=False), torch.zeros(3), atol=1e-6)


def test_lpips_loads_local_vgg_and_package_linear_layers(empty_hub):
    """A VGG16 file in the hub cache is what torchvision (inside lpips) loads, no remapping.

    The file is the full torchvision state dict, each tensor a stride-0 view of one number
    (a few kB on disk). Loading it goes through the real torch.hub.load_state_dict_from_url;
    the actual download function stays blocked, so a cache miss would still fail the test."""
    ckpt = empty_hub / "checkpoints"
    ckpt.mkdir()
    shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    fake = {k: torch.tensor(float(i)).expand(shape) for i, (k, shape) in enumerate(shapes.items())}
    torch.save(fake, ckpt / M.VGG16_FILE)
    model = M._lpips_model()
    assert model is not None
    assert torch.equal(getattr(model.net.slice3, "10").weight, fake["features.10.weight"].contiguous())
    assert torch.equal(getattr(model.net.slice5, "28").bias, fake["features.28.bias"].contiguous())
    lin = torch.load(os.path.join(os.path.dirname(lpips_pkg.__file__), "weights/v0.1/vgg.pth"),
                     map_location="cpu")
    assert torch.equal(model.lin0.model[1].weight, lin["lin0.model.1.weight"])


class _FakeInception(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: same call (uint8 NCHW, return_features=True),
    4-d 'features' = per-channel means in 0..255 and their sum."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert img.dtype == torch.uint8 and img.shape[1] == 3
        assert return_features
        m = img.to(torch.float32).mean(dim=(2, 3))                    # (N, 3)
        return torch.cat([m, m.sum(dim=1, keepdim=True)], dim=1)      # (N, 4)


@pytest.fixture
def fake_inception(empty_hub, tmp_path, monkeypatch):
    path = tmp_path / "somewhere" / fid.INCEPTION_TS_FILE
    path.parent.mkdir()
    torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    monkeypatch.setenv("MINISSD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(fid.INCEPTION_ENV, str(path))
    return path


def test_fid_network_torchscript_from_documented_path(fake_inception, capsys):
    info = fid.fid_network()
    assert info == {"name": "inception-2015-12-05 (TF, TorchScript)", "comparable": True,
                    "kind": "torchscript"}
    x = torch.zeros(3, 16, 16, 3)
    x[..., 0] = 1.0                                                   # red: 255
    x[1, ..., 1] = 0.5                                                # round(127.5) = 128
    f = fid.inception_features(x)
    assert f.shape == (3, 4)
    assert np.allclose(f[:, 0], 255) and np.allclose(f[:, 1], [0, 128, 0]) and np.allclose(f[:, 2], 0)
    assert "comparable" not in capsys.readouterr().err                # no warning printed
    assert "the network of the published numbers" in fid.fid_network_note(info)


def test_fid_network_default_cache_path(empty_hub, tmp_path, monkeypatch):
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("MINISSD_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "cache" / "weights"
    weights.mkdir(parents=True)
    assert fid.inception_paths()[0] == str(weights / fid.INCEPTION_TS_FILE)
    torch.jit.save(torch.jit.script(_FakeInception()), str(weights / fid.INCEPTION_TS_FILE))
    assert fid.fid_network()["kind"] == "torchscript"


def test_fid_network_other_backbone_labelled_not_comparable(empty_hub, tmp_path, monkeypatch):
    """torchvision's ImageNet Inception in the hub cache is used, but says it is not comparable."""
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("MINISSD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fid, "_inception_model", lambda device="cpu": (object(), "torchvision"))
    info = fid.fid_network()
    assert info["comparable"] is False and "NOT comparable" in info["name"]
    assert "NOT comparable with the paper" in fid.fid_network_note(info)


def test_fid_network_absent_is_na_with_fetch_step(empty_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("MINISSD_CACHE", str(tmp_path / "cache"))
    assert fid.fid_network() is None
    assert fid.inception_features(torch.rand(2, 8, 8, 3)) is None
    err = capsys.readouterr().err
    assert err.count("FID/KID unavailable") == 1
    assert fid.INCEPTION_TS_FILE in err and fid.INCEPTION_TS_URL in err and fid.INCEPTION_ENV in err
    assert "n/a" in fid.fid_network_note(None)


def test_kid_uses_100_subsets_by_default():
    import inspect
    assert fid.KID_SUBSETS == 100
    assert inspect.signature(fid.kernel_inception_distance).parameters["subsets"].default == 100


# ----------------------------------------------------------------------------- means

def test_mean_of_per_image_values():
    assert M.mean([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert M.mean(torch.tensor([20.0, 30.0])) == pytest.approx(25.0)
    assert M.mean([[1.0, 2.0], [3.0]]) == pytest.approx(2.0)           # per-scene lists
    assert M.mean(None) is None and M.mean([]) is None and M.mean([1.0, None]) is None
