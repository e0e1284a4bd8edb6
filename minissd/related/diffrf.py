"""DiffRF: diffusion directly on voxel radiance fields, with a rendering loss on the
denoised field (DiffRF, Mueller et al. CVPR 2023, eqs. 7-11 as the seed presents them).

Forward process on a fitted grid f_0 (voxel.py), the same schedule as minissd's prior
(prior/diffusion.py: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)):

    f_t = alpha_t f_0 + sigma_t eps                                         (7)
    L_RF = E_{t, eps} || eps - eps_theta(f_t, t) ||^2                         (8)

eps-prediction (minissd's triplane prior predicts v; DiffRF predicts eps). The denoised
field, the closed form of eps_theta's x0 estimate:

    f~_0^t = (f_t - sigma_t eps_theta) / alpha_t
           = f_0 + sigma_t / alpha_t (eps - eps_theta(f_t, t))               (9)

is rendered from the scene's own cameras and compared with its images:

    L_RGB^t = omega_t E_v || I_v - R(v, f~_0^t) ||^2                         (10)
    L = L_RF + lambda_RGB L_RGB,         omega_t = alpha_t^2 = abar_t          (11)

omega_t is ours (the seed leaves it open): it fades the rendering loss out at large t,
where f~_0^t is a blur whose renders cannot match any image. R is minissd's renderer on
the voxel field (voxel.VoxelField). Sampling is DDIM/DDPM over `denoise(f_t, t) = f~_0`
(prior/sampling.py); image-to-volume synthesis corrects f~_0 by the gradient of an image
loss at each step (`ImageGuidance`, the seed's f~_0^t <- f~_0^t - lambda grad l(I~_t, I)).

    model = DiffRFModel.load("assets/models/cars-diffrf-laptop-6000it-994bb6a6.pt")
    grids = sample_grids(model, 4)                       # (4, 4, G, G, G)
    images = render_views(model, grids[0], c2w, K)       # testtime.generate, any model
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn

from minissd.config import preset_data
from minissd.nerf.render import render_rays
from minissd.overrides import StoredConfig
from minissd.prior.diffusion import NoiseSchedule, q_sample, x0_from_eps
from minissd.prior.sampling import ddim_sample
from minissd.related.unet3d import UNet3D
from minissd.related.voxel import VoxelField
from minissd.ssd import checkpoint as ckpt
from minissd.testtime.guidance import subset_rays, views_to_rays
from minissd.utils import clip_x0, per_sample, randint, randn, randn_like

MODEL_FORMAT = "minissd-diffrf-v1"


@dataclass(frozen=True)
class DiffRFConfig(StoredConfig):
    name: str = "laptop"
    # --- data: the SSDNeRF preset of the same name's (config.preset_data) -----------
    image_res: int = 64
    views_per_scene: int = 0
    data_scenes: int = 64
    data_views: int = 50
    # --- voxel fitting (voxel.py) ----------------------------------------------------
    grid_res: int = 16            # G: 16^3 (measured: docs/diffrf.md)
    n_samples: int = 48
    near_min: float = 0.2
    fit_iters: int = 200
    fit_batch: int = 16
    fit_rays: int = 256
    fit_lr: float = 0.2
    fit_tv: float = 0.02
    fit_empty: float = 1e-3
    # --- diffusion (eqs. 7-11) ------------------------------------------------------
    T: int = 1000
    schedule: str = "linear"
    unet_base: int = 16
    unet_mults: tuple = (1, 2, 4)
    unet_groups: int = 8
    iters: int = 6000
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 100
    lambda_rgb: float = 1.0
    rgb_rays: int = 128
    ddim_steps: int = 50
    ema_beta: float = 0.995
    ckpt_every: int = 50
    seed: int = 0


PRESETS = {
    "smoke": DiffRFConfig(**preset_data("smoke"), fit_iters=100, fit_batch=8, fit_rays=256,
                          unet_base=8, unet_mults=(1, 2), unet_groups=4, iters=300, batch=8,
                          rgb_rays=128, ddim_steps=10, ema_beta=0.9, warmup=5, ckpt_every=20),
    "laptop": DiffRFConfig(**preset_data("laptop")),
}


def diffrf_preset(name: str, **overrides) -> DiffRFConfig:
    if name not in PRESETS:
        raise ValueError(f"--preset {name}: DiffRF has presets {sorted(PRESETS)}")
    bad = set(overrides) - {f.name for f in fields(DiffRFConfig)}
    if bad:
        raise ValueError(f"unknown DiffRF config keys {sorted(bad)}")
    return replace(PRESETS[name], **overrides)


# ------------------------------------------------------------------------- the prior ----
class VoxelPrior(nn.Module):
    """eps_theta (a 3D UNet) + the schedule. `denoise(f_t, t) = f~_0` (eq. 9), clipped."""

    def __init__(self, cfg: DiffRFConfig, clip: float = 2.0):
        super().__init__()
        self.unet = UNet3D.from_config(cfg)
        self.schedule = NoiseSchedule(cfg.T, cfg.schedule)
        self.clip = clip

    def forward(self, f_t, t):
        return self.unet(f_t, t)                                            # eps_hat

    def denoise(self, f_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t)
        return clip_x0(x0_from_eps(f_t, self(f_t, t), alpha, sigma), self.clip)


def denoised_field(f0, eps, eps_hat, alpha, sigma):
    """f~_0^t = f_0 + sigma_t / alpha_t (eps - eps_hat), eq. (9)."""
    return f0 + per_sample(sigma / alpha, f0) * (eps - eps_hat)


def rf_loss(eps, eps_hat) -> torch.Tensor:
    """L_RF per scene (B,): mean over voxels of (eps - eps_hat)^2, eq. (8)."""
    return (eps - eps_hat).pow(2).flatten(1).mean(1)


def rgb_loss(f0_tilde, rays, alpha, n_samples: int, near_min: float = 0.2) -> torch.Tensor:
    """L_RGB per scene (B,): omega_t * 0.5 ||I - R(f~_0)||^2 (sum over RGB, mean over
    rays), omega_t = alpha_t^2, eq. (10). f~_0 is clamped to the grid range first."""
    out = render_rays(VoxelField(f0_tilde.clamp(-2, 2)), rays.origins, rays.dirs, n_samples,
                      near_min=near_min, stratified=False)
    return alpha.pow(2) * 0.5 * (out["rgb"] - rays.target).pow(2).sum(-1).mean(-1)


def diffrf_losses(prior: VoxelPrior, f0, rays, cfg, t=None, noise=None, generator=None) -> dict:
    """One training step's losses for fitted grids f0 (B, 4, G, G, G) and rays of their
    views: {"rf": (B,), "rgb": (B,), "loss": (B,) = rf + lambda_RGB rgb, "f0_tilde", "t"}."""
    B = f0.shape[0]
    t = randint(prior.schedule.T, (B,), generator, f0.device) if t is None else t
    eps = randn_like(f0, generator) if noise is None else noise
    alpha, sigma = prior.schedule.alpha_sigma(t)
    f_t = q_sample(f0, eps, alpha, sigma)                                   # eq. (7)
    eps_hat = prior(f_t, t)
    f0_tilde = denoised_field(f0, eps, eps_hat, alpha, sigma)               # eq. (9)
    rf = rf_loss(eps, eps_hat)
    rgb = rgb_loss(f0_tilde, rays, alpha, cfg.n_samples, cfg.near_min) if cfg.lambda_rgb > 0 \
        else torch.zeros_like(rf)
    return {"rf": rf, "rgb": rgb, "loss": rf + cfg.lambda_rgb * rgb, "f0_tilde": f0_tilde, "t": t}


# ------------------------------------------------------------------------- the model ----
@dataclass
class DiffRFModel:
    """What test time needs: the config, the EMA denoiser and the fitted training grids
    (`codes`, so minissd's evaluation functions, which read model.cfg / model.codes /
    model.field, work on it as on a triplane Model)."""
    cfg: DiffRFConfig
    prior: VoxelPrior
    codes: torch.Tensor                  # (N, 4, G, G, G) fitted grids
    names: list = dataclasses.field(default_factory=list)
    log: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)
    mode: str = "diffrf"

    def field(self, x: torch.Tensor) -> VoxelField:
        return VoxelField(x)

    def to(self, device) -> "DiffRFModel":
        self.prior.to(device)
        self.codes = self.codes.to(device)
        return self

    def save(self, path: str) -> str:
        payload = {"format": MODEL_FORMAT, "config": self.cfg.to_dict(),
                   "prior": {k: v.half() if v.is_floating_point() else v
                             for k, v in self.prior.state_dict().items()},
                   "codes": self.codes.detach().cpu().half(), "names": self.names,
                   "log": self.log, "meta": self.meta}
        bad = ckpt.nonfinite({k: payload[k] for k in ("prior", "codes")})
        if bad:
            raise ckpt.CheckpointError(f"{path}: not written, non-finite values in {', '.join(bad[:5])}")
        return ckpt.save_atomic(path, payload)

    @classmethod
    def load(cls, path: str, device="cpu") -> "DiffRFModel":
        sd = ckpt.load(path)
        if sd.get("format") != MODEL_FORMAT:
            raise ckpt.CheckpointError(f"{path}: format {sd.get('format')!r}, expected {MODEL_FORMAT!r}")
        cfg = DiffRFConfig.from_dict(sd["config"], f"{path}: config")
        prior = VoxelPrior(cfg)
        prior.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in sd["prior"].items()})
        prior.eval().requires_grad_(False)
        return cls(cfg, prior, sd["codes"].float(), sd["names"], sd["log"], sd["meta"]).to(device)


def is_diffrf_file(path: str) -> bool:
    """True when `path` is a DiffRF model file (else: a triplane Model, or not ours)."""
    return ckpt.load(path).get("format") == MODEL_FORMAT


# ---------------------------------------------------------------------- sampling ----
def grid_noise(model, n: int, generator=None) -> torch.Tensor:
    """f_T ~ N(0, I): (n, 4, G, G, G) on the model's device."""
    G = model.cfg.grid_res
    return randn((n, 4, G, G, G), generator, model.codes.device)


def sample_grids(model, n: int, steps: int | None = None, eta: float = 0.0, generator=None,
                 denoise=None, progress: bool = False) -> torch.Tensor:
    """n grids from the prior: DDIM (eta = 0) or DDPM-like (eta = 1) over `denoise`
    (default model.prior.denoise; ImageGuidance wraps it)."""
    return ddim_sample(denoise or model.prior.denoise, grid_noise(model, n, generator),
                       model.prior.schedule, steps=steps or model.cfg.ddim_steps, eta=eta,
                       generator=generator, progress=progress)


class ImageGuidance:
    """Image-to-volume synthesis: `denoise(f_t, t)` whose f~_0 is corrected towards the
    observed pixels, f~_0 <- f~_0 - lambda grad_{f~_0} l(R(f~_0), I) (the seed), with
    l = 0.5 sum over the rays of ||R(f~_0) - I||^2 / n_rays and `inner` such steps per
    denoiser call. rays = (origins, dirs, target) (1, N, 3) of the input image(s)."""

    def __init__(self, denoise, rays, lam: float, n_samples: int, inner: int = 2,
                 rays_per_step: int | None = 2048, generator=None, near_min: float = 0.2):
        self.denoise, self.rays, self.lam, self.inner = denoise, rays, lam, inner
        self.n_samples, self.rays_per_step, self.generator = n_samples, rays_per_step, generator
        self.near_min = near_min
        self.losses: list[float] = []

    def image_loss(self, f0: torch.Tensor) -> torch.Tensor:
        """l(I~, I) per scene (B,): 0.5 ||R(f0) - I||^2 summed over RGB, mean over rays."""
        o, d, y = subset_rays(self.rays, self.rays_per_step, self.generator)
        B = f0.shape[0]
        out = render_rays(VoxelField(f0), o.expand(B, -1, -1), d.expand(B, -1, -1),
                          self.n_samples, near_min=self.near_min)
        return 0.5 * (out["rgb"] - y.expand(B, -1, -1)).pow(2).sum(-1).mean(-1)

    def __call__(self, f_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f0 = self.denoise(f_t, t)
        for _ in range(self.inner):
            with torch.enable_grad():
                x = f0.detach().requires_grad_(True)
                loss = self.image_loss(x)
                g, = torch.autograd.grad(loss.sum(), x)
            f0 = clip_x0(f0 - self.lam * g, 2.0)
        self.losses.append(float(loss.detach().mean()))
        return f0


def image_to_volume(model, images, c2w, K, n: int = 1, lam: float = 200.0, steps: int | None = None,
                    inner: int = 2, generator=None) -> torch.Tensor:
    """Grids (n, 4, G, G, G) consistent with the posed image(s) images (V, H, W, 3)."""
    rays = tuple(r.to(model.codes.device) for r in views_to_rays(images, c2w, K))
    guide = ImageGuidance(model.prior.denoise, rays, lam, model.cfg.n_samples, inner,
                          generator=generator, near_min=model.cfg.near_min)
    return sample_grids(model, n, steps, generator=generator, denoise=guide)
