"""Image-guided sampling (eq. 5, 6): steer DDIM towards codes that render the input views.

At every DDIM step the denoiser's clean estimate x0_hat(x_t, t) is rendered at the
observed rays; the gradient of the rendering loss is taken w.r.t. the NOISY input x_t,
THROUGH the denoiser (eq. 5), and x0_hat is corrected by it (eq. 6):

    g        = grad_{x_t}  lambda_rend * L_rend( x0_hat(x_t, t) )                   (5)
    x0_hat' = clip( x0_hat - lambda_gd * sigma_t^2 / alpha_t * w(t) * g , +-2 )    (6)
    w(t)     = (alpha_t / sigma_t)^(2 omega)

sigma^2/alpha turns a gradient w.r.t. x_t into a step in x0 units (the score of
p(y | x_t) times sigma^2 / alpha is the x0 correction of a Gaussian likelihood); w(t) is
the same SNR weight as the diffusion loss. For omega = 0.5 the factor is just sigma_t:
guidance is strong while the sample is noisy and fades as t -> 0.

`GuidedDenoiser` wraps any `denoise(x_t, t) -> x0_hat` callable, so the DDIM loop in
sampling.py is untouched (its `step` is the one guided correction, for loops written out):

    guided = GuidedDenoiser(prior.denoise, prior.schedule, decoder, rays, lambda_gd=..., ...)
    x0 = sampling.ddim_sample(guided, x_T, prior.schedule, steps=75)

Choices made here (documented departures):
  * L_rend is the per-scene SUM over all observed pixels of 0.5 * ||rgb - y||^2, times
    lambda_rend(N_v): a Gaussian log-likelihood of the views, so more pixels are more
    evidence (lambda_gd plays the role of 1 / pixel-noise variance). The code L2 term of
    the training loss is left out.
  * By default all pixels of the input views are used at every step; with
    `rays_per_step` a fresh random subset of that many rays per scene is drawn at each
    step and the sum is rescaled by N / rays_per_step (an unbiased estimate of the full
    sum; much faster on a CPU).
  * lambda_gd = 0 runs exactly the same code path and returns x0_hat bit-for-bit
    (x0_hat - 0 * g), which the tests check against plain DDIM.
"""
from __future__ import annotations

import torch

from minissd.data.cameras import pixel_rays
from minissd.nerf.autodecoder import lambda_rend
from minissd.nerf.render import NEAR_MIN, render_rays
from minissd.nerf.triplane import make_field
from minissd.prior.sampling import ddim_sample
from minissd.utils import clip_x0, per_sample, randperm

# The default guidance scale lives in config.TestConfig.lambda_gd (one value for every
# entry point). reconstruct.py calls guidance with c_rend = 1: the training constant
# cfg.c_rend only sets the balance of the two training losses, and lambda_gd alone sets
# the guidance strength.


def views_to_rays(images: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor):
    """All pixel rays of the input views of one scene.

    images (V, H, W, 3), c2w (V, 4, 4), K (V, 3, 3) or (3, 3)
    -> origins, dirs, target: (1, V*H*W, 3) each (a batch of one scene).
    """
    V, H, W, _ = images.shape
    K = K.expand(V, 3, 3) if K.dim() == 2 else K
    origins, dirs = pixel_rays(c2w.float(), K.float(), H, W)             # (V, H, W, 3)
    return (origins.reshape(1, -1, 3), dirs.reshape(1, -1, 3),
            images.float().reshape(1, -1, 3).to(origins.device))


def subset_rays(rays, n: int | None, generator: torch.Generator | None = None):
    """A random subset of n rays per scene (the same indices for every scene), or all."""
    origins, dirs, target = rays
    N = origins.shape[1]
    if n is None or n >= N:
        return rays
    idx = randperm(N, generator, origins.device)[:n]
    return origins[:, idx], dirs[:, idx], target[:, idx]


def observed_views_loss(decoder, x: torch.Tensor, rays, n_samples: int, lam: float = 1.0,
                near_min: float = NEAR_MIN, n_total: int | None = None) -> torch.Tensor:
    """lam * sum_rays 0.5 * ||render(x) - y||^2 per scene: x (B, 3, C, R, R) -> (B,).

    When `rays` is a random subset of n_total rays the sum is rescaled to estimate the
    sum over all n_total."""
    origins, dirs, target = rays
    out = render_rays(make_field(decoder, x), origins, dirs, n_samples, near_min=near_min)
    scale = (n_total or origins.shape[1]) / origins.shape[1]
    return lam * scale * 0.5 * (out["rgb"] - target).pow(2).sum(dim=(1, 2))


def guidance_scale(alpha: torch.Tensor, sigma: torch.Tensor, omega: float) -> torch.Tensor:
    """sigma^2 / alpha * (alpha / sigma)^(2 omega), per sample (B,) (eq. 6)."""
    return sigma ** 2 / alpha * (alpha / sigma) ** (2 * omega)


class GuidedDenoiser:
    """`denoise(x_t, t) -> x0_hat` with eq. (5)-(6) guidance towards the observed rays.

    rays = (origins (B, N, 3), dirs (B, N, 3), target (B, N, 3)) of the observed pixels
    (B may be 1 and broadcast over the batch); x_t is in the triplane layout
    (B, 3, C, R, R). `step(x_t, t)` is one guided x0 correction and returns it with the
    rendering loss; calling the object does the same and records the loss (mean over the
    batch) in `self.losses`, one float per DDIM step.
    """

    def __init__(self, denoise, schedule, decoder, rays, *, lambda_gd: float, omega: float,
                 n_samples: int, n_views: int = 1, c_rend: float = 1.0,
                 rays_per_step: int | None = None, generator: torch.Generator | None = None,
                 near_min: float = NEAR_MIN, clip: float | None = 2.0):
        self.denoise, self.schedule, self.decoder, self.rays = denoise, schedule, decoder, rays
        self.lambda_gd, self.omega, self.n_samples, self.near_min = lambda_gd, omega, n_samples, near_min
        self.lam = lambda_rend(c_rend, n_views) / n_views   # eq. (1)'s weight of a SUM over N_v views
        self.rays_per_step, self.generator, self.clip = rays_per_step, generator, clip
        self.losses: list[float] = []

    def step(self, x_t: torch.Tensor, t: torch.Tensor):
        """One guided x0 correction (eq. 5-6): (x0 (B, ...) clipped, loss (B,))."""
        B = x_t.shape[0]
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            x0_hat = self.denoise(x_in, t)                               # (B, 3, C, R, R)
            o, d, y = subset_rays(self.rays, self.rays_per_step, self.generator)
            o, d, y = (r.expand(B, -1, -1) for r in (o, d, y))
            loss = observed_views_loss(self.decoder, x0_hat, (o, d, y), self.n_samples,
                                       self.lam, self.near_min, self.rays[0].shape[1])  # (B,)
            # eq. 5, summed over scenes: each scene's gradient is its own loss's gradient
            g, = torch.autograd.grad(loss.sum(), x_in)                   # (B, 3, C, R, R)
        alpha, sigma = self.schedule.alpha_sigma(t)                      # (B,), (B,)
        k = per_sample(self.lambda_gd * guidance_scale(alpha, sigma, self.omega), g)
        x0 = x0_hat.detach() - k * g                                     # eq. 6
        return clip_x0(x0, self.clip), loss.detach()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0, loss = self.step(x_t, t)
        self.losses.append(float(loss.mean()))
        return x0


def guided_sample(prior, decoder, rays, x_T: torch.Tensor, *, lambda_gd: float, steps: int,
                  n_samples: int, n_views: int = 1, c_rend: float = 1.0,
                  rays_per_step: int | None = None, generator=None, callback=None,
                  progress: bool = False, near_min: float = NEAR_MIN) -> torch.Tensor:
    """Guided DDIM (eta = 0) from x_T (B, 3, C, R, R) -> x0 (B, 3, C, R, R).

    lambda_gd = 0 skips the guidance entirely (plain DDIM, no rendering cost)."""
    denoise = prior.denoise
    if lambda_gd != 0:
        denoise = GuidedDenoiser(prior.denoise, prior.schedule, decoder, rays, lambda_gd=lambda_gd,
                                 omega=prior.omega, n_samples=n_samples, n_views=n_views,
                                 c_rend=c_rend, rays_per_step=rays_per_step, generator=generator,
                                 near_min=near_min)
    return ddim_sample(denoise, x_T, prior.schedule, steps=steps, callback=callback,
                       progress=progress)
