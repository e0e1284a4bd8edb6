"""Volume rendering of triplane NeRFs (the rendering term of the paper's eq. 1).

A pixel's colour is the alpha composite of S samples t_1 < ... < t_S along its ray r(t)=o+td:

    alpha_i = 1 - exp(-sigma_i delta_i),      T_i = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} sigma_j delta_j)
    w_i     = T_i alpha_i,                    C(r) = sum_i w_i c_i + (1 - sum_i w_i) * 1   (white background)

with delta_i the bin width. Samples whose T_i < 1e-4 contribute nothing (early termination,
as the official renderer). `render_rays` is a nerfacc-style function of a `field` callable
(triplane.make_field), so the same code renders one scene, a batch, or an analytic test
field. `composite` is the compositing step on its own.

Empty-space skipping: given a per-scene occupancy grid (occupancy.py), the field is
evaluated only at samples inside occupied cells (others get sigma = 0), and -- when the
samples are marched in segments -- only on rays whose transmittance is still alive.

Departures from the paper: a fixed number of samples per ray between the box entry and
exit (uniform or stratified) instead of a fixed step size of up to 256 steps; the skipping
is done by gathering the occupied samples of each scene into one padded batch (pure
PyTorch) instead of CUDA ray-marching kernels.
"""
from __future__ import annotations

import math

import torch

from minissd.data.cameras import pixel_rays, ray_box
from minissd.utils import rand

STOP_EPS = 1e-4     # early termination threshold on the transmittance
NEAR_MIN = 0.2      # rays start at least this far from the camera (the official ray marcher's
                    # minimum near distance, in minissd units where the cameras sit at 2.6)
RENDER_CHUNK = 4096           # rays per field call when rendering whole images without grad
                              # (memory only: the image does not depend on it)
MAX_RAYS_PER_PASS = 2048      # rays per forward/backward pass when a training or finetuning
                              # step is split to bound memory (the gradients are summed, so the
                              # step does not depend on it); autodecoder.code_step's passes


def composite(sigma: torch.Tensor, rgb: torch.Tensor, deltas: torch.Tensor, t: torch.Tensor,
              T0: torch.Tensor | None = None, stop_eps: float = STOP_EPS) -> dict:
    """Alpha compositing along the last axis.

    sigma: (..., S), rgb: (..., S, 3), deltas: (..., S) (or broadcastable), t: (..., S)
    sample depths; T0: (...) transmittance before the first sample (default 1).
    Returns rgb (..., 3) and acc (...) WITHOUT background, depth (...) = sum_i w_i t_i,
    weights (..., S), transmittance (..., S) (T_i before each sample), T_end (...).
    """
    tau = sigma * deltas                                                # (..., S)
    cum = torch.cumsum(tau, dim=-1)
    excl = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], dim=-1)
    T = torch.exp(-excl)                                                # (..., S)
    T_end = torch.exp(-cum[..., -1])
    if T0 is not None:
        T, T_end = T * T0[..., None], T_end * T0
    alpha = 1.0 - torch.exp(-tau)
    weights = T * alpha * (T >= stop_eps)                               # early termination
    return {"rgb": (weights[..., None] * rgb).sum(dim=-2), "acc": weights.sum(dim=-1),
            "depth": (weights * t).sum(dim=-1), "weights": weights, "transmittance": T,
            "T_end": T_end}


def sample_along_rays(near: torch.Tensor, far: torch.Tensor, n_samples: int,
                      stratified: bool = False, generator: torch.Generator | None = None):
    """S sample depths in [near, far]: bin centres, or one uniform draw per bin.

    near, far: (...) -> t: (..., S), deltas: (..., 1) (the bin width, constant per ray).
    """
    S = n_samples
    if stratified:
        u = rand(near.shape + (S,), generator, near.device).to(near.dtype)
    else:
        u = torch.full(near.shape + (S,), 0.5, device=near.device, dtype=near.dtype)
    width = (far - near)[..., None] / S                                 # (..., 1)
    t = near[..., None] + (torch.arange(S, device=near.device, dtype=near.dtype) + u) * width
    return t, width


def eval_field_masked(field, pts: torch.Tensor, dirs: torch.Tensor, mask: torch.Tensor):
    """Evaluate field only where mask is True; elsewhere sigma = 0 (rgb = 0).

    pts: (B, L, 3), dirs: (B, L, 3), mask: (B, L) -> sigma (B, L), rgb (B, L, 3).
    The kept samples of each scene are gathered into one padded (B, M, 3) batch,
    M = max kept per scene, so the field is called once.
    """
    B, L, _ = pts.shape
    if bool(mask.all()):
        return field(pts, dirs)
    counts = mask.sum(dim=1)                                            # (B,)
    M = int(counts.max())
    if M == 0:
        return pts.new_zeros(B, L), pts.new_zeros(B, L, 3)
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :M]  # kept first
    idx3 = order[..., None].expand(B, M, 3)
    sig, col = field(pts.gather(1, idx3), dirs.gather(1, idx3))        # (B, M), (B, M, 3)
    valid = torch.arange(M, device=pts.device)[None] < counts[:, None]   # (B, M)
    sig = torch.where(valid, sig, torch.zeros_like(sig))
    sigma = sig.new_zeros(B, L).scatter(1, order, sig)
    rgb = col.new_zeros(B, L, 3).scatter(1, idx3, col)
    return sigma, rgb


def render_rays(field, origins: torch.Tensor, dirs: torch.Tensor, n_samples: int,
                near_min: float = NEAR_MIN, stratified: bool = False,
                generator: torch.Generator | None = None, occupancy=None,
                bound: float = 1.0, segments: int = 1, background: float = 1.0,
                stop_eps: float = STOP_EPS, return_samples: bool = False) -> dict:
    """Render rays of B scenes through `field` (see triplane.make_field).

    origins, dirs: (B, N, 3) (dirs unit length). occupancy: None or an
    occupancy.OccupancyGrid of the same B scenes. segments > 1
    marches the samples in that many pieces and stops evaluating rays whose transmittance
    fell below stop_eps (same image, fewer field calls; worth it in render_image).
    Returns {"rgb": (B, N, 3), "acc": (B, N), "depth": (B, N)} (+ samples if asked).
    """
    B, N, _ = origins.shape
    near, far, hit = ray_box(origins, dirs, bound, near_min)            # (B, N)
    t, width = sample_along_rays(near, far, n_samples, stratified, generator)  # (B, N, S)
    S = n_samples
    pts = origins[:, :, None, :] + dirs[:, :, None, :] * t[..., None]  # (B, N, S, 3)
    mask = hit[..., None].expand(B, N, S)
    if occupancy is not None:
        mask = mask & occupancy.query(pts.reshape(B, -1, 3)).reshape(B, N, S)
    dirs_s = dirs[:, :, None, :].expand(B, N, S, 3)

    T = origins.new_ones(B, N)
    rgb, acc, depth = origins.new_zeros(B, N, 3), origins.new_zeros(B, N), origins.new_zeros(B, N)
    seg_len = math.ceil(S / max(1, segments))
    saved = {"weights": [], "transmittance": [], "sigma": []}
    for s0 in range(0, S, seg_len):
        sl = slice(s0, min(S, s0 + seg_len))
        m = mask[:, :, sl]
        if s0 > 0:
            m = m & (T > stop_eps)[..., None]                           # dead rays: skip
        n_s = m.shape[-1]
        sigma, col = eval_field_masked(field, pts[:, :, sl].reshape(B, -1, 3),
                                       dirs_s[:, :, sl].reshape(B, -1, 3), m.reshape(B, -1))
        out = composite(sigma.reshape(B, N, n_s), col.reshape(B, N, n_s, 3), width,
                        t[:, :, sl], T0=T, stop_eps=stop_eps)
        rgb, acc, depth, T = rgb + out["rgb"], acc + out["acc"], depth + out["depth"], out["T_end"]
        if return_samples:
            saved["weights"].append(out["weights"])
            saved["transmittance"].append(out["transmittance"])
            saved["sigma"].append(sigma.reshape(B, N, n_s))
    result = {"rgb": rgb + background * (1.0 - acc)[..., None], "acc": acc, "depth": depth}
    if return_samples:
        result.update({k: torch.cat(v, dim=-1) for k, v in saved.items()})
        result.update({"t": t, "mask": mask, "near": near, "far": far})
    return result


@torch.no_grad()
def render_image(field, c2w: torch.Tensor, K: torch.Tensor, H: int, W: int, n_samples: int,
                 chunk: int = RENDER_CHUNK, occupancy=None, near_min: float = NEAR_MIN,
                 bound: float = 1.0, early_stop: bool = True, segment_len: int = 16) -> dict:
    """Render whole images of B scenes, chunked, without grad.

    c2w: (B, 4, 4), one camera per scene, or (B, V, 4, 4), V cameras per scene.
    K: (3, 3) for all, or one per camera: (B, 3, 3) / (B, V, 3, 3) like c2w.
    chunk = rays per field call for all B scenes together. early_stop marches segments of
    `segment_len` samples and drops rays whose transmittance died. Returns rgb
    (B, [V,] H, W, 3), acc (B, [V,] H, W), depth (B, [V,] H, W): V present iff c2w has it.
    """
    per_view = c2w.dim() == 4
    cams = c2w if per_view else c2w[:, None]                            # (B, V, 4, 4)
    B, V = cams.shape[:2]
    nb = getattr(field, "batch_size", B)          # a TriplaneField knows; a plain callable not
    if nb != B:
        raise ValueError(f"render.render_image: cameras for {B} scenes, a field of {nb} scenes")
    K = K.to(c2w)
    K = K.expand(B, V, 3, 3) if K.dim() == 2 else (K if per_view else K[:, None])
    origins, dirs = pixel_rays(cams.reshape(B * V, 4, 4), K.reshape(B * V, 3, 3), H, W)
    origins, dirs = origins.reshape(B, V * H * W, 3), dirs.reshape(B, V * H * W, 3)
    per = max(1, chunk // B)
    segments = math.ceil(n_samples / segment_len) if early_stop else 1
    outs = [render_rays(field, origins[:, i:i + per], dirs[:, i:i + per], n_samples,
                        near_min=near_min, occupancy=occupancy, bound=bound, segments=segments)
            for i in range(0, V * H * W, per)]
    shape = (B, V, H, W) if per_view else (B, H, W)
    return {"rgb": torch.cat([o["rgb"] for o in outs], 1).reshape(*shape, 3),
            "acc": torch.cat([o["acc"] for o in outs], 1).reshape(shape),
            "depth": torch.cat([o["depth"] for o in outs], 1).reshape(shape)}
