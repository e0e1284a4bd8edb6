"""Masked radiance-field completion (DiffRF Sec. 4.3, the seed's "Masked Radiance Field
Completion"), for DiffRF's voxel grids AND minissd's triplane prior.

Given a field f^in whose region m (1 = "to generate") is unknown, every reverse step
denoises, keeps the known part of f^in, and re-noises to the next noise level:

    f~_0^t    = denoise(f_t, t)                                   (eq. 9: the denoised field)
    f_0^{t-1} = m * f~_0^t + (1 - m) * f^in
    f_{t-1}   = alpha_{t-1} f_0^{t-1} + sigma_{t-1} z,   z ~ N(0, I)

(the seed writes the mean sqrt(abar_t)(...) and variance 1 - abar_t of the level the step
goes to; on a DDIM sub-sequence t -> s that is alpha_s, sigma_s.) So the known region of
f_s is EXACTLY f^in's forward-noised version q(f_s | f^in) at every step, and at the end
(s = clean) exactly f^in; only the masked region is the model's. Fresh noise every step
(not DDIM's deterministic eps) is what lets the masked region be pulled towards the known
one: f~_0 is always predicted from a field whose known part is consistent. `resample` > 1
repeats each step that many times, noising f_s back to level t in between (RePaint's
resampling); `start` + `fill` begin at a lower noise level from a filled field instead of
from pure noise (docs/diffrf.md has the measurements that chose the defaults).

Masks are defined in 3-D (`region_mask`: "back-half" is x > 0, "box:x0,y0,z0,x1,y1,z1"
the box) and carried to each representation:
  * voxel grid (4, G, G, G): m = the region at the grid's vertices (`voxel_mask`);
  * triplane (3, C, R, R): a texel of plane ab feeds every point of its column along the
    third axis, so no texel mask equals a 3-D mask. `plane_mask` frees the texels whose
    column meets the region (m = 1) and keeps the others at f^in; points of the known
    region that read a freed texel (e.g. every yz texel for "back-half") are held to
    f^in by `FieldMatch`: each step pulls the denoised code's field (density as alpha,
    colour weighted by alpha) towards f^in's at random points of the known region, a
    gradient step on f~_0 before the blend (like guidance.py's eq. 5-6, in 3-D instead
    of through renders).
"""
from __future__ import annotations

import torch

from minissd.nerf.triplane import AXES
from minissd.prior.sampling import _alpha_sigma, ddim_timesteps
from minissd.related.voxel import grid_points
from minissd.runtime import tick
from minissd.utils import clip_x0, per_sample, rand, randn_like


# ---------------------------------------------------------------------------- masks ----
def parse_mask(text: str) -> tuple:
    """'back-half' -> (0, -1, -1, 1, 1, 1) (x > 0); 'box:x0,y0,z0,x1,y1,z1' -> that box,
    in the normalised object box [-1, 1]^3. ValueError naming --mask otherwise."""
    if text == "back-half":
        return (0.0, -1.0, -1.0, 1.0, 1.0, 1.0)
    if text.startswith("box:"):
        try:
            v = tuple(float(s) for s in text[4:].split(","))
        except ValueError:
            v = ()
        if len(v) == 6 and all(v[i] < v[i + 3] for i in range(3)):
            return v
    raise ValueError(f"--mask {text!r}: expected back-half or box:x0,y0,z0,x1,y1,z1 "
                     "with x0 < x1, y0 < y1, z0 < z1 (coordinates in [-1, 1])")


def region_mask(box: tuple, xyz: torch.Tensor) -> torch.Tensor:
    """Points xyz (..., 3) inside the closed box (x0, y0, z0, x1, y1, z1) -> bool (...)."""
    lo = xyz.new_tensor(box[:3])
    hi = xyz.new_tensor(box[3:])
    return ((xyz >= lo) & (xyz <= hi)).all(-1)


def voxel_mask(box: tuple, G: int, device="cpu") -> torch.Tensor:
    """m (1, 1, G, G, G) float: 1 at the grid vertices inside the box."""
    return region_mask(box, grid_points(G, device)).float()[None, None]


def plane_mask(box: tuple, R: int, device="cpu") -> torch.Tensor:
    """m (1, 3, 1, R, R) float: 1 at the texels whose column meets the box. Texel (j, i) of
    plane ab sits at (a, b) = (u_i, u_j), u = -1 + (2k + 1) / R (align_corners=False)."""
    u = -1 + (2 * torch.arange(R, device=device, dtype=torch.float32) + 1) / R
    m = []
    for a, b in AXES:
        in_a = (u >= box[a]) & (u <= box[a + 3])                     # along the width (i)
        in_b = (u >= box[b]) & (u <= box[b + 3])                     # along the height (j)
        m.append((in_b[:, None] & in_a[None, :]).float())            # (R, R) [j, i]
    return torch.stack(m)[None, :, None]                             # (1, 3, 1, R, R)


def known_points(box: tuple, n: int, generator=None, device="cpu") -> torch.Tensor:
    """n uniform points of [-1, 1]^3 outside the box: (n, 3) (rejection sampling)."""
    out = []
    while sum(len(p) for p in out) < n:
        p = 2 * rand((2 * n, 3), generator, device) - 1
        out.append(p[~region_mask(box, p)])
    return torch.cat(out)[:n]


# ----------------------------------------------------------------------- completion ----
def completion_step(denoise, schedule, f_t, t: int, s: int, f_in, m, generator=None, guide=None):
    """One reverse step t -> s (s = -1: clean) of masked completion.
    Returns (f_s, f~_0^t, f_0^s = the blend, z the fresh noise)."""
    tt = torch.full((f_t.shape[0],), t, dtype=torch.long, device=f_t.device)
    f0 = clip_x0(denoise(f_t, tt), 2.0)                                      # f~_0^t
    if guide is not None:
        f0 = guide(f0, tt)
    blend = m * f0 + (1 - m) * f_in                                          # f_0^{t-1}
    a_s, s_s = _alpha_sigma(schedule, s, f_t)
    z = randn_like(f_t, generator)
    f_s = per_sample(a_s, f_t) * blend + per_sample(s_s, f_t) * z            # f_{t-1}
    return f_s, f0, blend, z


def renoise(f_s, s: int, t: int, schedule, generator=None):
    """q(f_t | f_s): noise f_s from level s back up to level t > s (RePaint's jump back)."""
    a_s, s_s = _alpha_sigma(schedule, s, f_s)
    a_t, s_t = _alpha_sigma(schedule, t, f_s)
    k = a_t / a_s
    return per_sample(k, f_s) * f_s + per_sample((s_t ** 2 - k ** 2 * s_s ** 2).clamp(min=0).sqrt(), f_s) \
        * randn_like(f_s, generator)


def start_levels(T: int, steps: int, start: int | None = None) -> list:
    """The reverse sub-sequence: `steps` DDIM levels from `start` (default T - 1) down."""
    top = T - 1 if start is None else start
    if not 0 <= top < T:
        raise ValueError(f"completion: start must be in [0, {T - 1}], got {start}")
    return ddim_timesteps(top + 1, min(steps, top + 1)).tolist()


@torch.no_grad()
def complete(denoise, schedule, f_in, m, steps: int = 50, n: int = 1, generator=None, guide=None,
             resample: int = 1, callback=None, start: int | None = None, fill=None) -> torch.Tensor:
    """n completions (n, ...) of the field f_in (1, ...) whose region m (1 or n, ...) is
    unknown: masked completion over the DDIM sub-sequence of `steps` levels.
    start = None: from pure noise at level T - 1 (the seed's formula). start = t0 < T - 1
    with fill (1, ...): from q(f_t0 | m * fill + (1 - m) * f^in), SDEdit-like: the masked
    region starts from fill (e.g. the mean training code) noised to level t0, so the
    prior only has to carry it t0 levels instead of inventing it from noise.
    callback(i, t, s, f_s, f0_tilde, blend, z) after every step."""
    f_in = f_in.expand(n, *f_in.shape[1:])
    ts = start_levels(schedule.T, steps, start)
    if fill is None:
        f = randn_like(f_in, generator)                                      # f_T
    else:
        a0, s0 = _alpha_sigma(schedule, ts[0], f_in)                        # q(f_t0 | filled f^in)
        f = per_sample(a0, f_in) * (m * fill + (1 - m) * f_in) + per_sample(s0, f_in) * randn_like(f_in, generator)
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        for r in range(resample):
            f_s, f0, blend, z = completion_step(denoise, schedule, f, t, s, f_in, m, generator, guide)
            if r + 1 < resample and s >= 0:
                f = renoise(f_s, s, t, schedule, generator)
        if callback is not None:
            callback(i, t, s, f_s, f0, blend, z)
        f = f_s
        tick()                                  # threads follow the free CPU (runtime.py)
    return f


class FieldMatch:
    """guide(f~_0, t): `inner` gradient steps pulling the field of codes f~_0 towards the
    field of f^in at random points of the known region (triplane completion, see above):

        l = mean_p (alpha(p) - alpha_in(p))^2 + max(alpha, alpha_in) ||rgb(p) - rgb_in(p)||^2,
        alpha = 1 - exp(-sigma delta),  delta = 2 / n_samples (one ray step through the box).

    make_field(codes) -> a field callable (Model.field)."""

    def __init__(self, make_field, f_in, box, n_points: int = 4096, lr: float = 1.0, inner: int = 3,
                 n_samples: int = 48, generator=None):
        self.make_field, self.box, self.lr, self.inner = make_field, box, lr, inner
        self.n_points, self.delta, self.generator, self.f_in = n_points, 2.0 / n_samples, generator, f_in

    def loss(self, f0):
        B = f0.shape[0]
        p = known_points(self.box, self.n_points, self.generator, f0.device)[None].expand(B, -1, -1)
        d = torch.zeros_like(p)
        with torch.no_grad():
            sig_in, rgb_in = self.make_field(self.f_in.expand_as(f0))(p, d)
        sig, rgb = self.make_field(f0)(p, d)
        a, a_in = 1 - torch.exp(-sig * self.delta), 1 - torch.exp(-sig_in * self.delta)
        w = torch.maximum(a, a_in).detach()
        return ((a - a_in) ** 2 + w * (rgb - rgb_in).pow(2).sum(-1)).mean(-1)    # (B,)

    def __call__(self, f0, t):
        for _ in range(self.inner):
            with torch.enable_grad():
                x = f0.detach().requires_grad_(True)
                g, = torch.autograd.grad(self.loss(x).sum(), x)
            f0 = clip_x0(f0 - self.lr * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
                         * g[0].numel() ** 0.5 * 0.01, 2.0)
        return f0
