"""Exact ray casting of boxes, cylinders and spheres: the renderer of the procedural data.

Each pixel colour is the first surface hit along its ray r(t) = o + t d,
    t* = min_k t_k(o, d)   (closed-form intersection with every primitive k),
shaded Lambertian with world-fixed lights,
    c = albedo * (ambient + sum_l w_l max(0, n . l)),
on a white background. Because the lights are fixed in the world, the radiance of a
surface point is view-independent: exactly what a NeRF can represent. Edges are
anti-aliased by averaging ss x ss sub-pixel rays. This is deliberately NOT the NeRF
renderer (render.py): the data must not share the model's approximations.

Primitives are axis-aligned: boxes (centre, half extents), cylinders (centre, radius,
half height, axis 0/1/2) and spheres (centre, radius). Everything is vectorised over
rays x primitives.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minissd.data.cameras import pixel_rays, rays_at_pixels

BOX, CYL, SPHERE = 0, 1, 2                   # primitive kinds
LIGHTS = torch.tensor([[0.4, 0.3, 0.87], [-0.6, -0.5, 0.2]])   # world directions
LIGHT_W, AMBIENT = (0.55, 0.2), 0.35


class Parts:
    """A list of primitives: kind, centre (3,), size (3,), colour (3,).
    box: size = half extents; cylinder: size = (radius, half height, axis 0/1/2);
    sphere: size = (radius, 0, 0)."""

    def __init__(self):
        self.kind, self.center, self.size, self.color = [], [], [], []

    def add(self, kind, center, size, color):
        for lst, x in zip((self.center, self.size, self.color), (center, size, color)):
            lst.append([float(v) for v in x])
        self.kind.append(kind)

    def box(self, center, half, color):
        self.add(BOX, center, half, color)

    def cyl(self, center, radius, half_h, color, axis=2):
        self.add(CYL, center, (radius, half_h, axis), color)

    def sphere(self, center, radius, color):
        self.add(SPHERE, center, (radius, 0, 0), color)

    def tensors(self):
        """kind (P,), center (P,3), ext (P,3) half extents along x y z, size (P,3), color (P,3)."""
        kind, c = torch.tensor(self.kind), torch.tensor(self.center)
        size, color = torch.tensor(self.size), torch.tensor(self.color)
        r, h, axis = size[:, :1], size[:, 1:2], _axis_mask(size)
        ext = torch.where((kind == BOX)[:, None], size,
                          torch.where(((kind == CYL)[:, None] & axis), h, r))
        return kind, c, ext, size, color

    def normalize(self, half_side, max_half_diagonal=0.56):
        """Centre the bounding box at the origin and scale its largest half side to
        `half_side`, or less if the box's half diagonal would exceed max_half_diagonal:
        below 1.3 * sin(52 deg / 2) = 0.57 the object stays inside every SRN view."""
        _, c, ext, _, _ = self.tensors()
        lo, hi = (c - ext).amin(0), (c + ext).amax(0)
        mid = (lo + hi) / 2
        s = min(half_side / float((hi - lo).max() / 2), max_half_diagonal / float((hi - lo).norm() / 2))
        for i, k in enumerate(self.kind):
            self.center[i] = ((torch.tensor(self.center[i]) - mid) * s).tolist()
            n = 3 if k == BOX else (2 if k == CYL else 1)    # never scale the axis id
            self.size[i][:n] = [x * s for x in self.size[i][:n]]
        return self


def _axis_mask(size):
    """(P,3) bool: the axis of each cylinder (meaningless for other kinds)."""
    return F.one_hot(size[:, 2].long().clamp(0, 2), 3).bool()


def _safe(d):
    return torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)


def hit_boxes(o, d, lo, hi):
    """Slab test: rays (N,3) against boxes [lo, hi] (P,3) -> entry t (N,P), inf = miss."""
    inv = (1.0 / _safe(d))[:, None]                        # (N, 1, 3)
    ta, tb = (lo - o[:, None]) * inv, (hi - o[:, None]) * inv   # (N, P, 3)
    near = torch.minimum(ta, tb).amax(-1)                  # entry = last slab entered
    far = torch.maximum(ta, tb).amin(-1)                   # exit = first slab left
    return torch.where((far >= near) & (near > 0), near, math.inf)


def _dot_and_sq(o, d, c):
    """(o - c).d and |o - c|^2 for rays (N,3) and centres (P,3), as (N,P) matmuls."""
    oc_d = (o * d).sum(-1, keepdim=True) - d @ c.T
    oc_sq = (o * o).sum(-1, keepdim=True) - 2 * o @ c.T + (c * c).sum(-1)
    return oc_d, oc_sq


def hit_cylinders(o, d, c, r, h, axis):
    """Rays (unit d) against cylinders (centre c, radius r, half height h along `axis`).

    The cylinder is the intersection of an infinite tube |x_perp - c_perp| <= r
    (a t^2 + 2 b t + cc <= 0) and the slab |x_axis - c_axis| <= h -> entry t (N,P)."""
    oc_d, oc_sq = _dot_and_sq(o, d, c)                     # (N, P)
    o_ax = o[:, axis] - c[torch.arange(len(c)), axis]      # axial coordinates (N, P)
    d_ax = d[:, axis]
    a = (1.0 - d_ax ** 2).clamp(min=1e-12)                 # remove the axial parts
    b = oc_d - o_ax * d_ax
    disc = b * b - a * (oc_sq - o_ax ** 2 - r ** 2)
    sq = disc.clamp(min=0).sqrt()
    inv = 1.0 / _safe(d_ax)
    t0, t1 = (-h - o_ax) * inv, (h - o_ax) * inv
    near = torch.maximum((-b - sq) / a, torch.minimum(t0, t1))
    far = torch.minimum((-b + sq) / a, torch.maximum(t0, t1))
    return torch.where((disc >= 0) & (far >= near) & (near > 0), near, math.inf)


def hit_spheres(o, d, c, r):
    """Rays (unit d) against spheres |x - c| = r -> first positive root t (N,P)."""
    b, oc_sq = _dot_and_sq(o, d, c)
    disc = b * b - (oc_sq - r ** 2)
    t = -b - disc.clamp(min=0).sqrt()
    return torch.where((disc >= 0) & (t > 0), t, math.inf)


def intersect(parts_t, o, d):
    """Nearest hit of rays o, d (N,3) with all primitives -> t (N,) (inf = miss), idx (N,)."""
    kind, c, ext, size, _ = parts_t
    t = torch.full((o.shape[0], kind.shape[0]), math.inf)
    i = (kind == BOX).nonzero()[:, 0]
    t[:, i] = hit_boxes(o, d, c[i] - ext[i], c[i] + ext[i])
    i = (kind == CYL).nonzero()[:, 0]
    t[:, i] = hit_cylinders(o, d, c[i], size[i, 0], size[i, 1], size[i, 2].long())
    i = (kind == SPHERE).nonzero()[:, 0]
    t[:, i] = hit_spheres(o, d, c[i], size[i, 0])
    return t.min(-1)                                       # nearest surface wins


def normals(parts_t, p, idx):
    """Outward unit normals at surface points p (N,3) of primitives idx (N,)."""
    kind, c, ext, size, _ = parts_t
    q = p - c[idx]                                         # (N, 3)
    k = kind[idx]
    # box: the face whose normalised coordinate is largest
    qn = q / ext[idx]
    n_box = F.one_hot(qn.abs().argmax(-1), 3) * qn.sign()
    # cylinder: a cap if |axial| / h beats |radial| / r, else the radial direction
    ax = _axis_mask(size[idx])
    q_ax, q_rad = torch.where(ax, q, 0.0), torch.where(ax, 0.0, q)
    cap = (q_ax.norm(dim=-1) / size[idx, 1].clamp(min=1e-9)) > (q_rad.norm(dim=-1) / size[idx, 0])
    n_cyl = torch.where(cap[:, None], q_ax.sign(), q_rad)
    n = torch.where((k == BOX)[:, None], n_box.float(), torch.where((k == CYL)[:, None], n_cyl, q))
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-9)


def shade(albedo, n):
    """Lambertian radiance under the world-fixed lights: (N,3), values in [0, 1]."""
    light = LIGHTS / LIGHTS.norm(dim=-1, keepdim=True)
    diffuse = sum(w * (n @ l).clamp(min=0) for w, l in zip(LIGHT_W, light))
    return (albedo * (AMBIENT + diffuse)[:, None]).clamp(0, 1)


@torch.no_grad()
def trace(parts_t, o, d, chunk=1 << 16):
    """Colours of rays o, d (N,3): the shaded first hit, white where they miss."""
    _, c, ext, _, albedo = parts_t
    rgb = torch.ones_like(o)                               # white background
    lo, hi = (c - ext).amin(0, keepdim=True), (c + ext).amax(0, keepdim=True)
    near_obj = hit_boxes(o, d, lo - 1e-3, hi + 1e-3)[:, 0].isfinite()  # cull: object's box
    idx_all = near_obj.nonzero()[:, 0]
    for s in range(0, len(idx_all), chunk):
        sel = idx_all[s:s + chunk]
        t, idx = intersect(parts_t, o[sel], d[sel])
        hit = t.isfinite()
        sel, t, idx = sel[hit], t[hit], idx[hit]
        rgb[sel] = shade(albedo[idx], normals(parts_t, o[sel] + t[:, None] * d[sel], idx))
    return rgb


@torch.no_grad()
def render(parts: Parts, c2w, K, H, W, ss=3, tol=0.02):
    """Exact anti-aliased images of `parts`: c2w (V,4,4), K (3,3) -> (V,H,W,3) in [0,1].

    One ray through every pixel centre first; then every pixel whose 3x3 neighbourhood
    is not flat (an edge) is re-rendered as the mean of ss x ss sub-pixel rays
    (adaptive supersampling: the same result as full supersampling away from edges)."""
    pt = parts.tensors()
    o, d = pixel_rays(c2w, K, H, W)                        # (V, H, W, 3)
    rgb = trace(pt, o.reshape(-1, 3), d.reshape(-1, 3)).reshape(o.shape)
    if ss <= 1:
        return rgb
    x = rgb.permute(0, 3, 1, 2)                            # (V, 3, H, W)
    spread = F.max_pool2d(x, 3, 1, 1) + F.max_pool2d(-x, 3, 1, 1)   # local max - min
    v, py, px = (spread.amax(1) > tol).nonzero(as_tuple=True)       # edge pixels (M,)
    offs = (torch.arange(ss) + 0.5) / ss
    sub = torch.stack(torch.meshgrid(offs, offs, indexing="xy"), -1).reshape(-1, 2)
    uv = torch.stack([px, py], -1)[:, None].float() + sub  # (M, ss*ss, 2)
    o2, d2 = rays_at_pixels(c2w[v].repeat_interleave(ss * ss, 0), K, uv.reshape(-1, 2))
    rgb[v, py, px] = trace(pt, o2, d2).reshape(-1, ss * ss, 3).mean(1)
    return rgb


def _inside(parts_t, x, eps=1e-5):
    """(N,) True where x (N,3) lies strictly inside any primitive."""
    kind, c, ext, size, _ = parts_t
    q = (x[:, None] - c).abs()                             # (N, P, 3)
    in_box = (q < ext - eps).all(-1)
    ax = _axis_mask(size)
    rad = torch.where(ax, 0.0, q).norm(dim=-1)
    in_cyl = (rad < size[:, 0] - eps) & (torch.where(ax, q, 0.0).sum(-1) < size[:, 1] - eps)
    in_sph = q.norm(dim=-1) < size[:, 0] - eps
    return torch.where(kind == BOX, in_box, torch.where(kind == CYL, in_cyl, in_sph)).any(-1)


def _on_surface(pt, idx, g):
    """One uniform point on the surface of each primitive idx (M,), relative to its centre."""
    kind, _, ext, size, _ = pt
    e, r, h, ax = ext[idx], size[idx, :1], size[idx, 1:2], _axis_mask(size[idx])
    m = len(idx)
    u = torch.rand(m, 3, generator=g) * 2 - 1                 # uniform in [-1, 1]^3
    n = torch.randn(m, 3, generator=g)
    sph = n / n.norm(dim=-1, keepdim=True)                     # uniform on the unit sphere
    # box: pick a face pair by its area, snap that coordinate to +-1
    pair_area = torch.stack([e[:, 1] * e[:, 2], e[:, 0] * e[:, 2], e[:, 0] * e[:, 1]], -1)
    face = F.one_hot(torch.multinomial(pair_area, 1, generator=g)[:, 0], 3).bool()
    box = torch.where(face, u.sign(), u) * e
    # cylinder: side (area 4 pi r h) or a cap (2 pi r^2); radial unit vector from sph
    rad = torch.where(ax, 0.0, sph)
    rad = rad / rad.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    side = torch.rand(m, 1, generator=g) * (2 * h + r) < 2 * h
    cyl = torch.where(side, rad * r + torch.where(ax, u, 0.0) * h,
                      rad * r * torch.rand(m, 1, generator=g).sqrt() + torch.where(ax, u.sign(), 0.0) * h)
    k = kind[idx][:, None]
    return torch.where(k == BOX, box, torch.where(k == CYL, cyl, sph * r))


def sample_surface(parts: Parts, n: int, generator: torch.Generator):
    """Area-weighted points on the outer surface of the union of primitives.

    Points are drawn on every primitive's surface; a point is kept when a step along
    its normal leaves the object (so faces buried inside other parts are dropped).
    Returns points (n,3), colors (n,3) (the shaded, view-independent radiance)."""
    pt = parts.tensors()
    kind, c, e, size, color = pt
    r, h = size[:, 0], size[:, 1]
    area = torch.where(kind == BOX, 8 * (e[:, 0] * e[:, 1] + e[:, 1] * e[:, 2] + e[:, 0] * e[:, 2]),
                       torch.where(kind == CYL, 4 * math.pi * r * (h + r / 2), 4 * math.pi * r * r))
    pts, cols = [], []
    while sum(len(x) for x in pts) < n:
        idx = torch.multinomial(area, 4 * n, replacement=True, generator=generator)
        x = c[idx] + _on_surface(pt, idx, generator)
        nrm = normals(pt, x, idx)
        keep = ~_inside(pt, x + 2e-3 * nrm)
        pts.append(x[keep])
        cols.append(shade(color[idx][keep], nrm[keep]))
    return torch.cat(pts)[:n], torch.cat(cols)[:n]
