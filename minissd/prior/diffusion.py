"""Latent diffusion prior on triplane codes, v-parameterised (the paper's eq. 2; official code:
lib/models/diffusions/gaussian_diffusion.py `GaussianDiffusion`, loss in
lib/models/losses/ddpm_loss.py `DDPMMSELossMod`).

Forward process (the noising x^(t) the paper defines under eq. 2), for integer t in [0, T),
larger t = more noise:

    x_t = alpha_t * x0 + sigma_t * eps,       eps ~ N(0, I),
    alpha_t = sqrt(alphabar_t),  sigma_t = sqrt(1 - alphabar_t),  alpha_t^2 + sigma_t^2 = 1,
    alphabar_t = prod_{s<=t} (1 - beta_s),  beta linear in [1e-4, 2e-2] (paper) or cosine.

The denoiser predicts the velocity v (Salimans & Ho 2022) and is read out as x0:

    v = alpha * eps - sigma * x0,    x0 = alpha * x_t - sigma * v,    eps = sigma * x_t + alpha * v.

Diffusion loss, eq. (2): a weighted x0 error with t ~ Uniform{0..T-1},

    L_diff(x0) = 0.5 * w(t) * mean_over_dims( (x0_hat(x_t, t) - x0)^2 ),
    w(t) = (alpha_t / sigma_t)^(2 omega),       omega = 0.5 (cars) or 0.25 (chairs).

REDUCTION (binding for everyone who calls `.loss`): the squared error is AVERAGED over
all non-batch dims (like the official `flatmean` loss), giving one value per scene (B,).
Single-stage training needs d L_diff / d x0 through BOTH the noisy input x_t and the
target, so nothing here is detached. The loss is scaled in training by
lambda_diff = c_diff / EMA(mean(x0^2)) (the official `scale_norm`), see `DiffusionPrior`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from minissd.nerf.triplane import code_activation, planes_to_image
from minissd.prior.unet import UNet
from minissd.runtime import autocast
from minissd.utils import clip_x0, per_sample, randint, randn_like


# --- the noise schedule --------------------------------------------------------------
class NoiseSchedule(nn.Module):
    """alpha_t, sigma_t for t = 0..T-1 (tables are non-persistent buffers: follow .to())."""

    def __init__(self, T: int = 1000, kind: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 2e-2):
        super().__init__()
        if kind == "linear":            # Ho et al.; scaled so any T spans the same SNR range
            scale = 1000.0 / T
            betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
        elif kind == "cosine":          # Nichol & Dhariwal, s = 0.008, beta <= 0.999
            s = 0.008
            f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
            u = torch.arange(T + 1, dtype=torch.float64)
            betas = (1 - f(u[1:]) / f(u[:-1])).clamp(max=0.999)
        else:
            raise ValueError(f"diffusion.py: unknown schedule kind {kind!r} "
                             "(use 'linear' or 'cosine')")
        self.T, self.kind = T, kind
        alphabar = torch.cumprod(1 - betas, 0)                             # (T,)
        self.register_buffer("alphas", alphabar.sqrt().float(), persistent=False)
        self.register_buffer("sigmas", (1 - alphabar).sqrt().float(), persistent=False)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t (B,) long in [0, T) -> (alpha (B,), sigma (B,)) on t's device."""
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or (t.numel() and (t.min() < 0 or t.max() >= self.T)):
            raise ValueError(f"diffusion.py: timesteps must be integers in [0, {self.T}), "
                             f"got {t}")
        idx = t.to(self.alphas.device)
        return self.alphas[idx].to(t.device), self.sigmas[idx].to(t.device)

    def extra_repr(self) -> str:
        return f"T={self.T}, kind={self.kind!r}"


# --- v <-> x0 <-> eps: one line each --------------------------------------------------
def q_sample(x0, eps, alpha, sigma):
    """x_t = alpha * x0 + sigma * eps (defined under eq. 2); alpha, sigma (B,)."""
    return per_sample(alpha, x0) * x0 + per_sample(sigma, x0) * eps


def v_from_x0_eps(x0, eps, alpha, sigma):
    """v = alpha * eps - sigma * x0."""
    return per_sample(alpha, x0) * eps - per_sample(sigma, x0) * x0


def x0_from_v(x_t, v, alpha, sigma):
    """x0 = alpha * x_t - sigma * v."""
    return per_sample(alpha, x_t) * x_t - per_sample(sigma, x_t) * v


def eps_from_v(x_t, v, alpha, sigma):
    """eps = sigma * x_t + alpha * v."""
    return per_sample(sigma, x_t) * x_t + per_sample(alpha, x_t) * v


def x0_from_eps(x_t, eps, alpha, sigma):
    """x0 = (x_t - sigma * eps) / alpha."""
    return (x_t - per_sample(sigma, x_t) * eps) / per_sample(alpha, x_t)


def eps_from_x0(x_t, x0, alpha, sigma):
    """eps = (x_t - alpha * x0) / sigma."""
    return (x_t - per_sample(alpha, x_t) * x0) / per_sample(sigma, x_t)


def loss_weight(alpha, sigma, omega: float):
    """w(t) = (alpha / sigma)^(2 omega) = SNR(t)^omega."""
    return (alpha / sigma) ** (2 * omega)


# --- the prior as a module -------------------------------------------------------------
class DiffusionPrior(nn.Module):
    """Denoiser phi + schedule + loss. `net(x_t, t) -> v_hat` defaults to the triplane
    UNet of `cfg`; any network with that signature works (e.g. toy2d.MLPDenoiser), and
    every method is shape-agnostic beyond the batch dim."""

    def __init__(self, cfg, net: nn.Module | None = None, clip: float = 2.0):
        super().__init__()
        if net is None:
            net = UNet.from_config(cfg)
        self.unet = net
        self.schedule = NoiseSchedule(cfg.T, cfg.schedule)
        self.omega = float(cfg.omega)
        self.clip = clip
        self.x0_ema_momentum = float(getattr(cfg, "x0_ema_momentum", 1e-3))
        self.amp = getattr(cfg, "amp", "off")       # cfg.amp: the UNet under autocast (runtime.py)
        # EMA of mean(x0^2) over training batches; starts at 1 as in the official code
        self.register_buffer("x0_sq_ema", torch.ones(()))

    def forward(self, x_t, t):
        """v_hat = phi(x_t, t), same shape as x_t. Triplane codes (B, 3, C, R, R) are
        stacked into the (B, 3C, R, R) image the UNet sees and unstacked after: the one
        place where the triplane layout changes (the official code converts in one place
        too). Any other shape (B, ...) goes to the network as it is (e.g. the 2-D toy)."""
        with autocast(self.amp, x_t.device):
            if x_t.dim() == 5:
                return self.unet(planes_to_image(x_t), t).view_as(x_t).float()
            return self.unet(x_t, t).float()

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0_hat = alpha_t x_t - sigma_t v_hat, clipped to +-clip. x_t (B, ...), t (B,)."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        return clip_x0(x0_from_v(x_t, self(x_t, t), alpha, sigma), self.clip)

    def sample_t(self, batch: int, device, generator=None) -> torch.Tensor:
        """t ~ Uniform{0, ..., T-1}, shape (B,)."""
        return randint(self.schedule.T, (batch,), generator, device)

    def loss(self, x0: torch.Tensor, t=None, noise=None, generator=None) -> torch.Tensor:
        """Per-scene 0.5 * w(t) * mean((x0_hat - x0)^2) -> (B,). Differentiable w.r.t.
        x0 through both x_t and the target, and w.r.t. the denoiser's parameters."""
        B = x0.shape[0]
        if t is None:
            t = self.sample_t(B, x0.device, generator)
        if noise is None:
            noise = randn_like(x0, generator)
        alpha, sigma = self.schedule.alpha_sigma(t)                         # (B,), (B,)
        x_t = q_sample(x0, noise, alpha, sigma)                             # (B, ...)
        x0_hat = x0_from_v(x_t, self(x_t, t), alpha, sigma)                 # (B, ...)
        err = (x0_hat - x0).pow(2).flatten(1).mean(1)                       # (B,)
        return 0.5 * loss_weight(alpha, sigma, self.omega).to(err.dtype) * err

    @torch.no_grad()
    def update_x0_ema(self, x0: torch.Tensor) -> None:
        """x0_sq_ema <- (1 - m) x0_sq_ema + m * mean(x0^2)  (m = cfg.x0_ema_momentum)."""
        m = self.x0_ema_momentum
        self.x0_sq_ema.mul_(1 - m).add_(m * x0.detach().float().pow(2).mean())

    def lambda_diff(self, c: float) -> float:
        """lambda_diff = c / EMA(mean(x0^2)); c = Config.c_diff (4) in training, TestConfig.ft_c_diff
        (4; the paper's c'_diff is 1) when finetuning."""
        return float(c) / max(float(self.x0_sq_ema), 1e-12)


def prior_gradient(prior: DiffusionPrior, code_: torch.Tensor, c: float, *, generator=None,
                   t=None, noise=None, scale: float = 1.0, code_grad: bool = True):
    """The cached prior gradient, one denoiser pass: Algorithm 1 line 4 in training and the
    diffusion term of finetuning (eq. 7). For pre-activation codes code_ (B, 3, C, R, R),

        g = grad_{code_}  scale * sum_i lambda_diff L_diff(2 tanh(code_i)),
        lambda_diff = c / EMA(mean(x0^2))      (c = c_diff in training, ft_c_diff = c'_diff finetuning)

    Each scene's gradient is its own loss's gradient times `scale` (training averages over
    the batch: scale = 1/B). The denoiser's parameter gradients accumulate into its .grad
    when it requires grad (the trainer then steps it: line 5). code_grad=False treats the
    codes as data (g is None). Returns (g, mean L_diff over the batch).
    """
    with torch.enable_grad():
        code_ = code_.detach().requires_grad_(code_grad)
        x0 = code_activation(code_)                                     # (B, 3, C, R, R)
        loss = prior.loss(x0, t=t, noise=noise, generator=generator)    # (B,)
        (prior.lambda_diff(c) * scale * loss.sum()).backward()
    return (code_.grad.detach() if code_grad else None), float(loss.detach().mean())
