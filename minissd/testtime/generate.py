"""Unconditional generation: x_T ~ N(0, I) -> DDIM (eta = 0) with the EMA denoiser -> x0.

    x_T ~ N(0, I)  (3, C, R, R);   x_{t_{i+1}} = DDIM(x_{t_i}, x0_hat = phi_EMA(x_{t_i}, t_i))
    x = x0                       a triplane NeRF, rendered by the (EMA) decoder psi

Everything here is in the triplane layout (B, 3, C, R, R); the prior stacks the planes
into the (B, 3C, R, R) image its UNet sees internally.

DDIM with eta = 0 is a deterministic map from noise to code, so
  * a turntable is the same code rendered from an orbit of cameras at the training
    radius (2.6 in minissd's normalised coordinates, 1.3 in raw SRN units);
  * interpolating two noises x_T^a, x_T^b and running DDIM on each point of the path
    gives a path of NeRFs whose end points are exactly the two samples;
  * the nearest training code (L2 on codes, or on rendered images) of a sample shows
    whether the prior generalises or copies its training scenes.

    python -m minissd sample --ckpt MODEL.pt --n 8 --out samples/
"""
from __future__ import annotations

import os

from PIL import Image
import numpy as np
import torch
from tqdm.auto import tqdm

from minissd.data.cameras import CAMERA_RADIUS, intrinsics, orbit_poses
from minissd.nerf.render import render_image
from minissd.prior.sampling import ddim_sample
from minissd.utils import randn


def noise(model, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """x_T ~ N(0, I) in the triplane layout: (n, 3, C, R, R) on the model's device."""
    cfg = model.cfg
    return randn((n, 3, cfg.code_ch, cfg.code_res, cfg.code_res), generator, model.codes.device)


@torch.no_grad()
def codes_from_noise(model, x_T: torch.Tensor, steps: int | None = None, callback=None,
                     progress: bool = False) -> torch.Tensor:
    """DDIM (eta = 0) from x_T (B, 3, C, R, R) -> codes (B, 3, C, R, R)."""
    return ddim_sample(model.prior.denoise, x_T, model.prior.schedule,
                       steps=steps or model.cfg.ddim_steps, callback=callback, progress=progress)


def sample_codes(model, n: int, steps: int | None = None,
                 generator: torch.Generator | None = None, callback=None,
                 progress: bool = False) -> torch.Tensor:
    """n new scene codes (n, 3, C, R, R) from the prior."""
    return codes_from_noise(model, noise(model, n, generator), steps, callback, progress)


def render_views(model, code: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor | None = None,
                 res: int | None = None, n_samples: int | None = None, batch: int = 8,
                 progress: bool = False) -> torch.Tensor:
    """Render one code (3, C, R, R) from V cameras c2w (V, 4, 4), `batch` cameras per
    render_image call -> (V, H, W, 3) in [0, 1] on the CPU. K: (3, 3) or (V, 3, 3)."""
    res = res or model.cfg.image_res
    dev = code.device
    c2w, K = c2w.to(dev), (intrinsics(res) if K is None else K).to(dev)
    field = model.field(code[None])                                     # a field of 1 scene
    out = []
    for i in tqdm(range(0, len(c2w), batch), desc="render", disable=not progress, leave=False):
        k = K[None, i:i + batch] if K.dim() == 3 else K                 # (1, v, 3, 3) or (3, 3)
        out.append(render_image(field, c2w[None, i:i + batch], k, res, res,
                                n_samples or model.cfg.n_samples)["rgb"][0].clamp(0, 1))
    return torch.cat(out).cpu()


def turntable(model, codes: torch.Tensor, n_frames: int = 16, radius: float = CAMERA_RADIUS,
              elevation_deg: float = 20.0, res: int | None = None,
              progress: bool = False) -> torch.Tensor:
    """Orbit renders of codes (B, 3, C, R, R) -> frames (B, F, H, W, 3)."""
    poses = orbit_poses(n_frames, radius=radius, elevation_deg=elevation_deg)
    return torch.stack([render_views(model, c, poses, res=res)
                        for c in tqdm(codes, desc="turntables", disable=not progress)])


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (torch.as_tensor(frames).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def save_strip(frames: torch.Tensor, path: str) -> str:
    """Frames (F, H, W, 3) side by side, or (B, F, H, W, 3) as B rows -> one PNG."""
    a = to_uint8(frames)
    if a.ndim == 4:
        a = a[None]
    B, F, H, W, _ = a.shape
    grid = a.transpose(0, 2, 1, 3, 4).reshape(B * H, F * W, 3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def save_gif(frames: torch.Tensor, path: str, fps: int = 12) -> str:
    """An animated GIF (looping) of frames (F, H, W, 3)."""
    imgs = [Image.fromarray(f) for f in to_uint8(frames)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return path


def interpolate_noise(x_a: torch.Tensor, x_b: torch.Tensor, n: int,
                      mode: str = "linear") -> torch.Tensor:
    """n points from x_a to x_b (each (3, C, R, R)) -> (n, 3, C, R, R), end points exact.

    "linear" is (1 - w) x_a + w x_b; its norm sags mid-way (variance (1-w)^2 + w^2 < 1),
    which DDIM sees as an unusually quiet x_T. "slerp" follows the great circle and keeps
    the norm of Gaussian noise."""
    w = torch.linspace(0, 1, n, device=x_a.device).reshape(n, *([1] * x_a.dim()))
    if mode == "linear":
        return (1 - w) * x_a + w * x_b
    if mode != "slerp":
        raise ValueError(f"interpolate_noise: mode must be 'linear' or 'slerp', got {mode!r}")
    cos = (x_a * x_b).sum() / (x_a.norm() * x_b.norm())
    th = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    out = (torch.sin((1 - w) * th) * x_a + torch.sin(w * th) * x_b) / torch.sin(th)
    out[0], out[-1] = x_a, x_b
    return out


def interpolate(model, x_a: torch.Tensor, x_b: torch.Tensor, n: int = 5, steps: int | None = None,
                mode: str = "linear") -> torch.Tensor:
    """Codes (n, 3, C, R, R) along the noise path x_a -> x_b (x_* (3, C, R, R) noises)."""
    return codes_from_noise(model, interpolate_noise(x_a, x_b, n, mode), steps)


def nearest_training(model, codes: torch.Tensor, by: str = "code", c2w: torch.Tensor | None = None,
                     res: int | None = None):
    """Index (B,) and distance (B,) of each code's nearest training scene.

    by="code": mean squared distance between codes; by="image": mean squared distance
    between renders from the camera(s) c2w (V, 4, 4) (default: 4 orbit views)."""
    train = model.codes.to(codes.device)
    if by == "code":
        d = torch.cdist(codes.flatten(1), train.flatten(1)) ** 2 / codes[0].numel()
    elif by == "image":
        c2w = orbit_poses(4, radius=CAMERA_RADIUS) if c2w is None else c2w
        r = lambda xs: torch.stack([render_views(model, x, c2w, res=res) for x in xs])  # noqa: E731
        a, b = r(codes).flatten(1), r(train).flatten(1)
        d = torch.cdist(a, b) ** 2 / a.shape[1]
    else:
        raise ValueError(f"nearest_training: by must be 'code' or 'image', got {by!r}")
    dist, idx = d.min(dim=1)
    return idx, dist
