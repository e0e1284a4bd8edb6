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
    FID(a, b)   = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))     on Inception pool features
    KID(a, b)   = unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over 100 random subsets
                  of at most 1000 (Binkowski et al. 2018; mmgen's num_subsets; report x 1e3).
    CD(P, Q)    = mean_p min_q ||p - q||^2 + mean_q min_p ||q - p||^2      (squared distances)
    COV         = fraction of reference shapes that are the nearest neighbour (by CD) of
                  at least one generated shape;  MMD = mean_ref min_gen CD   (PointFlow / DiffRF).

Pretrained networks (VGG16 for LPIPS, Inception-v3 for FID/KID) are used ONLY when their
weights are already on disk. Nothing here downloads: when weights are missing we print one
message saying how to get them and return None ("n/a"), never a number from random weights.

FID/KID features depend on the network, so every result records which one made them
(`fid_network()`). Published numbers (the paper's, through mmgen; StyleGAN2-ADA) use the
TorchScript port of TF "inception-2015-12-05", file inception-2015-12-05.pt, looked for at
$MINISSD_INCEPTION, then ~/.cache/minissd/weights/ (MINISSD_CACHE/weights), then the torch
hub checkpoints/. Only that network is labelled comparable with published numbers; the
fallbacks (pytorch-fid's port, torchvision's ImageNet Inception) are labelled not comparable.
"""
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from minissd.config import cache_dir

VGG16_FILE = "vgg16-397923af.pth"                       # torchvision IMAGENET1K_V1
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"      # torchvision IMAGENET1K_V1
FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid port of TF FID net
INCEPTION_TS_FILE = "inception-2015-12-05.pt"            # TorchScript TF net (StyleGAN2-ADA, mmgen)
INCEPTION_TS_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                    + INCEPTION_TS_FILE)                 # for the README's one-time fetch only
INCEPTION_ENV = "MINISSD_INCEPTION"                      # path of inception-2015-12-05.pt
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000                 # mmgen's KID (num_subsets, max size)
# what each feature network is called in results, and whether its FID/KID can sit next to
# published numbers
FID_NETWORKS = {
    "torchscript": ("inception-2015-12-05 (TF, TorchScript)", True),
    "pytorch-fid": ("pt_inception-2015-12-05 (pytorch-fid port; NOT comparable)", False),
    "torchvision": ("torchvision inception_v3 IMAGENET1K_V1 (NOT comparable)", False),
}
_WARNED = set()       # messages already printed in this process
_MODELS = {}          # (kind, weight path, device) -> network


def _checkpoint(name):
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def _warn_once(key, msg):
    if key not in _WARNED:
        _WARNED.add(key)
        print(msg, file=sys.stderr, flush=True)


def _as_batch(img):
    img = torch.as_tensor(img, dtype=torch.float32)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[-1] != 3:
        raise ValueError(f"metrics: expected images (N,H,W,3) or (H,W,3), got {tuple(img.shape)}")
    return img


def _pair(pred, gt, quantize):
    pred = _as_batch(pred)
    gt = _as_batch(gt).to(pred.device)
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
    path = _checkpoint(VGG16_FILE)
    if not pnet_rand and not os.path.isfile(path):
        _warn_once("lpips", (
            f"[minissd.metrics] LPIPS unavailable (reported as n/a): VGG16 weights not found at {path}.\n"
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


# ----------------------------------------------------------------------------- FID / KID

def inception_paths():
    """Where inception-2015-12-05.pt (TorchScript) is looked for, in order."""
    env = os.environ.get(INCEPTION_ENV)
    return ([env] if env else []) + [os.path.join(cache_dir(), "weights", INCEPTION_TS_FILE),
                                     _checkpoint(INCEPTION_TS_FILE)]


def _inception_model(device="cpu"):
    """(network, kind) from local files only, the published one first:
    "torchscript": inception-2015-12-05.pt (inception_paths()), the network of mmgen and
        StyleGAN2-ADA; takes uint8 (N, 3, H, W), resizes and normalises itself;
    "pytorch-fid": pytorch-fid's port (package installed and its weights in the hub cache);
    "torchvision": torchvision's ImageNet inception_v3 (hub cache).
    (None, None) and one message when there is none."""
    env = os.environ.get(INCEPTION_ENV)
    if env and not os.path.isfile(env):
        _warn_once("inception-env", f"[minissd.metrics] {INCEPTION_ENV}={env}: no such file; ignored")
    for path in inception_paths():
        if os.path.isfile(path):
            key = ("torchscript", os.path.abspath(path), str(device))
            if key not in _MODELS:
                try:
                    with warnings.catch_warnings():             # torch.jit deprecation notice
                        warnings.simplefilter("ignore", FutureWarning)
                        net = torch.jit.load(path, map_location=device)
                except (RuntimeError, ValueError) as e:
                    raise RuntimeError(f"{path}: not a TorchScript {INCEPTION_TS_FILE} ({e})") from None
                _MODELS[key] = net.eval()
            return _MODELS[key], "torchscript"
    fid_path, tv_path = _checkpoint(FID_INCEPTION_FILE), _checkpoint(INCEPTION_FILE)
    if os.path.isfile(fid_path):
        try:
            from pytorch_fid.inception import InceptionV3  # loads fid_path from the hub cache
            key = ("fid-inception", fid_path, str(device))
            if key not in _MODELS:
                _MODELS[key] = InceptionV3([3]).eval().to(device)
            return _MODELS[key], "pytorch-fid"
        except ImportError:
            pass
    if not os.path.isfile(tv_path):
        _warn_once("inception", (
            f"[minissd.metrics] FID/KID unavailable (reported as n/a): no Inception network found at "
            f"{' or '.join(inception_paths())} (nor {tv_path}).\n"
            f"  To enable it (once, on a machine with internet), fetch {INCEPTION_TS_FILE}, the network of "
            "the published numbers:\n"
            f"    mkdir -p {os.path.dirname(inception_paths()[-2])} && curl -L -o "
            f"{inception_paths()[-2]} {INCEPTION_TS_URL}\n"
            f"  or point {INCEPTION_ENV} at a copy of it."))
        return None, None
    key = ("tv-inception", tv_path, str(device))
    if key not in _MODELS:
        import torchvision
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                              transform_input=False)
        net.load_state_dict(torch.load(tv_path, map_location="cpu", weights_only=True))
        net.fc = torch.nn.Identity()                                   # -> 2048-d pool features
        _MODELS[key] = net.eval().requires_grad_(False).to(device)
    return _MODELS[key], "torchvision"


def fid_network(device="cpu"):
    """{"name", "comparable", "kind"} of the network FID/KID would use now, or None (n/a).
    Record it next to every FID/KID: numbers from different networks do not compare."""
    _, kind = _inception_model(device)
    if kind is None:
        return None
    name, comparable = FID_NETWORKS[kind]
    return {"name": name, "comparable": comparable, "kind": kind}


def fid_network_note(info) -> str:
    """One line for under a table: which network made FID/KID, and whether it compares."""
    if info is None:
        return "FID/KID: n/a (no Inception network on disk; see the README, 'FID and KID')"
    if info["comparable"]:
        return f"FID/KID features: {info['name']}, the network of the published numbers"
    return (f"FID/KID features: {info['name']}: these FID/KID values are NOT comparable with the "
            f"paper's (which use {INCEPTION_TS_FILE})")


@torch.no_grad()
def inception_features(images, batch_size=32, device="cpu"):
    """(N, D) numpy pool features (D = 2048) of images (N,H,W,3) in [0,1], or None without
    a network. Which network: fid_network()."""
    model, kind = _inception_model(device)
    if model is None:
        return None
    images = quantize8(_as_batch(images))
    feats = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].permute(0, 3, 1, 2).to(device)    # (b,3,H,W)
        if kind == "torchscript":                                      # as StyleGAN2-ADA / mmgen
            f = model((x * 255).round().to(torch.uint8), return_features=True)
        elif kind == "pytorch-fid":
            f = model(x)[0].flatten(1)                                 # resizes + normalises itself
        else:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            f = model(x * 2 - 1)                                       # Google weights expect [-1,1]
        feats.append(f.double().cpu())
    return torch.cat(feats).numpy()


def frechet_distance(feats_a, feats_b):
    """FID between two (N, D) feature sets; Tr sqrt(Sa Sb) from the symmetric Sa^1/2 Sb Sa^1/2."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))

    def sqrtm_psd(m):
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    ra = sqrtm_psd(cov_a)
    eig = np.linalg.eigvalsh(ra @ cov_b @ ra)                          # same spectrum as Sa Sb
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


def kernel_inception_distance(feats_a, feats_b, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE,
                              seed=0):
    """KID (mean, std) over `subsets` random subsets: unbiased MMD^2, cubic polynomial kernel."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("kernel_inception_distance: need at least 2 samples per set")
    d, rng, vals = a.shape[1], np.random.default_rng(seed), []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = [(p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y))]
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


# ----------------------------------------------------------------------------- geometry

def chamfer_distance(p, q, chunk=4096):
    """Symmetric Chamfer distance of (N,3) and (M,3): sum of both mean SQUARED NN distances."""
    p, q = torch.as_tensor(p, dtype=torch.float32), torch.as_tensor(q, dtype=torch.float32)
    if len(p) == 0 or len(q) == 0:
        raise ValueError("chamfer_distance: empty point set")

    def one_way(src, dst):
        return torch.cat([torch.cdist(src[i:i + chunk], dst).min(dim=1).values
                          for i in range(0, len(src), chunk)]) ** 2   # (len(src),)

    return float(one_way(p, q).mean() + one_way(q, p).mean())


def coverage_mmd(generated_sets, reference_sets):
    """COV and MMD (Chamfer) of generated shapes against reference shapes (lists of (P,3))."""
    D = torch.tensor([[chamfer_distance(g, r) for r in reference_sets] for g in generated_sets])
    nearest_ref = D.argmin(dim=1)                                      # (n_gen,)
    cov = len(set(nearest_ref.tolist())) / len(reference_sets)
    mmd = D.min(dim=0).values.mean().item()                           # over reference shapes
    return {"cov": cov, "mmd": mmd}


@torch.no_grad()
def points_from_density(density_fn, res=64, threshold=10.0, n_points=2048, bound=1.0,
                        generator=None, chunk=65536, device="cpu"):
    """Surface points of a density field by a density THRESHOLD (not marching cubes).

    density_fn(xyz (M,3)) -> (M,). Evaluate at res^3 cell centres in [-bound, bound]^3, mark
    cells with density > threshold, keep the shell (occupied cells with at least one of their
    6 neighbours empty; outside the grid counts as empty), and sample n_points uniformly
    inside random shell cells. Returns (n_points, 3), or (0, 3) if nothing is occupied.
    """
    return points_from_grid(density_grid(density_fn, res, bound, chunk, device), threshold,
                            n_points, bound, generator)


def density_grid(density_fn, res=64, bound=1.0, chunk=65536, device="cpu") -> torch.Tensor:
    """density_fn(xyz (M,3)) -> (M,) at the res^3 cell centres of [-bound, bound]^3:
    (res, res, res), indexed (x, y, z)."""
    h = 2 * bound / res
    c = -bound + (torch.arange(res, device=device, dtype=torch.float32) + 0.5) * h
    xyz = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)  # (res^3,3)
    sigma = torch.cat([density_fn(xyz[i:i + chunk]).reshape(-1) for i in range(0, len(xyz), chunk)])
    return sigma.reshape(res, res, res)


def points_from_grid(sigma: torch.Tensor, threshold=10.0, n_points=2048, bound=1.0,
                     generator=None) -> torch.Tensor:
    """points_from_density on a density grid already evaluated (density_grid), so several
    thresholds share one evaluation. sigma (res, res, res) -> (n_points, 3) or (0, 3)."""
    res, device = sigma.shape[0], sigma.device
    h = 2 * bound / res
    occ = sigma > threshold
    pad = F.pad(occ[None, None].float(), (1, 1, 1, 1, 1, 1))[0, 0]   # outside = empty
    all_nb = torch.ones_like(occ)
    for dim in range(3):
        for s in (0, 2):
            all_nb &= pad.narrow(dim, s, res).narrow((dim + 1) % 3, 1, res).narrow((dim + 2) % 3, 1, res) > 0
    shell = torch.nonzero(occ & ~all_nb)                               # (S,3) cell indices
    if len(shell) == 0:
        return torch.zeros(0, 3, device=device)
    pick = torch.randint(len(shell), (n_points,), generator=generator).to(device)
    jitter = torch.rand(n_points, 3, generator=generator).to(device)
    return -bound + (shell[pick].float() + jitter) * h


# ----------------------------------------------------------------------------- tables

COLUMNS = ("PSNR", "SSIM", "LPIPS", "FID")
_FORMATS = {"PSNR": "{:.2f}", "SSIM": "{:.3f}", "LPIPS": "{:.3f}", "FID": "{:.2f}"}


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


def summary_header(columns=COLUMNS):
    return "| method | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|"


def summarize(metrics, label="minissd", columns=COLUMNS):
    """{'PSNR': [per image...], 'LPIPS': None, 'FID': 12.3, ...} -> markdown row ('n/a' if missing)."""
    cells = []
    for col in columns:
        m = mean(metrics.get(col, metrics.get(col.lower())))
        cells.append("n/a" if m is None else _FORMATS.get(col, "{:.4g}").format(m))
    return f"| {label} | " + " | ".join(cells) + " |"
