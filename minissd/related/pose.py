"""Reconstruction from ONE UNPOSED image: the camera is optimised with the code(s)
(CodeNeRF's eq. 5; the official code never released it, a third-party variant is
yuliangguo/code-nerf src/optimizer_srn.py `optimize_objs_w_pose`).

The camera. A start camera c2w_0 = [R_0 | t_0] (looking at the object) is moved by
p = (omega, rho, delta) in R^3 x R x R^3:

    R = exp([omega]_x) R_0,     t = e^rho exp([omega]_x) t_0 + delta          (camera())

i.e. a rotation of the camera ABOUT THE OBJECT by the axis-angle omega (SO(3)'s
exponential map, Rodrigues' formula: exp([w]_x) = I + sin|w|/|w| [w]_x + (1 - cos|w|)/|w|^2 [w]_x^2),
a change of distance e^rho and a shift delta. p = 0 is the start camera; every p gives a
valid rotation, and the rays (cameras.rays_at_pixels) are differentiable in p.

The protocol (nothing comes from the ground-truth pose):
  1. grid search: render the MEAN code (CodeNeRF: mean embedding; SSDNeRF: mean training
     triplane) from n_azimuth x elevations cameras at the category's distance, looking at
     the origin, ranked by the loss against the downsampled input (`grid_search`);
  2. starts: the best `starts` grid cameras at least min_sep degrees apart, EACH with its
     exact flip by 180 degrees about the vertical (front and back look alike) (`pick_starts`);
  3. probes: each start is optimised for `probe_steps` and scored by the full-image loss
     at its final camera; the lowest score is kept. PoseConfig.probe: "camera" moves the
     camera alone, the code(s) FIXED at the mean (`probe`; a free triplane repaints itself
     to fit the image from the wrong side), "joint" moves camera and code(s) together (the
     steps of stage 4, scored with the probe's own code); DEFAULT_PROBE per model kind,
     chosen on validation cars (docs/codenerf.md);
  4. the kept probe is refined with the code(s) for steps - probe_steps ("camera": from
     its camera and the mean code(s); "joint": the probe goes on).
One pose step for both models (`pose_step`): fresh random pixels, rays from the current
camera, rendering MSE, Adam, lr halved every 50 steps (official posed schedule); CodeNeRF
moves its codes in the same step, SSDNeRF alternates it with a code step of eq. 7
(`nerf.autodecoder.code_step`), then re-runs guided sampling + finetuning at the estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import torch
import torch.nn.functional as F

from minissd.data.cameras import CAMERA_RADIUS, look_at, rays_at_pixels, sphere_to_xyz
from minissd.errors import UserError
from minissd.nerf.autodecoder import RayBatch, code_step
from minissd.nerf.render import render_image, render_rays
from minissd.nerf.triplane import CodeBank
from minissd.prior.diffusion import prior_gradient
from minissd.related.codenerf_fit import halved_lr, sample_pixels


PROBES = ("camera", "joint")
# PoseConfig.probe None: the model kind's mode, chosen on validation cars (docs/codenerf.md)
DEFAULT_PROBE = {"codenerf": "joint", "ssdnerf": "camera"}


@dataclass(frozen=True)
class PoseConfig:
    n_azimuth: int = 16              # grid: azimuths on the viewing sphere
    elevations: tuple = (10.0, 30.0, 50.0)   # grid: elevations (degrees)
    radius: float = CAMERA_RADIUS    # the category's camera distance (start of rho = 0)
    grid_res: int = 16               # grid search renders at this resolution
    starts: int = 2                  # grid cameras probed, each with its front/back flip
    min_sep: float = 40.0            # degrees between two starts
    probe_steps: int = 40            # camera-only steps per start before the best one is kept
    steps: int = 200                 # steps in all for the kept start
    rays: int = 512                  # pixels per step
    lr_pose: float = 1e-2            # Adam on p = (omega, rho, delta)
    lr_code: float = 1e-2            # CodeNeRF codes: AdamW (official posed lr); SSDNeRF code_step
    code_reg: float = 1e-4           # CodeNeRF: 1e-4 (|z_s| + |z_t|)
    prior_every: int = 4             # SSDNeRF: one denoiser pass per this many code steps
    probe: str | None = None         # "camera" | "joint" | None: the model kind's DEFAULT_PROBE

    def __post_init__(self):
        if self.probe is not None and self.probe not in PROBES:
            raise UserError(f"PoseConfig probe={self.probe!r}: expected one of "
                            f"{', '.join(PROBES)} (or None: the model kind's default)")


def probe_mode(pcfg: PoseConfig, kind: str) -> str:
    """The probe mode used: pcfg.probe, else the default of the model kind."""
    return pcfg.probe or DEFAULT_PROBE[kind]


# ------------------------------------------------------------------ SO(3) and cameras
def hat(w: torch.Tensor) -> torch.Tensor:
    """[w]_x: (..., 3) -> (..., 3, 3) with [w]_x v = w x v."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack([torch.stack([z, -w[..., 2], w[..., 1]], -1),
                        torch.stack([w[..., 2], z, -w[..., 0]], -1),
                        torch.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """exp([w]_x) by Rodrigues' formula: axis-angle (..., 3) -> rotation (..., 3, 3), with
    Taylor series for sin(a)/a and (1 - cos a)/a^2 below a = 1e-3 (finite gradient at 0)."""
    a2 = (w * w).sum(-1)[..., None, None]                               # (..., 1, 1)
    small = a2 < 1e-6
    a = a2.clamp_min(1e-12).sqrt()
    A = torch.where(small, 1 - a2 / 6, torch.sin(a) / a)
    B = torch.where(small, 0.5 - a2 / 24, (1 - torch.cos(a)) / a2.clamp_min(1e-12))
    K = hat(w)
    return torch.eye(3, dtype=w.dtype, device=w.device) + A * K + B * (K @ K)


def camera(c2w0: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The camera c2w (4, 4) of parameters p = (omega, rho, delta) (7,) from c2w0 (4, 4)."""
    R = so3_exp(p[:3])
    top = torch.cat([R @ c2w0[:3, :3], (torch.exp(p[3]) * (R @ c2w0[:3, 3]) + p[4:7])[:, None]], 1)
    return torch.cat([top, c2w0[3:]], 0)


def rotation_error_deg(R_est: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Angle of R_est^T R_gt in degrees: (..., 3, 3) -> (...)."""
    tr = (R_est.transpose(-1, -2) @ R_gt).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.acos(((tr - 1) / 2).clamp(-1.0, 1.0)))


def pose_errors(c2w_est: torch.Tensor, c2w_gt: torch.Tensor) -> tuple[float, float]:
    """(rotation error in degrees, relative translation error |t_est - t_gt| / |t_gt|)."""
    rot = rotation_error_deg(c2w_est[:3, :3], c2w_gt[:3, :3])
    t_est, t_gt = c2w_est[:3, 3], c2w_gt[:3, 3]
    return float(rot), float((t_est - t_gt).norm() / t_gt.norm())


def sphere_grid(pcfg: PoseConfig) -> torch.Tensor:
    """Grid cameras on the viewing sphere looking at the origin: (n_az * n_el, 4, 4)."""
    az = torch.arange(pcfg.n_azimuth) * (2 * math.pi / pcfg.n_azimuth)
    el = torch.deg2rad(torch.tensor(pcfg.elevations, dtype=torch.float32))
    A, E = torch.meshgrid(az, el, indexing="ij")
    return look_at(sphere_to_xyz(pcfg.radius, A.reshape(-1), E.reshape(-1)))


def flip(c2w: torch.Tensor) -> torch.Tensor:
    """The camera turned by 180 degrees about the vertical (z) axis through the object."""
    Rz = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device))
    out = c2w.clone()
    out[..., :3, :] = Rz @ c2w[..., :3, :]
    return out


@torch.no_grad()
def grid_search(field, image: torch.Tensor, K: torch.Tensor, pcfg: PoseConfig, n_samples: int,
                near_min: float = 0.2):
    """Rank the grid cameras by the MSE of `field` (one object) rendered at grid_res
    against the downsampled image (H, W, 3). Returns (cameras (P, 4, 4), losses (P,)),
    best first."""
    cams = sphere_grid(pcfg).to(image.device)
    r = pcfg.grid_res
    small = F.interpolate(image.permute(2, 0, 1)[None], size=(r, r), mode="area")[0].permute(1, 2, 0)
    Ks = K.clone()
    Ks[:2] *= r / image.shape[0]
    pred = render_image(field, cams[None], Ks, r, r, n_samples, near_min=near_min)["rgb"][0]
    loss = (pred - small).pow(2).mean(dim=(1, 2, 3))
    order = loss.argsort()
    return cams[order], loss[order]


def pick_starts(cams: torch.Tensor, losses: torch.Tensor, pcfg: PoseConfig) -> torch.Tensor:
    """Grid cameras in ranked order, each followed by its EXACT front/back flip (so the two
    sides start equally far from their optima), skipping a grid camera within min_sep
    degrees of a start already kept, until `starts` grid cameras are kept: (2 * starts, 4, 4)."""
    far = lambda c, kept: all(float(rotation_error_deg(c[:3, :3], k[:3, :3])) >= pcfg.min_sep
                              for k in kept)                           # noqa: E731
    starts = []
    for c in cams:
        if far(c, starts):
            starts += [c, flip(c)]
        if len(starts) == 2 * pcfg.starts:
            break
    return torch.stack(starts)


# ------------------------------------------------------------------ one step, both models
def pose_step(field, opt, step: int, c2w0: torch.Tensor, p: torch.Tensor, K: torch.Tensor,
              image: torch.Tensor, pcfg: PoseConfig, n_samples: int, near_min: float = 0.2,
              extra=None, generator=None) -> float:
    """One Adam step of the rendering MSE at random pixels of image (H, W, 3) through the
    camera camera(c2w0, p); opt holds p (and, for CodeNeRF, the codes inside `field`,
    with extra() their regulariser). Every group's lr is its base lr halved every 50 steps."""
    for g in opt.param_groups:
        g.setdefault("base_lr", g["lr"])
        g["lr"] = halved_lr(g["base_lr"], step)
    uv, y = sample_pixels(image, pcfg.rays, generator)
    opt.zero_grad(set_to_none=True)
    with torch.enable_grad():
        o, d = rays_at_pixels(camera(c2w0, p).expand(len(uv), 4, 4), K, uv)
        out = render_rays(field, o[None], d[None], n_samples, near_min=near_min,
                          stratified=True, generator=generator)
        loss = (out["rgb"][0] - y).pow(2).mean()
        total = loss + (extra() if extra is not None else 0.0)
        total.backward()
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def image_loss(field, c2w: torch.Tensor, K: torch.Tensor, image: torch.Tensor, n_samples: int,
               near_min: float = 0.2) -> float:
    """MSE of `field` rendered at camera c2w (4, 4) over EVERY pixel of image (H, W, 3):
    deterministic (no random pixels, no stratification), so starts compare fairly."""
    H, W, _ = image.shape
    pred = render_image(field, c2w[None], K, H, W, n_samples, near_min=near_min)["rgb"][0]
    return float((pred - image).pow(2).mean())


def probe(field, c2w0: torch.Tensor, K: torch.Tensor, image: torch.Tensor, pcfg: PoseConfig,
          n_samples: int, near_min: float = 0.2, generator=None, callback=None) -> dict:
    """A CAMERA-ONLY probe: probe_steps pose steps from c2w0 with the code(s) fixed in
    `field` (the mean code), then the full-image loss at the final camera.
    Returns {"c2w", "score", "history", "losses"}."""
    p = torch.zeros(7, device=image.device, requires_grad=True)
    opt = torch.optim.Adam([p], lr=pcfg.lr_pose)
    state = {"losses": [], "history": []}
    for step in range(pcfg.probe_steps):
        loss = pose_step(field, opt, step, c2w0, p, K, image, pcfg, n_samples, near_min,
                         generator=generator)
        _record(state, step, camera(c2w0, p).detach(), None, loss, callback)
    c2w = state["history"][-1] if state["history"] else c2w0
    return {"c2w": c2w, "score": image_loss(field, c2w, K, image, n_samples, near_min), **state}


def _record(state: dict, step: int, c2w, code, loss: float, callback=None) -> None:
    state["losses"].append(loss)
    state["history"].append(c2w)
    if callback is not None:
        callback(step, c2w, code, loss)


def _probe_then_refine(field0, field_of, starts, run, K, image, pcfg: PoseConfig, mode: str,
                       n_samples: int, near_min: float, generator=None, callback=None) -> dict:
    """Probe every start, keep the lowest full-image loss, refine it for steps - probe_steps.
    run(c2w0, n, state): n steps on camera and code(s) (state None: from the mean code(s));
    field_of(state): the field of its code(s). "camera": `probe` on field0 (mean code(s)
    fixed), the kept camera starts a new run; "joint": run from each start, scored with its
    own code(s), the kept run goes on. History / losses: probe's, then refinement's."""
    probes = []
    for c in starts:
        if mode == "camera":
            probes.append(probe(field0, c, K, image, pcfg, n_samples, near_min, generator, callback))
            continue
        st = run(c, pcfg.probe_steps, None)
        c2w = _last_camera(st)
        probes.append({**st, "c2w": c2w,
                       "score": image_loss(field_of(st), c2w, K, image, n_samples, near_min)})
    k = min(range(len(probes)), key=lambda i: probes[i]["score"])
    if mode == "joint":
        state = run(probes[k]["c2w0"], pcfg.steps - pcfg.probe_steps, probes[k])
    else:
        state = run(probes[k]["c2w"], pcfg.steps - pcfg.probe_steps, None)
        state.update(history=probes[k]["history"] + state["history"],
                     losses=probes[k]["losses"] + state["losses"])
    state.update(probe_losses=[q["score"] for q in probes], kept=k, probe=mode,
                 probe_c2w=torch.stack([q["c2w"] for q in probes]))
    return state


def _last_camera(state: dict) -> torch.Tensor:
    """The camera after a run's last step (its start when it made none)."""
    return state["history"][-1] if state["history"] else state["c2w0"]


def _result(best: dict, starts, **code) -> dict:
    return {"c2w": _last_camera(best), **code, "history": best["history"], "losses": best["losses"],
            "starts": starts, "probe_losses": best["probe_losses"], "kept": best["kept"],
            "probe_c2w": best["probe_c2w"], "probe": best["probe"]}


# ------------------------------------------------------------------ CodeNeRF
def unposed_codenerf(model, image: torch.Tensor, K: torch.Tensor, pcfg: PoseConfig | None = None,
                     generator=None, callback=None) -> dict:
    """Pose and codes of one unposed image (H, W, 3) (CodeNeRF eq. 5). Returns {"c2w" (4, 4),
    "codes" (1, 2, D), "history": [c2w after each step, kept probe then refinement],
    "losses", "starts", "probe_losses" (each probe's full-image score), "kept" (index of the
    kept start), "probe_c2w" (each probe's final camera), "probe" (the mode)}.
    callback(step, c2w, codes, loss) after every step (codes None in camera-only probes)."""
    pcfg = pcfg or PoseConfig()
    field0 = model.field(model.mean_code())                              # the mean codes' field
    cams, losses = grid_search(field0, image, K, pcfg, model.cfg.n_samples, model.cfg.near_min)
    starts = pick_starts(cams, losses, pcfg)

    def run(c2w0, n, state):
        if state is None:
            codes = model.mean_code().clone().requires_grad_(True)
            p = torch.zeros(7, device=image.device, requires_grad=True)
            opt = torch.optim.AdamW([{"params": [codes], "lr": pcfg.lr_code},
                                     {"params": [p], "lr": pcfg.lr_pose, "weight_decay": 0.0}])
            state = {"c2w0": c2w0, "codes": codes, "p": p, "opt": opt, "losses": [], "history": []}
        codes, p = state["codes"], state["p"]
        for _ in range(n):
            step = len(state["losses"])
            loss = pose_step(model.field(codes), state["opt"], step, c2w0, p, K, image, pcfg,
                             model.cfg.n_samples, model.cfg.near_min,
                             extra=lambda: pcfg.code_reg * codes.norm(dim=-1).sum(),
                             generator=generator)
            _record(state, step, camera(c2w0, p).detach(), codes.detach(), loss, callback)
        return state

    best = _probe_then_refine(field0, lambda st: model.field(st["codes"].detach()), starts, run,
                              K, image, pcfg, probe_mode(pcfg, "codenerf"), model.cfg.n_samples,
                              model.cfg.near_min, generator, callback)
    return _result(best, starts, codes=best["codes"].detach())


# ------------------------------------------------------------------ SSDNeRF
def unposed_ssdnerf(model, image: torch.Tensor, K: torch.Tensor, pcfg: PoseConfig | None = None,
                    generator=None, callback=None) -> dict:
    """The camera of one unposed image for an SSDNeRF `Model`: probes from every start
    (by default camera-only, of the mean training triplane: `probe`); from the kept probe,
    alternate a pose step (code fixed) and a code step (pose fixed; rendering +
    the cached prior gradient of eq. 7, one denoiser pass every prior_every steps). The
    caller then reconstructs at result["c2w"] with guided sampling + finetuning
    (`testtime.reconstruct.reconstruct`). Returns {"c2w", "code" (1, 3, C, R, R), "history",
    "losses", "starts", "probe_losses", "kept", "probe_c2w", "probe"} as unposed_codenerf."""
    pcfg = pcfg or PoseConfig()
    cfg, tcfg = model.cfg, model.test
    mean = model.codes.mean(dim=0, keepdim=True)                         # (1, 3, C, R, R)
    field0 = model.field(mean)
    cams, losses = grid_search(field0, image, K, pcfg, cfg.n_samples, cfg.near_min)
    starts = pick_starts(cams, losses, pcfg)
    idx = torch.zeros(1, dtype=torch.long, device=image.device)

    def run(c2w0, n, state):
        if state is None:
            p = torch.zeros(7, device=image.device, requires_grad=True)
            state = {"c2w0": c2w0, "bank": CodeBank.from_codes(mean), "p": p,
                     "opt": torch.optim.Adam([p], lr=pcfg.lr_pose), "losses": [], "history": []}
        bank, p = state["bank"], state["p"]
        for _ in range(n):
            step = len(state["losses"])
            x = bank.activated().to(image.device)
            loss = pose_step(model.field(x), state["opt"], step, c2w0, p, K, image, pcfg,
                             cfg.n_samples, cfg.near_min, generator=generator)
            c2w = camera(c2w0, p).detach()
            if step % pcfg.prior_every == 0:
                state["g_diff"] = prior_gradient(model.prior, bank.get(idx), tcfg.ft_c_diff,
                                                 generator=generator)[0]
            uv, y = sample_pixels(image, pcfg.rays, generator)
            o, d = rays_at_pixels(c2w.expand(len(uv), 4, 4), K, uv)
            with torch.enable_grad():
                code_step(bank, idx, model.decoder, RayBatch(o[None], d[None], y[None]), cfg, 1,
                          halved_lr(pcfg.lr_code, step), prior_grad=state["g_diff"],
                          generator=generator, c_rend=tcfg.ft_c_rend)
            _record(state, step, c2w, bank.activated(), loss, callback)
        return state

    best = _probe_then_refine(field0, lambda st: model.field(st["bank"].activated()),
                              starts, run, K, image, pcfg, probe_mode(pcfg, "ssdnerf"),
                              cfg.n_samples, cfg.near_min, generator, callback)
    return _result(best, starts, code=best["bank"].activated())


def unposed(model, image, K, pcfg=None, generator=None, callback=None) -> dict:
    """unposed_codenerf or unposed_ssdnerf, by the model's kind."""
    fn = unposed_codenerf if getattr(model, "kind", "ssdnerf") == "codenerf" else unposed_ssdnerf
    return fn(model, image, K, pcfg, generator, callback)
