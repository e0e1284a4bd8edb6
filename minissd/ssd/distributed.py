"""Multi-process training (torchrun): Algorithm 1 with the scenes sharded over ranks.

    torchrun --nproc_per_node 2 -m minissd train --preset paper --data DIR --out RUN

The split follows the official code (a launcher over 2 GPUs, `MultiSceneNeRF` with a
split `DistributedSampler`, per-rank code caches):

  * Each rank owns a FIXED contiguous shard of the scene ids (`shard_of`): rank r of W
    holds scenes [r N / W, (r + 1) N / W). Their codes x_i, their per-scene Adam moments
    and their occupancy grids live on that rank only and are NEVER all-reduced: a scene's
    code only ever receives its own rendering and prior gradients (eq. 4).
  * Each outer iteration every rank draws scenes_per_batch / W scenes of its own shard
    (B_sc of Algorithm 1 is the union over ranks) and runs lines 4-13 on them. The cached
    prior gradient g_x^diff (line 4) and the code steps (line 10) are local.
  * The decoder psi and the denoiser phi are replicated (identical initialisation, the
    single process's, on every rank) and kept identical by summing their gradients over
    the ranks right before each of their Adam steps (`SyncedOptimizer`). Each rank's loss
    is its share of the global batch mean (scale 1 / scenes_per_batch, `Trainer.ranks`),
    so the sum is the single process's gradient, and every code gets exactly the gradient
    it gets in one process (Adam's eps makes the scale matter for tiny gradients).
    This is what DistributedDataParallel does; we all-reduce at the optimiser step
    instead of wrapping the modules, because minissd calls the decoder through field
    callables over several ray passes and the denoiser through `prior.loss`, never
    through `forward` (where DDP hooks in). The effect is DDP's `no_sync()`: the K_in - 1
    code-only inner steps accumulate nothing and communicate nothing; the decoder's
    gradient is all-reduced once, on the last inner step (line 11-13), where it steps.
  * lambda_diff = c_diff / EMA(mean x0^2) must be the same on every rank (else the
    averaged gradient is no loss's gradient): the batch statistic is averaged first.
  * Logged losses are the mean over ranks, so every rank sees the same log row: a NaN on
    any rank stops every rank at the same iteration (the divergence guard), and only
    rank 0 reports it.

Checkpoints are GATHERED on rank 0 into the single-process format (one checkpoint.pt, all
N scenes in order, plus each rank's generator state): the run folder is the single
process's, `model.pt` is the same file, and a run can be resumed on another number of
ranks (or one process). The cost is one gather of the codes and their Adam moments per
checkpoint, no more memory on rank 0 than a single process holds anyway. Only rank 0
takes the run folder's lock and writes files.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
import datetime
import os

import torch
import torch.distributed as dist

from minissd.nerf.occupancy import OccupancyGrid
from minissd.nerf.triplane import CodeBank
from minissd.ssd import checkpoint as ckpt
from minissd.ssd.train import Trainer

RANK_SEED_STRIDE = 1_000_003          # rank r samples rays/noise from seed + r * stride
BANK_KEYS = ("codes_", "exp_avg", "exp_avg_sq", "step")


# --------------------------------------------------------------- ranks -----------
@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """This process's rank from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK);
    one process without them."""
    try:
        return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ValueError(f"torchrun environment: {e}") from None


def setup(device) -> torch.device:
    """Join the process group under torchrun (gloo on CPU, nccl on CUDA; rank r uses
    cuda:LOCAL_RANK) and return this rank's device; a no-op for one process."""
    r = ranks()
    if not r.on:
        return device
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", r.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=10))
    return device


def shard_of(n_scenes: int, rank: int, world: int) -> range:
    """The contiguous scene ids of `rank`: sizes differ by at most one."""
    if n_scenes < world:
        raise ValueError(f"{n_scenes} training scenes cannot be shared by {world} ranks")
    return range(rank * n_scenes // world, (rank + 1) * n_scenes // world)


class NullLock:
    """The lock of a rank other than 0 (rank 0 alone locks the run folder)."""

    def acquire(self):
        return self

    def release(self):
        pass

    __enter__ = acquire

    def __exit__(self, *exc):
        pass


def run_lock(folder: str):
    """RunLock(folder) on rank 0 (or a single process), a NullLock on the other ranks."""
    return ckpt.RunLock(folder) if ranks().main else NullLock()


def is_main() -> bool:
    return ranks().main


# ------------------------------------------------------------ collectives ---------
def sum_(tensors: list[torch.Tensor], world: int = 0) -> None:
    """All-reduce tensors over the ranks in place, in one message: the sum, or the mean
    when world is given."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    if world:
        flat /= world
    for t, v in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(v.view_as(t))


class SyncedOptimizer:
    """An optimiser whose step() first sums its parameters' gradients over the ranks (each
    rank's loss is already its share of the global batch mean: DDP's all-reduce, at the one
    place the gradient is used). `allreduces` counts them."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt, self.allreduces = opt, 0

    def step(self):
        params = [p for g in self.opt.param_groups for p in g["params"]]
        # which parameters have a gradient on any rank (Adam skips those with none)
        has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        sum_(grads + [has])
        for p, g, h in zip(params, grads, has.tolist()):
            p.grad = g if h > 0 else None
        self.allreduces += 1
        return self.opt.step()

    def __getattr__(self, name):            # param_groups, zero_grad, state_dict, ...
        return getattr(self.opt, name)


def gather_to_main(obj, r: Ranks):
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere."""
    out = [None] * r.world if r.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def slice_scenes(data: dict, keep: range, n: int) -> dict:
    """The entries of a scene dict (tensors and lists indexed by scene) for scenes `keep`."""
    sl = slice(keep.start, keep.stop)
    return {k: (v[sl].clone() if torch.is_tensor(v) else v[sl])     # a copy frees the rest
            if (torch.is_tensor(v) or isinstance(v, list)) and len(v) == n else v
            for k, v in data.items()}


# ------------------------------------------------------------ the trainer ---------
class ShardedTrainer(Trainer):
    """The Trainer of one rank: its shard of scenes, shared decoder and denoiser.

    Built from ALL the scenes, so that codes, decoder and denoiser start exactly as in a
    single process; the other ranks' scenes are then dropped."""

    def __init__(self, cfg, scene_data: dict, mode: str = "single-stage", device="cpu",
                 out_dir: str | None = None, data_id: str = "", r: Ranks | None = None):
        super().__init__(cfg, scene_data, mode, device, out_dir, data_id)
        self.r = r or ranks()
        self.ranks = self.r.world            # losses scaled by 1 / global batch (train.py)
        if cfg.scenes_per_batch % self.r.world:
            raise ValueError(f"scenes_per_batch={cfg.scenes_per_batch} is not a multiple of the "
                             f"{self.r.world} ranks (each rank trains scenes_per_batch / ranks)")
        self.n_global, self.names = self.n_scenes, list(self.data.get("names", []))
        self.shard = shard_of(self.n_global, self.r.rank, self.r.world)
        self.data = slice_scenes(self.data, self.shard, self.n_global)
        grids = self.occupancy                               # all scenes' (the bank owns them)
        self.bank = CodeBank.from_state_dict(self._slice(self.bank.state_dict()), self.device)
        self.occupancy = OccupancyGrid(grids.grid[self.shard.start:self.shard.stop].clone(),
                                       grids.bound)
        self.n_scenes = len(self.shard)
        self.gen.manual_seed(cfg.seed + RANK_SEED_STRIDE * self.r.rank)
        self.opt_dec = SyncedOptimizer(self.opt_dec)
        self.opt_prior = SyncedOptimizer(self.opt_prior)
        self.prior.update_x0_ema = self._update_x0_ema          # the batch statistic, synced
        if not self.r.main:
            self.run_lock = NullLock()                          # rank 0 alone locks the run
            self.writes_files = False                           # ... and cleans it (train.py)

    def _slice(self, bank_sd: dict) -> dict:
        return {k: v[self.shard.start:self.shard.stop] if k in BANK_KEYS else v
                for k, v in bank_sd.items()}

    @torch.no_grad()
    def _update_x0_ema(self, x0: torch.Tensor) -> None:
        """DiffusionPrior.update_x0_ema with mean(x0^2) over the global batch."""
        ms = x0.detach().float().pow(2).mean().reshape(1)
        sum_([ms], self.r.world)
        m = self.prior.x0_ema_momentum
        self.prior.x0_sq_ema.mul_(1 - m).add_(m * ms[0])

    @torch.no_grad()
    def average_over_ranks(self, t: torch.Tensor) -> None:
        """t <- its mean over the ranks, in place: the global batch's mean code in stage 1
        of the two-stage baseline (autodecoder.update_mean_code), the same on every rank."""
        sum_([t], self.r.world)

    def sample_scenes(self, n: int | None = None) -> torch.Tensor:
        """This rank's part of the global batch: n / W scenes of its own shard (local ids)."""
        return super().sample_scenes(max(1, (n or self.cfg.scenes_per_batch) // self.r.world))

    def end_iteration(self, phase, k_in, loss_rend, loss_diff, t_diff=0.0, t_rend=0.0,
                      t_occ=0.0, loss_diff_extra=float("nan")) -> dict:
        """The log row of the global batch: losses averaged over the ranks (NaN anywhere
        makes it NaN everywhere, so all ranks stop together)."""
        losses = torch.tensor([loss_rend, loss_diff, loss_diff_extra], dtype=torch.float64,
                              device=self.device)
        sum_([losses], self.r.world)
        loss_rend, loss_diff, loss_diff_extra = losses.tolist()
        return super().end_iteration(phase, k_in, loss_rend, loss_diff, t_diff, t_rend, t_occ,
                                     loss_diff_extra)

    def train(self, iters=None, progress: bool = True, stop_after=None, log_every: int = 10):
        return super().train(iters, progress and self.r.main, stop_after, log_every)

    def _stop(self, what: str, row: dict):
        """Every rank stops at the same row; only rank 0 writes the log and reports."""
        if not self.r.main:
            raise SystemExit(1)
        super()._stop(what, row)

    # ------------------------------------------------------ checkpoints ---------
    def state_dict(self) -> dict | None:
        """The single-process checkpoint, gathered on rank 0 (None on the other ranks):
        all scenes' codes, Adam moments and occupancy grids in scene order, and every
        rank's generator state ('rank_rng')."""
        sd = super().state_dict()
        parts = gather_to_main({k: sd[k] for k in ("bank", "occupancy", "rng")}, self.r)
        if parts is None:
            return None
        sd["bank"] = dict(sd["bank"], **{k: torch.cat([p["bank"][k] for p in parts])
                                         for k in BANK_KEYS})
        sd["occupancy"] = {"grid": torch.cat([p["occupancy"]["grid"] for p in parts]),
                           "bound": sd["occupancy"]["bound"]}
        sd["rank_rng"] = [p["rng"] for p in parts]
        return sd

    def load_state_dict(self, sd: dict, path: str = "<checkpoint>"):
        """Load a (gathered or single-process) checkpoint: keep this rank's scenes."""
        n = sd["bank"]["codes_"].shape[0]
        if n != self.n_global:
            raise ckpt.CheckpointError(f"{path}: holds {n} scenes, this run has {self.n_global}")
        sd = dict(sd, bank=self._slice(sd["bank"]),
                  occupancy={"grid": sd["occupancy"]["grid"][self.shard.start:self.shard.stop],
                             "bound": sd["occupancy"]["bound"]})
        super().load_state_dict(sd, path)
        rngs = sd.get("rank_rng") or []
        if len(rngs) == self.r.world:
            self.gen.set_state(rngs[self.r.rank])
        else:                                # another number of ranks: fresh, distinct streams
            self.gen.manual_seed(self.cfg.seed + RANK_SEED_STRIDE * self.r.rank + self.it)

    def save(self) -> str:
        """Refuse non-finite tensors (parameters, EMAs, optimiser moments) on any rank
        (all stop), then rank 0 writes the gathered checkpoint atomically."""
        bad = ckpt.nonfinite(super().state_dict())    # this rank's every tensor, as Resumable.save
        everyone = [None] * self.r.world
        dist.all_gather_object(everyone, [f"rank {self.r.rank}: {b}" for b in bad])
        bad = [b for part in everyone for b in part]
        if bad:
            self._stop(f"non-finite parameters {', '.join(bad[:5])}",
                       self.log[-1] if self.log else {"iter": self.it, "phase": self.phase()})
        sd = self.state_dict()
        if self.r.main:
            ckpt.save_atomic(self.ckpt_path(), sd)
            self.write_log()
        dist.barrier()                       # no rank goes on (or resumes) before it is on disk
        return self.ckpt_path()

    def write_log(self, append: bool = False) -> None:
        if self.r.main:
            super().write_log(append)

    def for_model(self):
        """On rank 0, a copy of this trainer holding ALL the scenes' codes and names (what
        Model.from_trainer reads); None on the other ranks. Collective."""
        parts = gather_to_main(self.bank.state_dict(), self.r)
        if parts is None:
            return None
        full = copy.copy(self)
        full.bank = CodeBank.from_state_dict(
            dict(parts[0], **{k: torch.cat([p[k] for p in parts]) for k in BANK_KEYS}), self.device)
        full.data = {"names": self.names}
        return full


def make_trainer(cfg, scene_data: dict, mode: str, device, out_dir: str | None, data_id: str):
    """A ShardedTrainer under torchrun with more than one rank, else the plain Trainer."""
    cls = ShardedTrainer if ranks().on else Trainer
    return cls(cfg, scene_data, mode=mode, device=device, out_dir=out_dir, data_id=data_id)


def for_model(tr):
    """The trainer Model.from_trainer should read: gathered on rank 0, None on the other
    ranks (they write nothing); the trainer itself for one process."""
    return tr.for_model() if isinstance(tr, ShardedTrainer) else tr


@contextlib.contextmanager
def quiet_unless_main():
    """Silence stdout on ranks other than 0 (one set of messages per run)."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield
