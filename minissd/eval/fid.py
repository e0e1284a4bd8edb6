"""FID and KID between two image sets, on Inception-v3 pool features (the generation
and reconstruction tables' FID; official code: mmgen's FID/KID metrics).

    FID(a, b) = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))
    KID(a, b) = unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over 100 random
                subsets of at most 1000 (Binkowski et al. 2018; mmgen's num_subsets;
                report x 1e3)

As everywhere in minissd, the network is used ONLY when its weights are already on disk;
otherwise one message says how to get them and the metric is None ("n/a").

FID/KID features depend on the network, so every result records which one made them
(`fid_network()`). Published numbers (the paper's, through mmgen; StyleGAN2-ADA) use the
TorchScript port of TF "inception-2015-12-05", file inception-2015-12-05.pt, looked for at
$MINISSD_INCEPTION, then ~/.cache/minissd/weights/ (MINISSD_CACHE/weights), then the torch
hub checkpoints/. Only that network is labelled comparable with published numbers; the
fallbacks (pytorch-fid's port, torchvision's ImageNet Inception) are labelled not comparable.
"""
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from minissd.config import cache_dir
from minissd.eval.metrics import as_batch, hub_checkpoint, quantize8, warn_once

INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"      # torchvision IMAGENET1K_V1
FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid port of TF FID net
INCEPTION_TS_FILE = "inception-2015-12-05.pt"            # TorchScript TF net (StyleGAN2-ADA, mmgen)
INCEPTION_TS_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                    + INCEPTION_TS_FILE)                 # for the one-time fetch in docs/install.md only
INCEPTION_ENV = "MINISSD_INCEPTION"                      # path of inception-2015-12-05.pt
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000                 # mmgen's KID (num_subsets, max size)
# what each feature network is called in results, and whether its FID/KID can sit next to
# published numbers
FID_NETWORKS = {
    "torchscript": ("inception-2015-12-05 (TF, TorchScript)", True),
    "pytorch-fid": ("pt_inception-2015-12-05 (pytorch-fid port; NOT comparable)", False),
    "torchvision": ("torchvision inception_v3 IMAGENET1K_V1 (NOT comparable)", False),
}
_MODELS = {}          # (kind, weight path, device) -> network


def inception_paths():
    """Where inception-2015-12-05.pt (TorchScript) is looked for, in order."""
    env = os.environ.get(INCEPTION_ENV)
    return ([env] if env else []) + [os.path.join(cache_dir(), "weights", INCEPTION_TS_FILE),
                                     hub_checkpoint(INCEPTION_TS_FILE)]


def _inception_model(device="cpu"):
    """(network, kind) from local files only, the published one first:
    "torchscript": inception-2015-12-05.pt (inception_paths()), the network of mmgen and
        StyleGAN2-ADA; takes uint8 (N, 3, H, W), resizes and normalises itself;
    "pytorch-fid": pytorch-fid's port (package installed and its weights in the hub cache);
    "torchvision": torchvision's ImageNet inception_v3 (hub cache).
    (None, None) and one message when there is none."""
    env = os.environ.get(INCEPTION_ENV)
    if env and not os.path.isfile(env):
        warn_once("inception-env", f"[minissd.eval.fid] {INCEPTION_ENV}={env}: no such file; ignored")
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
    fid_path, tv_path = hub_checkpoint(FID_INCEPTION_FILE), hub_checkpoint(INCEPTION_FILE)
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
        warn_once("inception", (
            f"[minissd.eval.fid] FID/KID unavailable (reported as n/a): no Inception network found at "
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
        return "FID/KID: n/a (no Inception network on disk; see docs/install.md, 'FID and KID')"
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
    images = quantize8(as_batch(images))
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
