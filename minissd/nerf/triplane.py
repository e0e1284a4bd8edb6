"""Triplane scene codes x_i and the per-scene code bank (official code:
lib/models/autodecoders/base_nerf.py `TanhCode`, `get_init_code_`; multiscene_nerf.py cache).

A scene is a code x in R^{3 x C x R x R}: three axis-aligned feature planes over the box
[-1, 1]^3. The feature of a point p = (x, y, z) is read from each plane by bilinear
interpolation and the three C-vectors are concatenated:

    f(p) = [ P_xy(x, y), P_xz(x, z), P_yz(y, z) ]  in R^{3C}               (triplane)

and the decoder psi maps f(p) (and the view direction) to density and colour, so that a
scene's radiance field is  (sigma, c)(p, d) = psi(f_x(p), d)  (the paper's eq. 1 renders
it). Codes are stored pre-activation and used as

    x = 2 tanh(code_)                      (range +-2; the denoiser's x0 is clipped to +-2)

For the 2D denoiser the planes are stacked plane-major into one (3C, R, R) image
(`planes_to_image` / `image_to_planes`).

The auto-decoder keeps one code per training scene and optimises each with its own Adam
state (moments and step count per scene), so that stepping a batch of scenes leaves every
other scene untouched -- exactly like the official code's per-scene code cache.

Departures from the paper: R = 32 in the laptop preset (paper 128); `grid_sample` uses
`align_corners=False` (pixel centres at (i + 0.5) / R * 2 - 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minissd.nerf.occupancy import OccupancyGrid


def code_activation(code_: torch.Tensor) -> torch.Tensor:
    """x = 2 tanh(code_): the code the decoder and the denoiser see."""
    return 2.0 * torch.tanh(code_)


def code_inverse_activation(x: torch.Tensor) -> torch.Tensor:
    """code_ = atanh(x / 2) (x clamped just inside +-2)."""
    return torch.atanh((x / 2.0).clamp(-1 + 1e-6, 1 - 1e-6))


# plane k reads coordinates (a, b) = AXES[k] of the point: xy, xz, yz
AXES = ((0, 1), (0, 2), (1, 2))
PLANE_NAMES = ("xy", "xz", "yz")


def sample_triplane(planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Bilinear triplane features.

    planes: (B, 3, C, R, R) activated code; xyz: (B, M, 3) in [-1, 1]^3 (outside: border).
    Returns (B, M, 3C), plane-major: [xy features, xz features, yz features].
    Plane k stores its first coordinate along the width (grid_sample's x) and its second
    along the height, i.e. P_xy[c, j, i] is the feature at x = u_i, y = u_j.
    """
    B, _, C, R, _ = planes.shape
    M = xyz.shape[1]
    grid = torch.stack([xyz[..., list(ab)] for ab in AXES], dim=1)     # (B, 3, M, 2)
    feat = F.grid_sample(planes.reshape(B * 3, C, R, R),
                         grid.reshape(B * 3, 1, M, 2).to(planes.dtype),
                         mode="bilinear", padding_mode="border", align_corners=False)
    # (B*3, C, 1, M) -> (B, M, 3, C) -> (B, M, 3C)
    return feat.reshape(B, 3, C, M).permute(0, 3, 1, 2).reshape(B, M, 3 * C)


def planes_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, C, R, R) -> (B, 3C, R, R), plane-major (channels 0..C-1 are the xy plane)."""
    B, P, C, R, R2 = x.shape
    return x.reshape(B, P * C, R, R2)


def image_to_planes(img: torch.Tensor, C: int) -> torch.Tensor:
    """(B, 3C, R, R) -> (B, 3, C, R, R); inverse of planes_to_image."""
    B, PC, R, R2 = img.shape
    if PC != 3 * C:
        raise ValueError(f"triplane.image_to_planes: {PC} channels is not 3 x C = {3 * C}")
    return img.reshape(B, 3, C, R, R2)


class TriplaneField:
    """The radiance fields of a batch of scenes: decoder psi reading triplanes x.

    x: (B, 3, C, R, R) activated codes. `field(xyz (B, M, 3), dirs (B, M, 3))` ->
    (sigma (B, M), rgb (B, M, 3)); `field.density(xyz) -> (B, M)` skips the colour branch
    (occupancy grids use it); `field.batch_size` = B. The renderer only ever calls these.
    """

    def __init__(self, decoder, x: torch.Tensor):
        self.decoder, self.x = decoder, x

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def __call__(self, xyz: torch.Tensor, dirs: torch.Tensor):
        return self.decoder(sample_triplane(self.x, xyz), dirs)

    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.decoder.density(sample_triplane(self.x, xyz))


def make_field(decoder, x: torch.Tensor) -> TriplaneField:
    """The field callable of codes x (B, 3, C, R, R) (see TriplaneField)."""
    return TriplaneField(decoder, x)


class CodeBank:
    """One pre-activation triplane code per training scene, each with its own Adam state.

        m_i <- b1 m_i + (1 - b1) g_i,   v_i <- b2 v_i + (1 - b2) g_i^2,   k_i <- k_i + 1
        code_i <- code_i - lr * (m_i / (1 - b1^k_i)) / (sqrt(v_i / (1 - b2^k_i)) + eps)

    for the scenes i in the batch only; other scenes keep their code, moments and k_i.
    Plain tensors (not an nn.Module): the bank lives on `device`, which may differ from
    the training device for very large datasets. `occupancy` holds the scenes' occupancy
    grids when the auto-decoder maintains them (None otherwise).
    """

    def __init__(self, n_scenes: int, C: int, R: int, device="cpu", init_scale: float = 1e-4,
                 generator: torch.Generator | None = None, betas=(0.9, 0.999), eps: float = 1e-8):
        self.device = torch.device(device)
        u = torch.rand((n_scenes, 3, C, R, R), generator=generator)
        self.codes_ = ((2 * u - 1) * init_scale).to(self.device)            # (N, 3, C, R, R)
        self.exp_avg = torch.zeros_like(self.codes_)
        self.exp_avg_sq = torch.zeros_like(self.codes_)
        self.step = torch.zeros(n_scenes, dtype=torch.long, device=self.device)
        self.betas, self.eps = tuple(betas), eps
        # the scenes' empty-space grids (occupancy.OccupancyGrid, or None: no skipping), the
        # one owner of them; the auto-decoder loop keeps them current (refresh_occupancy)
        self.occupancy = None

    def __len__(self) -> int:
        return self.codes_.shape[0]

    @property
    def shape(self):
        return tuple(self.codes_.shape)

    def get(self, idx: torch.Tensor, device=None) -> torch.Tensor:
        """A leaf copy of the batch's pre-activation codes that requires grad: (B, 3, C, R, R)."""
        idx = torch.as_tensor(idx, device=self.device)
        out = self.codes_[idx].clone()
        return out.to(device).requires_grad_(True) if device is not None else out.requires_grad_(True)

    def activated(self, idx=None) -> torch.Tensor:
        """x = 2 tanh(code_) for the scenes idx (all if None), detached."""
        c = self.codes_ if idx is None else self.codes_[torch.as_tensor(idx, device=self.device)]
        return code_activation(c)

    @torch.no_grad()
    def set_activated(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        """Overwrite the codes of scenes idx with activated codes x (B or 1, 3, C, R, R)."""
        idx = torch.as_tensor(idx, device=self.device)
        self.codes_[idx] = code_inverse_activation(x).to(self.codes_)

    def fresh(self, idx: torch.Tensor) -> torch.Tensor:
        """The scenes of idx whose code has not been stepped yet."""
        idx = torch.as_tensor(idx, device=self.device)
        return idx[self.step[idx] == 0]

    @torch.no_grad()
    def refresh_occupancy(self, decoder, cfg, idx=None, batch: int = 8, generator=None,
                          n_jitter: int = 4) -> OccupancyGrid:
        """Rebuild self.occupancy (created all-occupied if None) for scenes idx (default all)
        from the codes and decoder, `batch` scenes at a time, probing each cell's centre and
        n_jitter random points. Returns the OccupancyGrid."""
        if self.occupancy is None:
            self.occupancy = OccupancyGrid.full(len(self), cfg.occ_grid_res, self.device)
        idx = torch.arange(len(self)) if idx is None else torch.as_tensor(idx).reshape(-1)
        dev = next(decoder.parameters()).device
        for i in range(0, len(idx), batch):
            sub = idx[i:i + batch]
            field = make_field(decoder, self.activated(sub).to(dev))
            self.occupancy.refresh(field, sub, cfg.occ_threshold, n_jitter, generator=generator)
        return self.occupancy

    @torch.no_grad()
    def adam_step(self, idx: torch.Tensor, grad: torch.Tensor, lr: float):
        """Adam update of the scenes idx (B,) (distinct) with their gradient (B, 3, C, R, R)."""
        idx = torch.as_tensor(idx, device=self.device).long()
        if idx.unique().numel() != idx.numel():
            raise ValueError("CodeBank.adam_step: idx has repeated scenes")
        grad = grad.to(self.device, self.codes_.dtype)
        b1, b2 = self.betas
        k = self.step[idx] + 1                                              # (B,)
        m = self.exp_avg[idx].mul_(b1).add_(grad, alpha=1 - b1)
        v = self.exp_avg_sq[idx].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        e = (slice(None),) + (None,) * (grad.dim() - 1)                     # broadcast (B,)
        bc1 = (1 - b1 ** k.double()).float()[e]
        bc2 = (1 - b2 ** k.double()).float()[e]
        update = (m / bc1) / ((v / bc2).sqrt() + self.eps)
        self.codes_[idx] -= lr * update
        self.exp_avg[idx], self.exp_avg_sq[idx], self.step[idx] = m, v, k

    @classmethod
    def from_codes(cls, x: torch.Tensor) -> "CodeBank":
        """A bank holding the ACTIVATED codes x (B, 3, C, R, R) (stored as atanh(x / 2),
        clamped just inside +-2), with fresh Adam states: what finetuning optimises."""
        B, _, C, R, _ = x.shape
        bank = cls(B, C, R, device=x.device, generator=torch.Generator())   # global RNG untouched
        bank.codes_ = code_inverse_activation(x.detach()).clone()
        return bank

    def state_dict(self) -> dict:
        return {"codes_": self.codes_.cpu(), "exp_avg": self.exp_avg.cpu(),
                "exp_avg_sq": self.exp_avg_sq.cpu(), "step": self.step.cpu(),
                "betas": self.betas, "eps": self.eps}

    def load_state_dict(self, sd: dict):
        if tuple(sd["codes_"].shape) != self.shape:
            raise ValueError(f"CodeBank.load_state_dict: codes of shape {tuple(sd['codes_'].shape)}"
                             f" do not fit a bank of shape {self.shape}")
        self.codes_ = sd["codes_"].to(self.device).clone()
        self.exp_avg = sd["exp_avg"].to(self.device).clone()
        self.exp_avg_sq = sd["exp_avg_sq"].to(self.device).clone()
        self.step = sd["step"].to(self.device).clone()
        self.betas, self.eps = tuple(sd.get("betas", self.betas)), sd.get("eps", self.eps)
        return self

    @classmethod
    def from_state_dict(cls, sd: dict, device="cpu") -> "CodeBank":
        N, _, C, R, _ = sd["codes_"].shape
        return cls(N, C, R, device=device).load_state_dict(sd)

    def to(self, device) -> "CodeBank":
        self.device = torch.device(device)
        for name in ("codes_", "exp_avg", "exp_avg_sq", "step"):
            setattr(self, name, getattr(self, name).to(self.device))
        return self
