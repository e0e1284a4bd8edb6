"""Evaluation metrics of the paper's tables, written out so they can be read.

Images are (N, H, W, 3) or (H, W, 3) floats in [0, 1]. Predictions are clamped and
quantised to 8 bits first, as the paper does:  q(x) = round(255 * clamp(x, 0, 1)) / 255.

    PSNR(x, y)  = -10 log10( mean_{pixels, rgb} (q(x) - y)^2 )          (peak 1, per image)
    SSIM(x, y)  = mean_{crop, rgb} [ (2 mu_x mu_y + C1)(2 s_xy + C2) /
                                     ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) ]
                  C1 = (0.01)^2, C2 = (0.03)^2 (data range 1), one value per channel, the
                  three channels averaged. Two windows (`ssim(..., window=...)`):
        "uniform"  (default, the paper's and pixelNeRF's protocol) mu, s over a 7x7 box
                  with the SAMPLE covariance (x 49/48), border of 3 px cropped: identical
                  to skimage structural_similarity(data_range=1, channel_axis=-1) with its
                  defaults (win_size=7, use_sample_covariance=True). This is what the
                  official code reports: lib/core/evaluation/metrics.py `eval_ssim_skimage`
                  ("following pixelNeRF evaluation"), called with data_range=1 from
                  lib/models/autodecoders/base_nerf.py.
        "gaussian" (Wang et al. 2004) an 11x11 Gaussian window (sigma 1.5), population
                  covariance, border of 5 px cropped: skimage with gaussian_weights=True,
                  sigma=1.5, use_sample_covariance=False. It reads about 0.01 higher on
                  objects on white, so it is not comparable with the paper's tables
                  (the official code has it as `eval_ssim`, but does not report it).
    LPIPS       = lpips package, VGG trunk, inputs in [-1, 1] (needs local VGG16 weights).
    FID, KID    = fid.py (Inception features);  Chamfer, COV, MMD = geometry.py (point sets).

Pretrained networks (VGG16 for LPIPS here, Inception-v3 for FID/KID in fid.py) are used ONLY when their
weights are already on disk. Nothing here downloads: when weights are missing we print one
message saying how to get them and return None ("n/a"), never a number from random weights.

"""
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

VGG16_FILE = "vgg16-397923af.pth"                       # torchvision IMAGENET1K_V1
_WARNED = set()       # messages already printed in this process
_MODELS = {}          # (kind, weight path, device) -> LPIPS network


def hub_checkpoint(name):
    """Where torch.hub keeps a downloaded checkpoint file (we only ever read it)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def warn_once(key, msg):
    """Print msg to stderr the first time `key` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        print(msg, file=sys.stderr, flush=True)


def as_batch(img):
    img = torch.as_tensor(img, dtype=torch.float32)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[-1] != 3:
        raise ValueError(f"metrics: expected images (N,H,W,3) or (H,W,3), got {tuple(img.shape)}")
    return img


def _pair(pred, gt, quantize):
    pred = as_batch(pred)
    gt = as_batch(gt).to(pred.device)
    if pred.shape != gt.shape:
        raise ValueError(f"metrics: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
    return (quantize8(pred) if quantize else pred), gt


# ----------------------------------------------------------------------------- pixels

def quantize8(img):
    """Clamp to [0, 1] and round to the nearest of 256 levels (what saving a PNG does)."""
    return torch.round(torch.as_tensor(img).clamp(0, 1) * 255) / 255


def psnr(pred, gt, quantize=True):
    """Per-image PSNR in dB, peak 1. Returns (N,); inf where the images are identical."""
    pred, gt = _pair(pred, gt, quantize)
    mse = ((pred.double() - gt.double()) ** 2).mean(dim=(1, 2, 3))   # (N,)
    return (-10 * torch.log10(mse)).float()


def _gauss_1d(sigma=1.5, truncate=3.5):
    """scipy.ndimage.gaussian_filter's kernel: radius int(truncate*sigma+0.5) = 5 -> 11 taps."""
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()                                                 # (11,)


SSIM_WINDOWS = ("uniform", "gaussian")


def ssim(pred, gt, quantize=True, window="uniform", win_size=7, sigma=1.5, K1=0.01, K2=0.03):
    """Per-image SSIM (N,) with data range 1 (see the module docstring).

    window="uniform" (default): the evaluation protocol of the paper and pixelNeRF, i.e.
    scikit-image's structural_similarity(data_range=1) defaults: a win_size x win_size box
    (7x7), sample covariance (the N/(N-1) correction, N = 49). window="gaussian": the
    11x11 Gaussian window (sigma 1.5) with population covariance of Wang et al.

    skimage filters the whole image (reflect padding) and then crops (win-1)/2 pixels on each
    side before averaging. The cropped pixels are exactly those whose window never touches
    the padding, so a 'valid' convolution gives the same numbers without any padding.
    tests/test_metrics.py compares both windows with scikit-image where it is installed.
    """
    if window not in SSIM_WINDOWS:
        raise ValueError(f"ssim: window must be one of {SSIM_WINDOWS}, got {window!r}")
    pred, gt = _pair(pred, gt, quantize)
    x = pred.double().permute(0, 3, 1, 2)                              # (N,3,H,W)
    y = gt.double().permute(0, 3, 1, 2)
    if window == "uniform":
        w1 = torch.full((win_size,), 1.0 / win_size, dtype=torch.float64, device=x.device)
        n = win_size * win_size
        cov_norm = n / (n - 1)                                         # sample covariance
    else:
        w1 = _gauss_1d(sigma).to(x.device)
        cov_norm = 1.0                                                 # population covariance
    k = w1.numel()
    if x.shape[-1] < k or x.shape[-2] < k:
        raise ValueError(f"ssim: images {tuple(x.shape[-2:])} smaller than the {k}px window")
    win = (w1[:, None] * w1[None, :])[None, None].repeat(3, 1, 1, 1)  # (3,1,k,k) depthwise

    def filt(z):
        return F.conv2d(z, win, groups=3)                             # (N,3,H-k+1,W-k+1)

    mu_x, mu_y = filt(x), filt(y)
    var_x = cov_norm * (filt(x * x) - mu_x ** 2)
    var_y = cov_norm * (filt(y * y) - mu_y ** 2)
    cov = cov_norm * (filt(x * y) - mu_x * mu_y)
    C1, C2 = K1 ** 2, K2 ** 2                                          # data_range = 1
    s = ((2 * mu_x * mu_y + C1) * (2 * cov + C2)) / ((mu_x ** 2 + mu_y ** 2 + C1) * (var_x + var_y + C2))
    return s.mean(dim=(1, 2, 3)).float()                              # mean over crop and RGB


# ----------------------------------------------------------------------------- LPIPS

def _lpips_model(pnet_rand=False, device="cpu"):
    """lpips.LPIPS(net='vgg') without any download.

    The linear calibration layers ship inside the lpips package (lpips/weights/v0.1/vgg.pth).
    The VGG16 trunk is torchvision's IMAGENET1K_V1, which torchvision loads from the torch
    hub cache by itself when the file is there (it downloads only when it is missing, so we
    check first). Returns None when that checkpoint is missing. pnet_rand=True builds a
    random trunk, plumbing for shape tests: its output is NOT LPIPS and must never be reported.
    """
    path = hub_checkpoint(VGG16_FILE)
    if not pnet_rand and not os.path.isfile(path):
        warn_once("lpips", (
            f"[minissd.eval.metrics] LPIPS unavailable (reported as n/a): VGG16 weights not found at {path}.\n"
            "  To enable it, on a machine with internet run\n"
            "    python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"\n"
            f"  and copy {VGG16_FILE} from its torch hub cache (checkpoints/) into {os.path.dirname(path)}/"))
        return None
    key = ("lpips", "random" if pnet_rand else path, str(device))
    if key not in _MODELS:
        import lpips as lpips_pkg
        with warnings.catch_warnings():   # torchvision 'pretrained=' deprecation noise
            warnings.simplefilter("ignore")
            model = lpips_pkg.LPIPS(pretrained=True, net="vgg", pnet_rand=pnet_rand, verbose=False)
        _MODELS[key] = model.eval().requires_grad_(False).to(device)
    return _MODELS[key]


@torch.no_grad()
def lpips(pred, gt, quantize=True, batch_size=16, model=None):
    """Per-image LPIPS (VGG) (N,), or None when the pretrained VGG16 is not available locally."""
    pred, gt = _pair(pred, gt, quantize)
    model = model if model is not None else _lpips_model(device=pred.device)
    if model is None:
        return None
    out = []
    for i in range(0, pred.shape[0], batch_size):
        a = pred[i:i + batch_size].permute(0, 3, 1, 2) * 2 - 1        # (b,3,H,W) in [-1,1]
        b = gt[i:i + batch_size].permute(0, 3, 1, 2) * 2 - 1
        out.append(model(a, b).reshape(-1))
    return torch.cat(out).float().cpu()


# ----------------------------------------------------------------------------- means

def mean(values):
    """Average of per-image values; None ('n/a') if values is None/empty or has a None."""
    if values is None:
        return None
    if isinstance(values, (int, float)):
        return float(values)
    vals = [v for v in (values.tolist() if hasattr(values, "tolist") else values)]
    vals = [x for v in vals for x in (v if isinstance(v, list) else [v])]
    if len(vals) == 0 or any(v is None for v in vals):
        return None
    return float(np.mean(vals))
