"""Experiments: data + config + mode -> a trained model, cached, resumable, shippable.

    model = load_or_train("single-stage")            # notebooks: shipped, cached or trained
    model.codes        # (N, 3, C, R, R) the learned scene codes x_i (after 2 tanh)
    model.decoder      # psi, EMA weights, frozen
    model.prior        # phi, EMA weights, frozen (model.prior.denoise(x_t, t) -> x0_hat)

`load_or_train` looks for the model, in order, among the small pretrained checkpoints
shipped with minissd (`model_dirs()`: the package's own assets/models/ in an installed wheel,
then the repository's assets/models/ for a checkout or an editable install), in the cache
(`MINISSD_CACHE`, default ~/.cache/minissd), and otherwise says so once, trains it
(resumably, in the cache) and caches it. The command line `python -m minissd train ...`
runs the same Trainer on any SRN folder.

A `Model` file holds only what test time needs (EMA networks, codes in float16, config,
log); the training checkpoint (`checkpoint.pt` in the run folder) holds everything needed
to resume.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import hashlib
import json
import os
import time

import torch

from minissd.config import Config, TestConfig, cache_dir, pick_device, preset_for_notebook
from minissd.data.procedural import ensure_dataset
from minissd.data.srn import SRNDataset
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.triplane import make_field
from minissd.prior.diffusion import DiffusionPrior
from minissd.ssd import checkpoint as ckpt
from minissd.ssd import distributed
from minissd.ssd.train import MODES, Trainer, sparse_view_ids
from minissd.utils import to_device

MODEL_FORMAT = "minissd-model-v1"
MODEL_KEYS = ("config", "mode", "decoder", "prior", "codes", "names", "log", "meta")
# the repository's assets/ (a checkout or an editable install; train_assets.py writes here)
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # .../minissd
ASSETS = os.path.join(os.path.dirname(PACKAGE_DIR), "assets")
# where a regular install (a wheel: setup.py copies assets/models/ into it) keeps them
PACKAGE_MODELS = os.path.join(PACKAGE_DIR, "assets", "models")


def model_dirs() -> list[str]:
    """Folders of shipped checkpoints, in lookup order: installed package, then repository."""
    return [PACKAGE_MODELS, os.path.join(ASSETS, "models")]


def _training_time_hint(mode: str, cfg: Config) -> str:
    """'about N min' from the shipped manifests' wall times of the same preset, if any."""
    per_iter = []
    for d in model_dirs():
        try:
            with open(os.path.join(d, "manifest.json")) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            continue
        for m in manifest.values():
            if m.get("preset") == cfg.name and m.get("mode") == mode and m.get("iters") and m.get("wall_s"):
                per_iter.append(m["wall_s"] / m["iters"])
    if not per_iter:
        return "from minutes (smoke) to hours (gpu/paper presets), depending on the preset and device"
    minutes = cfg.iters * sum(per_iter) / len(per_iter) / 60
    return f"about {max(1, round(minutes))} min on a 2-core CPU (the shipped {cfg.name} models' pace)"


@dataclass
class Model:
    """Everything test time needs from a training run (networks are the EMA copies)."""
    cfg: Config
    mode: str
    decoder: TriplaneDecoder
    prior: DiffusionPrior
    codes: torch.Tensor                 # (N, 3, C, R, R), activated
    names: list = dataclasses.field(default_factory=list)
    log: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)
    test: TestConfig = dataclasses.field(default_factory=TestConfig)   # test-time settings (eq. 5-7)

    def field(self, x: torch.Tensor):
        """The radiance field of codes x (B, 3, C, R, R) under this model's decoder."""
        return make_field(self.decoder, x)

    def to(self, device) -> "Model":
        self.decoder.to(device), self.prior.to(device)
        self.codes = self.codes.to(device)
        return self

    @classmethod
    def from_trainer(cls, tr: Trainer, meta: dict | None = None) -> "Model":
        dec, prior = TriplaneDecoder(tr.cfg.code_ch, tr.cfg.dec_hidden), DiffusionPrior(tr.cfg)
        dec.load_state_dict(tr.ema_decoder.state_dict())
        prior.load_state_dict(tr.ema_prior.state_dict())
        codes = tr.bank.activated().detach()
        return cls(tr.cfg, tr.mode, _frozen(dec), _frozen(prior), codes,
                   list(tr.data.get("names", [])), list(tr.log), dict(meta or {}))

    def save(self, path: str) -> str:
        """Write the model file atomically; refuse one with NaN/inf tensors."""
        payload = {
            "format": MODEL_FORMAT, "config": self.cfg.to_dict(), "mode": self.mode,
            "decoder": self.decoder.state_dict(),
            "prior": {k: v.half() if v.is_floating_point() else v
                      for k, v in self.prior.state_dict().items()},
            "codes": self.codes.detach().cpu().half(), "names": self.names,
            "log": self.log, "meta": self.meta, "test": self.test.to_dict()}
        bad = ckpt.nonfinite({k: payload[k] for k in ("decoder", "codes", "prior")})
        if bad:
            raise ckpt.CheckpointError(f"{path}: not written, the model has non-finite "
                                       f"values in {', '.join(bad[:5])}")
        return ckpt.save_atomic(path, payload)

    @classmethod
    def load(cls, path: str, device="cpu") -> "Model":
        """A model file, checked before use: format, every tensor finite, config and
        test-time settings valid, mode known, codes and networks the shapes the config
        says. Anything else is a CheckpointError naming the file."""
        sd = ckpt.load(path)
        if sd["format"] != MODEL_FORMAT:
            raise ckpt.CheckpointError(f"{path}: format {sd['format']!r}, expected {MODEL_FORMAT!r}"
                                       " (a training checkpoint? use Trainer.resume)")
        missing = [k for k in MODEL_KEYS if k not in sd]
        if missing:
            raise ckpt.CheckpointError(f"{path}: incomplete model file, no {', '.join(missing)}")
        bad = ckpt.nonfinite({k: sd.get(k) for k in ("decoder", "prior", "codes")})
        if bad:
            raise ckpt.CheckpointError(f"{path}: the model holds NaN/inf values in "
                                       f"{', '.join(bad[:5])} (training diverged?)")
        try:
            cfg = Config.from_dict(sd["config"], where=f"{path}: config").validate(f"{path}: config")
            test = TestConfig.from_dict(sd.get("test"), where=f"{path}: test-time config").validate(
                cfg, where=f"{path}: test-time")
        except ValueError as e:
            raise ckpt.CheckpointError(str(e)) from None
        if sd["mode"] not in MODES:
            raise ckpt.CheckpointError(f"{path}: mode {sd['mode']!r}, expected one of {MODES}")
        codes, want = sd["codes"], (3, cfg.code_ch, cfg.code_res, cfg.code_res)
        if not torch.is_tensor(codes) or codes.dim() != 5 or tuple(codes.shape[1:]) != want \
                or len(codes) == 0:
            shape = tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__
            raise ckpt.CheckpointError(f"{path}: codes of shape {shape}, expected (N >= 1, "
                                       f"{', '.join(map(str, want))}) from its config")
        dec, prior = TriplaneDecoder(cfg.code_ch, cfg.dec_hidden), DiffusionPrior(cfg)
        part = "decoder"
        try:
            dec.load_state_dict(sd["decoder"])
            part = "prior"
            prior.load_state_dict({k: v.float() if v.is_floating_point() else v
                                   for k, v in sd["prior"].items()})
        except (RuntimeError, TypeError, AttributeError, KeyError) as e:
            raise ckpt.CheckpointError(f"{path}: its {part} does not match its config "
                                       f"({str(e).splitlines()[0]})") from None
        return cls(cfg, sd["mode"], _frozen(dec), _frozen(prior), codes.float(),
                   list(sd["names"]), list(sd["log"]), dict(sd["meta"]), test).to(device)


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_training_data(data_dir: str, cfg: Config, device="cpu") -> dict:
    """The stacked training scenes of an SRN folder at cfg.image_res, restricted to
    cfg.views_per_scene fixed views (0 = all)."""
    probe = SRNDataset(data_dir, resolution=cfg.image_res)
    n_views = probe.common_view_count()
    views = sparse_view_ids(n_views, cfg.views_per_scene)
    ds = SRNDataset(data_dir, resolution=cfg.image_res, views=views)
    data = ds.stack()
    return to_device(data, device)


def data_id(data_dir: str, n_scenes: int) -> str:
    """'folder:N:fingerprint' of a training folder; the fingerprint hashes the file list,
    image sizes, poses and intrinsics, so resuming on other data is refused."""
    fp = SRNDataset(data_dir).fingerprint()
    return f"{os.path.basename(os.path.normpath(data_dir))}:{n_scenes}:{fp}"


def check_near_min(cfg: Config, data: dict) -> None:
    """ValueError unless rays starting cfg.near_min from the cameras can reach the scene:
    near_min must be below the nearest camera's distance to the scene's centre."""
    dist = float(data["c2w"][..., :3, 3].norm(dim=-1).min())
    if cfg.near_min >= dist:
        raise ValueError(f"config near_min={cfg.near_min!r}: rays would start beyond the scene "
                         f"centre (the nearest training camera is {dist:.3g} from it); every "
                         "render would be empty")


def train_run(cfg: Config, data_dir: str, mode: str, out_dir: str, device=None,
              resume: bool = True, progress: bool = True, stop_after: int | None = None,
              lock: ckpt.RunLock | None = None, before_training=None):
    """Train (or resume) a run in out_dir, holding its RunLock (`lock`, or one taken
    here); returns the Trainer. `before_training(trainer)` runs once the data, config
    and checkpoint have all been checked, before the first iteration (the command line
    writes config.json there, so a refused run writes nothing)."""
    cfg.validate()
    own = None if lock is not None else distributed.run_lock(out_dir).acquire()   # rank 0 only
    try:
        device = distributed.setup(pick_device(device))       # torchrun: join the ranks
        data = load_training_data(data_dir, cfg, device)
        check_near_min(cfg, data)
        tr = distributed.make_trainer(cfg, data, mode, device, out_dir,   # torchrun: a shard
                                      data_id(data_dir, len(data["names"])))
        tr.run_lock = lock or own
        if resume and tr.resume() and progress:
            print(f"resumed {out_dir} at iteration {tr.it}/{tr.total_iters}")
        if before_training is not None:
            before_training(tr)
        tr.train(progress=progress, stop_after=stop_after)
        tr.run_lock = None
    finally:
        if own is not None:
            own.release()
    return tr


def train_baseline(trainer_cls, cfg, data_dir: str, out_dir: str, device="cpu", resume: bool = True,
                   progress: bool = True, stop_after: int | None = None, finish=None):
    """A baseline's run as train_run's (related/codenerf_fit.py CodeNeRFTrainer,
    related/diffrf_train.py DiffRFTrainer: resume.ResumableLoop subclasses), holding
    out_dir's RunLock: load the data, trainer_cls(cfg, data, device, out_dir, data id),
    resume, train; then finish(trainer) if given, still under the lock (writing model.pt).
    Returns what finish returns, else the trainer."""
    with ckpt.RunLock(out_dir) as lock:
        data = load_training_data(data_dir, cfg, device)
        tr = trainer_cls(cfg, data, device, out_dir, data_id(data_dir, len(data["names"])))
        tr.run_lock = lock
        if resume and tr.resume() and progress:
            print(f"resumed {out_dir} at iteration {tr.it}/{tr.total_iters}")
        tr.train(progress=progress, stop_after=stop_after)
        tr.run_lock = None
        return tr if finish is None else finish(tr)


def config_digest(cfg) -> str:
    """8 hex digits of the whole config (any model's: cfg.to_dict()), for model file names."""
    return hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


def model_key(category, mode, cfg: Config) -> str:
    """A readable name plus a hash of the whole config: any change means another model."""
    return f"{category}-{mode}-{cfg.name}-{cfg.views_per_scene or 'all'}v-{cfg.iters}it-{config_digest(cfg)}"


def shipped_model_file(key: str) -> str | None:
    """KEY.pt in a folder of shipped models (model_dirs()), or None."""
    for path in [os.path.join(d, key + ".pt") for d in model_dirs()]:
        if os.path.exists(path):
            return path
    return None


def find_model_file(key: str) -> str | None:
    """KEY.pt shipped (shipped_model_file) or cached (cache_dir()/models), or None; every
    model kind's load_or_train looks here first."""
    cached = os.path.join(cache_dir(), "models", key + ".pt")
    return shipped_model_file(key) or (cached if os.path.exists(cached) else None)


def find_model(category: str, mode: str, cfg: Config) -> str | None:
    """The file of a shipped (model_dirs()) or cached model for (category, mode, cfg), or None."""
    return find_model_file(model_key(category, mode, cfg))


def load_or_train(mode: str = "single-stage", cfg: Config | None = None, category: str = "cars",
                  device=None, progress: bool = True, retrain: bool = False) -> Model:
    """The model for (category, mode, cfg): shipped (model_dirs()), cached, or trained now."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cfg = cfg or preset_for_notebook()
    key = model_key(category, mode, cfg)
    cached = os.path.join(cache_dir(), "models", key + ".pt")
    path = None if retrain else find_model(category, mode, cfg)
    if path:
        return Model.load(path, device=pick_device(device))
    if not retrain:
        found = sorted({f for d in model_dirs() if os.path.isdir(d)
                        for f in os.listdir(d) if f.endswith(".pt")})
        print(f"[minissd] no shipped or cached model {key}.pt (looked in "
              f"{', '.join(model_dirs())} and {os.path.dirname(cached)}; "
              + (f"{len(found)} other shipped models there" if found else
                 "no shipped models found at all: was minissd installed without them?")
              + f"). Training it now, {_training_time_hint(mode, cfg)}; resumable, "
              f"run folder {os.path.join(cache_dir(), 'runs', key)}, cached as {cached}.", flush=True)
    data_dir = ensure_dataset(category, "train", n_scenes=cfg.data_scenes,
                              n_views=cfg.data_views, resolution=cfg.image_res, seed=0)
    t0 = time.time()
    tr = train_run(cfg, data_dir, mode, os.path.join(cache_dir(), "runs", key),
                   device=device, progress=progress)
    model = Model.from_trainer(tr, meta={"key": key, "wall_s": round(time.time() - t0, 1),
                                         "device": str(tr.device)})
    model.save(cached)
    return model
