"""Single-stage training with prior gradient caching (eq. 4, Algorithm 1), and the
two-stage baseline built from the same parts.

    L = lambda_rend * L_rend({x_i}, psi) + lambda_diff * L_diff({x_i}, phi)       (4)

Algorithm 1 (one outer iteration, for a batch of scenes B_sc):
    4   g_phi, g_x^diff <- grad_{phi, x} lambda_diff L_diff      # diffusion gradient
    5   phi <- phi - Adam(g_phi)
    6   for k_in = 1..K_in:
    7       sample a batch of rays
    8       g_x^rend <- grad_x lambda_rend L_rend                 # rendering gradient
    9       g_x <- g_x^rend + g_x^diff                            # add the CACHED prior grad
    10      x <- x - Adam(g_x)                                     # per-scene Adam
    11-13   on the last k_in: psi <- psi - Adam(grad_psi lambda_rend L_rend)

The expensive denoiser pass happens once per outer iteration; its gradient on the codes
is re-used over K_in cheap rendering steps. K_in follows `cfg.k_in_schedule`.

The laptop recipe (cfg.diff_steps, cfg.diff_batch). On a GPU at the paper's size the
denoiser dominates an outer iteration; on a CPU at laptop size rendering takes ~86% of
it, so one denoiser update per outer iteration leaves the prior starved (1000 updates of
8 codes in a 12-minute run: grey, noisy samples). After lines 4-5 the denoiser therefore
takes diff_steps - 1 further Adam steps, each on diff_batch codes drawn from ALL training
scenes and detached (`extra_denoiser_steps`). Nothing else in Algorithm 1 changes: the
codes still receive exactly one cached prior gradient per outer iteration, computed on
their own batch (line 9). diff_steps = 1 is Algorithm 1 as printed (the gpu and paper
presets); the laptop preset uses 4 updates, 3 of them on 16 codes.

Two-stage baseline (`mode="two-stage"`): `iters` outer iterations of stage 1 (the same
rendering steps and K_in schedule with no prior gradient: a plain auto-decoder, with the
official stage-1 choices: codes start from the running mean code and are regularised by
total variation^1.5 (weight cfg.stage1_tv) instead of the L2 term), then `iters`
iterations of stage 2 (codes and decoder frozen and treated as data, only the denoiser
trains, with exactly the diff_steps updates per iteration of the single-stage run). Both
modes see the same rendering steps and denoiser updates, so the comparison is fair.

Gradients on codes are taken w.r.t. the pre-activation `code_` (x = 2 tanh(code_)).
Losses are averaged over the scenes of a batch for both terms, as the E_i of eq. (1-2).
lambda_diff = c_diff / EMA(mean(x0^2)) is read before the batch updates the EMA; the EMA
takes one batch per outer iteration (the line-4 batch, or stage 2's batch), as the official
code's one diffusion loss per iteration does, whatever cfg.diff_steps, and it is
never frozen (the official code freezes it at 100K iterations, far beyond our runs).
The EMA of the decoder and denoiser weights ramps up as the official configs do
(`ema.ema_beta_at`).
"""
from __future__ import annotations

import time

import torch

from minissd.config import Config
from minissd.nerf.autodecoder import (SINGLE_STAGE_RECIPE, STAGE1_RECIPE, autodecoder_iteration,
                                      inner_step, refresh_due)
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.occupancy import OccupancyGrid
from minissd.nerf.render import MAX_RAYS_PER_PASS
from minissd.nerf.triplane import CodeBank, code_activation
from minissd.prior.diffusion import DiffusionPrior, prior_gradient
from minissd.prior.ema import ema_beta_at, ema_copy, ema_update
from minissd.runtime import GradScale
from minissd.ssd.resume import Resumable
from minissd.utils import evenly_spaced, to_device

MODES = ("single-stage", "two-stage")


def sparse_view_ids(n_views: int, k: int) -> list[int]:
    """k fixed views spread over the n_views of a scene (the paper's 3 views: 0, 24, 49)."""
    return evenly_spaced(n_views, k)


def warmup_factor(it: int, warmup: int) -> float:
    return min(1.0, (it + 1) / max(1, warmup))


class Trainer(Resumable):
    """Owns the codes {x_i}, decoder psi, denoiser phi, their optimisers and EMAs; its
    train loop, checkpoints and resumption are in resume.Resumable.

    scene_data: dict from `SRNDataset.stack()` (images (N,V,H,W,3), c2w, K), already
    restricted to the training views.
    """
    ranks = 1     # torchrun: processes sharing the global batch (distributed.ShardedTrainer)
    average_over_ranks = None   # torchrun: t -> its mean over the ranks, in place (ditto)

    def __init__(self, cfg: Config, scene_data: dict, mode: str = "single-stage",
                 device="cpu", out_dir: str | None = None, data_id: str = ""):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.cfg, self.mode, self.device, self.out_dir = cfg, mode, torch.device(device), out_dir
        self.data = to_device(scene_data, self.device)
        self.n_scenes, self.n_views = self.data["images"].shape[:2]
        self.data_id = data_id or f"{self.n_scenes}x{self.n_views}"
        torch.manual_seed(cfg.seed)
        self.bank = CodeBank(self.n_scenes, cfg.code_ch, cfg.code_res, device=self.device)
        # per-scene occupancy grids for empty-space skipping (all cells occupied at first),
        # owned by the bank (self.occupancy is an alias)
        self.bank.occupancy = OccupancyGrid.full(self.n_scenes, cfg.occ_grid_res, self.device)
        self.decoder = TriplaneDecoder(cfg.code_ch, cfg.dec_hidden, amp=cfg.amp).to(self.device)
        self.prior = DiffusionPrior(cfg).to(self.device)
        self.opt_dec = torch.optim.Adam(self.decoder.parameters(), lr=cfg.lr_decoder)
        self.opt_prior = torch.optim.Adam(self.prior.parameters(), lr=cfg.lr_denoiser)
        self.grad_scale = GradScale(cfg.amp, self.device)     # loss scaling under amp=fp16
        self.ema_decoder, self.ema_prior = ema_copy(self.decoder), ema_copy(self.prior)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        # running mean of the codes: stage 1 of the baseline starts new codes from it
        self.mean_code = torch.zeros(3, cfg.code_ch, cfg.code_res, cfg.code_res, device=self.device)
        self.it = 0
        self.log: list[dict] = []

    @property
    def occupancy(self) -> OccupancyGrid:
        """The scenes' occupancy grids; CodeBank.occupancy owns them."""
        return self.bank.occupancy

    @occupancy.setter
    def occupancy(self, grid: OccupancyGrid):
        self.bank.occupancy = grid

    @property
    def recipe(self):
        """How the auto-decoder half treats codes and grids (autodecoder.Recipe): the
        paper's L2 regulariser in single-stage training, the official stage-1 choices (TV,
        mean-code init) in the two-stage baseline; both refresh the batch's grids once per
        outer iteration before rendering, as the official code does."""
        return STAGE1_RECIPE if self.mode == "two-stage" else SINGLE_STAGE_RECIPE

    # ---------------------------------------------------------------- schedule ----
    @property
    def total_iters(self) -> int:
        return self.cfg.iters * (2 if self.mode == "two-stage" else 1)

    def phase(self, it: int | None = None) -> str:
        it = self.it if it is None else it
        if self.mode == "single-stage":
            return "single-stage"
        return "stage1" if it < self.cfg.iters else "stage2"

    @property
    def stage_it(self) -> int:
        """Iterations done in the current stage (two-stage restarts the count at stage 2)."""
        return self.it - self.cfg.iters if self.phase() == "stage2" else self.it

    def set_learning_rates(self) -> float:
        """Linear warm-up of the decoder and denoiser learning rates over cfg.warmup
        iterations of the current stage (the official configs warm up for 500). Returns
        the factor."""
        f = warmup_factor(self.stage_it, self.cfg.warmup)
        for g in self.opt_dec.param_groups:
            g["lr"] = self.cfg.lr_decoder * f
        for g in self.opt_prior.param_groups:
            g["lr"] = self.cfg.lr_denoiser * f
        return f

    def sample_scenes(self, n: int | None = None) -> torch.Tensor:
        """A random batch of distinct scenes (B_sc in Algorithm 1 line 3), (B,) long."""
        b = min(n or self.cfg.scenes_per_batch, self.n_scenes)
        return torch.randperm(self.n_scenes, generator=self.gen, device=self.device)[:b]

    # ------------------------------------------------------------ the steps ------
    def diffusion_grad(self, idx: torch.Tensor, step_denoiser: bool = True, t=None, noise=None,
                       code_grad: bool = True, update_ema: bool = True):
        """Algorithm 1 lines 4-5: lambda_diff * L_diff on the batch's codes, a denoiser
        step, and the gradient on the codes returned as the cached prior gradient
        (None when code_grad=False: the codes are data, as in stage 2 of the baseline).
        (t, noise) default to fresh draws from the trainer's generator. update_ema: feed
        the batch's mean(x0^2) to the EMA behind lambda_diff (once per outer iteration)."""
        self.opt_prior.zero_grad(set_to_none=True)
        code_ = self.bank.get(idx)                                          # (B, 3, C, R, R)
        g, loss = prior_gradient(self.prior, code_, self.cfg.c_diff, generator=self.gen, t=t,
                                 noise=noise, scale=self.grad_scale.factor / (len(idx) * self.ranks),
                                 code_grad=code_grad)                       # line 4
        g = self.grad_scale.unscale(g)
        if step_denoiser:
            self.grad_scale.step(self.opt_prior)                            # line 5
        if update_ema:
            self.prior.update_x0_ema(code_activation(code_.detach()))
        return g, loss

    def extra_denoiser_steps(self) -> float:
        """cfg.diff_steps - 1 further denoiser updates in this outer iteration, each on
        cfg.diff_batch codes drawn from ALL training scenes and treated as data (no
        gradient reaches the codes). The laptop recipe: rendering costs ~86% of an outer
        iteration on a CPU, so Algorithm 1's one denoiser update per outer iteration
        starves the prior; these cheap extra updates feed it without touching line 9
        (the codes still get exactly the one cached prior gradient of lines 4-5).
        Returns their mean diffusion loss (nan if there are none)."""
        losses = []
        for _ in range(self.cfg.diff_steps - 1):
            idx = self.sample_scenes(self.cfg.diff_batch or self.cfg.scenes_per_batch)
            losses.append(self.diffusion_grad(idx, code_grad=False, update_ema=False)[1])
        return sum(losses) / len(losses) if losses else float("nan")

    def rendering_step(self, idx: torch.Tensor, prior_grad, step_decoder: bool):
        """Algorithm 1 lines 7-13 once (autodecoder.inner_step): fresh rays, rendering
        gradient + cached prior gradient, per-scene Adam step on the codes; the decoder
        steps only when `step_decoder`. The batch is rendered in passes of at most
        MAX_RAYS_PER_PASS rays (autodecoder.backward_rendering_loss). Returns the mean loss."""
        losses = inner_step(self.bank, idx, self.decoder, self.opt_dec, self.data, self.cfg,
                            self.n_views, self.recipe, prior_grad=prior_grad,
                            step_decoder=step_decoder, generator=self.gen,
                            world=self.ranks, max_rays_per_pass=MAX_RAYS_PER_PASS)
        return losses.mean().item()

    @torch.no_grad()
    def refresh_batch_occupancy(self, idx: torch.Tensor):
        """Rebuild the batch's occupancy grids from the current density (once per outer
        iteration, as the official code does; cells stay occupied during warm-up)."""
        if refresh_due(self.it, self.cfg.occ_warmup, self.recipe):
            self.bank.refresh_occupancy(self.decoder, self.cfg, idx, len(idx), self.gen,
                                        self.recipe.occ_jitter)

    def autodecoder_half(self, idx: torch.Tensor, k_in: int, prior_grad=None) -> tuple:
        """Lines 6-13 (with the cached prior gradient) or stage 1 of the baseline (None):
        autodecoder.autodecoder_iteration with this trainer's recipe. Returns (mean loss of
        the last inner step, seconds on the grids, seconds rendering)."""
        stats = {}
        losses = autodecoder_iteration(self.bank, idx, self.decoder, self.opt_dec, self.data,
                                       self.cfg, self.it, k_in, self.recipe, prior_grad=prior_grad,
                                       mean_code=self.mean_code, generator=self.gen,
                                       max_rays_per_pass=MAX_RAYS_PER_PASS, stats=stats,
                                       world=self.ranks, average=self.average_over_ranks)
        return losses.mean().item(), stats["t_occ"], stats["t_rend"]

    def single_stage_step(self) -> dict:
        """One outer iteration of Algorithm 1, line by line."""
        idx, k_in = self.sample_scenes(), self.cfg.k_in(self.it)           # line 3
        t0 = time.perf_counter()
        g_diff, loss_diff = self.diffusion_grad(idx)                       # lines 4-5
        extra = self.extra_denoiser_steps()                                # cfg.diff_steps
        t1 = time.perf_counter()
        loss_rend, t_occ, t_rend = self.autodecoder_half(idx, k_in, g_diff)   # lines 6-13
        return self.end_iteration("single-stage", k_in, loss_rend, loss_diff, t1 - t0, t_rend,
                                  t_occ, extra)

    def stage1_step(self) -> dict:
        """Two-stage baseline, stage 1: the rendering half of Algorithm 1 with no prior
        gradient (an auto-decoder), the same K_in schedule, the official stage-1 recipe."""
        idx, k_in = self.sample_scenes(), self.cfg.k_in(self.it)
        loss_rend, t_occ, t_rend = self.autodecoder_half(idx, k_in)
        return self.end_iteration("stage1", k_in, loss_rend, float("nan"), 0.0, t_rend, t_occ)

    def stage2_step(self) -> dict:
        """Two-stage baseline, stage 2: codes and decoder frozen; exactly the denoiser
        updates of a single-stage outer iteration (one on a batch, diff_steps - 1 extra)."""
        t0 = time.perf_counter()
        _, loss_diff = self.diffusion_grad(self.sample_scenes(), code_grad=False)
        extra = self.extra_denoiser_steps()
        t1 = time.perf_counter()
        return self.end_iteration("stage2", 0, float("nan"), loss_diff, t1 - t0, 0.0, 0.0, extra)

    def outer_step(self) -> dict:
        """One outer iteration: Algorithm 1, or a step of the two-stage baseline."""
        self.set_learning_rates()
        phase = self.phase()
        if phase == "single-stage":
            return self.single_stage_step()
        return self.stage1_step() if phase == "stage1" else self.stage2_step()

    def end_iteration(self, phase, k_in, loss_rend, loss_diff, t_diff=0.0, t_rend=0.0,
                      t_occ=0.0, loss_diff_extra=float("nan")) -> dict:
        """EMA updates of psi and phi (with the official ramp-up), the iteration count
        and one log row."""
        beta = ema_beta_at(self.stage_it, self.cfg.ema_beta, self.cfg.ema_rampup)
        if phase != "stage2":
            ema_update(self.ema_decoder, self.decoder, beta)
        if phase != "stage1":
            ema_update(self.ema_prior, self.prior, beta)
        self.it += 1
        row = {"iter": self.it, "phase": phase, "k_in": k_in, "loss_rend": loss_rend,
               "loss_diff": loss_diff, "loss_diff_extra": loss_diff_extra,
               "lambda_diff": self.prior.lambda_diff(self.cfg.c_diff),
               "x0_sq_ema": float(self.prior.x0_sq_ema), "ema_beta": beta,
               "t_diff": t_diff, "t_rend": t_rend, "t_occ": t_occ}
        self.log.append(row)
        return row
