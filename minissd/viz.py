"""Pictures of triplane codes, image grids and training curves for the notebooks
(and `orbit_viewer`, the drag-to-rotate view of one code, from viewer.py).

A code x in R^{3 x C x R x R} has no colours of its own; to look at it we project the C
channels of every texel of all three planes onto their top three principal directions,

    z = (f - mean) V_3,     V_3 = top-3 right singular vectors of the (3 R^2, C) feature matrix,

and map each of the 3 components to [0, 1] by its robust (1st-99th percentile) range, so
the three planes share one colour scheme and similar features look alike. Scenes can share
one basis too (pass several codes to `planes_pca_rgb`), which makes their planes comparable
side by side. `show_channels` shows every channel raw with a diverging colour map.

Plane orientation: P_xy[c, j, i] sits at x = u_i, y = u_j (triplane.py), so images are drawn
with origin="lower": first axis to the right, second axis up.
"""
from __future__ import annotations

import numpy as np
import torch

from minissd.nerf.triplane import PLANE_NAMES
from minissd.viewer import orbit_viewer  # noqa: F401  (drag-to-rotate view of a code; viewer.py)


def _np(x):
    return x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float32)


def planes_pca_rgb(x, basis=None) -> np.ndarray:
    """PCA of the C channels to RGB. x: (3, C, R, R) -> (3, R, R, 3) in [0, 1].

    x may also be (N, 3, C, R, R): then one shared basis is fitted to all N codes and the
    result is (N, 3, R, R, 3). `basis` = (mean (C,), V (C, 3), lo (3,), hi (3,)) reuses a
    projection (returned by `pca_basis`).
    """
    a = _np(x)
    single = a.ndim == 4
    a = a[None] if single else a                                      # (N, 3, C, R, R)
    N, P, C, R, _ = a.shape
    feats = a.transpose(0, 1, 3, 4, 2).reshape(-1, C)                  # (N*3*R*R, C)
    mean, V, lo, hi = basis if basis is not None else pca_basis(feats)
    z = (feats - mean) @ V
    rgb = np.clip((z - lo) / np.maximum(hi - lo, 1e-8), 0, 1).reshape(N, P, R, R, 3)
    return rgb[0] if single else rgb


def pca_basis(feats: np.ndarray):
    """(M, C) features -> mean, top-3 directions (C, 3), and the 1st/99th percentiles."""
    feats = _np(feats)
    mean = feats.mean(0)
    _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
    V = vt[:3].T
    if V.shape[1] < 3:                                                  # C < 3: pad
        V = np.concatenate([V, np.zeros((V.shape[0], 3 - V.shape[1]), V.dtype)], 1)
    z = (feats - mean) @ V
    lo, hi = np.percentile(z, 1, axis=0), np.percentile(z, 99, axis=0)
    return mean, V, lo, hi


def show_triplanes(x, title: str | None = None, axes=None):
    """Draw the three planes of one code x (3, C, R, R) as PCA colour images."""
    import matplotlib.pyplot as plt
    rgb = planes_pca_rgb(x)
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
    else:
        fig = axes[0].figure
    for k, ax in enumerate(axes):
        ax.imshow(rgb[k], origin="lower", extent=(-1, 1, -1, 1))
        a, b = PLANE_NAMES[k]
        ax.set_title(f"{PLANE_NAMES[k]} plane", fontsize=9)
        ax.set_xlabel(a), ax.set_ylabel(b)
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def show_channels(x, vmax: float | None = None):
    """Every channel of every plane of x (3, C, R, R): a 3 x C grid, diverging colours."""
    import matplotlib.pyplot as plt
    a = _np(x)
    P, C = a.shape[:2]
    vmax = float(np.abs(a).max()) if vmax is None else vmax
    fig, axes = plt.subplots(P, C, figsize=(1.3 * C, 1.4 * P), squeeze=False)
    for k in range(P):
        for c in range(C):
            ax = axes[k, c]
            ax.imshow(a[k, c], origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(PLANE_NAMES[k], fontsize=9)
            if k == 0:
                ax.set_title(f"ch {c}", fontsize=9)
    fig.suptitle(f"code channels (colour range +-{vmax:.2f})", fontsize=10)
    fig.tight_layout()
    return fig


def compare_triplanes(xs, names=None, basis=None):
    """Codes of several scenes (N, 3, C, R, R) side by side in one shared PCA colour scheme
    (fitted to xs, or `basis` from `pca_basis`, to colour several figures alike)."""
    import matplotlib.pyplot as plt
    rgb = planes_pca_rgb(xs, basis)                                     # (N, 3, R, R, 3)
    N = rgb.shape[0]
    fig, axes = plt.subplots(3, N, figsize=(1.6 * N, 4.8), squeeze=False)
    for i in range(N):
        for k in range(3):
            ax = axes[k, i]
            ax.imshow(rgb[i, k], origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(PLANE_NAMES[k])
        axes[0, i].set_title(names[i] if names else f"scene {i}", fontsize=9)
    fig.tight_layout()
    return fig


def image_grid(images, nrow: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images (N, H, W, 3) (tensor/array/list) into one (rows*H', cols*W', 3) array."""
    imgs = np.stack([_np(im) for im in images]) if isinstance(images, (list, tuple)) else _np(images)
    if imgs.ndim == 3:
        imgs = imgs[..., None].repeat(3, -1)
    N, H, W, Ch = imgs.shape
    nrow = nrow or int(np.ceil(np.sqrt(N)))                             # images per row
    ncol_rows = int(np.ceil(N / nrow))
    out = np.full((ncol_rows * (H + pad) + pad, nrow * (W + pad) + pad, Ch), pad_value, np.float32)
    for i in range(N):
        r, c = divmod(i, nrow)
        out[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = imgs[i]
    return np.clip(out, 0, 1)


def show_images(images, titles=None, nrow: int | None = None, size: float = 1.6, suptitle=None):
    """Show images (N, H, W, 3) in a row-major grid of subplots with optional titles."""
    import matplotlib.pyplot as plt
    imgs = [_np(im) for im in images]
    N = len(imgs)
    nrow = nrow or N
    rows = int(np.ceil(N / nrow))
    fig, axes = plt.subplots(rows, nrow, figsize=(size * nrow, size * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, im in enumerate(imgs):
        ax = axes.flat[i]
        ax.imshow(np.clip(im, 0, 1))
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_ray(t, weights, transmittance, sigma=None, ax=None):
    """Weights w_i, transmittance T_i (and density) along one ray, as in eq. 1."""
    import matplotlib.pyplot as plt
    t, w, T = _np(t), _np(weights), _np(transmittance)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(t, T, label="transmittance $T_i$")
    ax.bar(t, w / max(w.max(), 1e-8), width=(t[1] - t[0]) * 0.8, alpha=0.5,
           label="weight $w_i$ (scaled to max 1)")
    if sigma is not None:
        s = _np(sigma)
        ax.plot(t, s / max(s.max(), 1e-8), "--", label="density $\\sigma_i$ (scaled)")
    ax.set_xlabel("t along the ray")
    ax.legend(fontsize=8)
    return ax


# ----------------------------------------------------------------------------- training curves
CURVES = (("loss_rend", "rendering loss (eq. 1)"), ("loss_diff", "diffusion loss (eq. 2)"))


def log_series(log, key):
    """(iters, values) of the finite values of `key` in log rows; None, NaN, inf and missing
    values are skipped (the rendering loss does not exist in stage 2 of two-stage, etc.)."""
    it, val = [], []
    for r in log:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            it.append(r.get("iter", len(it) + 1)), val.append(float(v))
    return np.asarray(it), np.asarray(val)


def plot_training_curves(log, path: str | None = None, title: str | None = None, dpi: int = 100):
    """Rendering and diffusion losses against the outer iteration, from Trainer.log rows or
    log.jsonl (values may be null/NaN). Raw values faint, a moving average on top, a dashed
    line where the phase changes (two-stage: stage 1 -> stage 2). Returns the Figure, or
    the path it was saved to when `path` is given. Uses no pyplot (works headless)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 3))
    axes = fig.subplots(1, len(CURVES))
    changes = [r.get("iter") for a, r in zip(log, log[1:]) if a.get("phase") != r.get("phase")]
    for ax, (key, label) in zip(axes, CURVES):
        it, val = log_series(log, key)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("outer iteration")
        if len(val) == 0:
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.plot(it, val, alpha=0.3, lw=0.8)
        if len(val) > 20:
            k = max(5, len(val) // 30)
            ax.plot(it[k - 1:], np.convolve(val, np.ones(k) / k, mode="valid"), lw=1.5)
        if (val > 0).all():
            ax.set_yscale("log")
        for c in changes:
            ax.axvline(c, color="k", ls="--", lw=0.8, alpha=0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=dpi)
    return path
