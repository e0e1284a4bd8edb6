"""Multi-process training (minissd/ssd/distributed.py): 2 ranks over gloo on 127.0.0.1.

The ranks are spawned here (torch.multiprocessing, what torchrun does: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT in the environment).

How 2 ranks can equal 1 process: the ranks sample rays, stratified depths and diffusion
noise from their own generators, so their draws cannot be the single process's. The
comparison therefore replaces the random draws (minissd.utils rand/randint/randn_like, as
imported by the renderer, the ray sampler, the occupancy grid and the prior) by fixed
values in BOTH runs, and uses a global batch of all 4 scenes (each rank: its 2). What is
left is the same arithmetic in another order (a sum over 2 + 2 scenes then an average
over ranks, instead of a mean over 4), so weights may differ by float32 rounding only:
~1e-7 relative per operation, amplified by Adam's division by sqrt(v) for tiny gradients.
TOL = 1e-5 is 1% of one Adam step (lr 1e-3): a gradient lost, doubled or taken from the
wrong scenes moves a weight by about a whole step and fails.
"""
import contextlib
import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minissd.ssd import distributed
from minissd.ssd.distributed import shard_of
from minissd.ssd.train import Trainer

from test_train import tiny_cfg, tiny_data

TOL = 1e-5
ITERS, DIFF_STEPS = 6, 2


def match_cfg(**kw):
    return tiny_cfg(**dict(dict(scenes_per_batch=4, iters=ITERS, ckpt_every=2, occ_warmup=3,
                                diff_steps=DIFF_STEPS), **kw))


def two_stage(tr_class, **kw):
    """2 iterations of stage 1 and 2 of stage 2 of the baseline."""
    tr = tr_class(match_cfg(iters=2), tiny_data(), mode="two-stage", **kw)
    tr.train(progress=False)
    return tr


def pattern(shape, dtype=torch.float32) -> torch.Tensor:
    """Fixed values in [0, 1) that vary along every dimension but the first (the scenes of
    a batch), so that a rank's rows equal the single process's rows for the same scenes."""
    shape = tuple(shape)
    n = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
    row = (torch.arange(n, dtype=torch.float64) * 0.6180339887 + 0.25) % 1.0
    return row.to(dtype).reshape(shape[1:]).expand(shape).clone()


def fixed_randomness():
    """Replace every random draw of a training step by fixed values (see the docstring)."""
    from minissd.nerf import autodecoder, occupancy, render
    from minissd.prior import diffusion
    fixed = {"rand": lambda shape, generator=None, device="cpu", dtype=torch.float32:
             pattern(shape, dtype).to(device),
             "randint": lambda high, shape, generator=None, device="cpu":
             (pattern(shape, torch.float64) * high).long().clamp_max(high - 1).to(device),
             "randn_like": lambda x, generator=None:
             (pattern(x.shape, x.dtype) * 2 - 1).mul(1.7).to(x.device)}
    for mod in (autodecoder, occupancy, render, diffusion):
        for name, fn in fixed.items():
            if hasattr(mod, name):
                setattr(mod, name, fn)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, world: int, port: int):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    distributed.setup("cpu")


def spawn(fn, *args):
    mp.spawn(fn, args=(2, free_port()) + args, nprocs=2, join=True)


# ---------------------------------------------------------------- workers ----------
def train_worker(rank, world, port, out):
    """Train ITERS iterations in two sessions (stopped after 2, resumed), counting the
    all-reduces of the decoder's gradient; save what the test compares."""
    join(rank, world, port)
    fixed_randomness()
    calls = []
    real = dist.all_reduce

    def counting(t, *a, **k):
        calls.append(t.numel())
        return real(t, *a, **k)
    dist.all_reduce = counting
    run = os.path.join(out, "run")
    tr = distributed.ShardedTrainer(match_cfg(), tiny_data(), out_dir=run)
    tr.train(progress=False, stop_after=2)               # "killed" after the checkpoint at 2
    tr = distributed.ShardedTrainer(match_cfg(), tiny_data(), out_dir=run)
    resumed = tr.resume()
    tr.train(progress=False)
    n_dec = sum(p.numel() + 1 for p in tr.decoder.parameters())   # grads + has-grad flags
    dec_allreduces = sum(c == n_dec for c in calls)
    two = two_stage(distributed.ShardedTrainer)
    torch.save({"two": {"codes_": two.bank.codes_, "mean_code": two.mean_code,
                        "decoder": two.decoder.state_dict(), "prior": two.prior.state_dict()},
                "resumed": resumed, "it": tr.it, "codes_": tr.bank.codes_, "shard": list(tr.shard),
                "decoder": tr.decoder.state_dict(), "prior": tr.prior.state_dict(),
                "dec_allreduces": dec_allreduces, "log": tr.log,
                "model": distributed.for_model(tr) is not None},
               os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def cli_worker(rank, world, port, data, out, iters, resume, nan_at):
    """`python -m minissd train` on each rank; rank 1's rendering loss turns NaN at
    iteration nan_at (0: never). Writes the exit status, stderr and stdout per rank."""
    join(rank, world, port)
    from minissd.cli import main
    if rank == 1 and nan_at:
        real = Trainer.autodecoder_half                 # (loss_rend, t_occ, t_rend)
        Trainer.autodecoder_half = lambda self, *a, **k: (lambda r: (
            r[0] * (float("nan") if self.it + 1 >= nan_at else 1.0),) + r[1:])(real(self, *a, **k))
    err, outp = io.StringIO(), io.StringIO()
    argv = ["train", "--preset", "smoke", "--data", data, "--out", out, "--iters", str(iters),
            "--set", "image_res=16", "--set", "rays_per_scene=32", "--set", "n_samples=8",
            "--set", "scenes_per_batch=2", "--set", "ckpt_every=2"] + (["--resume"] if resume else [])
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outp):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    with open(f"{out}.rank{rank}.txt", "w") as f:
        f.write(f"{rc}\n{err.getvalue()}")
    if dist.is_initialized():
        dist.destroy_process_group()


def cli_results(out):
    """[(exit status, stderr lines)] of ranks 0 and 1."""
    res = []
    for r in range(2):
        with open(f"{out}.rank{r}.txt") as f:
            rc, *lines = f.read().splitlines()
        res.append((int(rc), [ln for ln in lines if ln.strip()]))
    return res


# ------------------------------------------------------------------ tests ----------
def test_shards_are_contiguous_disjoint_and_cover_every_scene():
    for n, world in ((4, 2), (7, 2), (10, 3), (2458, 2)):
        shards = [shard_of(n, r, world) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="3 training scenes cannot be shared by 4 ranks"):
        shard_of(3, 0, 4)


def test_two_ranks_match_one_process_and_resume(tmp_path, monkeypatch):
    spawn(train_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    fixed_randomness_here(monkeypatch)
    one = Trainer(match_cfg(), tiny_data())
    one.train(progress=False)
    assert all(r["resumed"] and r["it"] == ITERS for r in ranks)
    assert [r["shard"] for r in ranks] == [[0, 1], [2, 3]]
    # decoder/denoiser replicas: identical on both ranks, and the single process's
    for m in ("decoder", "prior"):
        mine = getattr(one, m).state_dict()
        for k, v in mine.items():
            assert torch.equal(ranks[0][m][k], ranks[1][m][k]), (m, k)
            assert torch.allclose(ranks[0][m][k], v, rtol=0, atol=TOL), (m, k)
    # each rank's codes are the single process's codes of its own scenes
    for r in ranks:
        assert torch.allclose(r["codes_"], one.bank.codes_[r["shard"]], rtol=0, atol=TOL)
    # the gathered checkpoint is the single process's, scenes in order
    sd = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert torch.allclose(sd["bank"]["codes_"], one.bank.codes_, rtol=0, atol=TOL)
    assert len(sd["rank_rng"]) == 2 and sd["iter"] == ITERS
    solo = Trainer(match_cfg(iters=ITERS + 1), tiny_data(), out_dir=str(tmp_path / "run"))
    assert solo.resume() and solo.it == ITERS               # one process resumes the 2-rank run
    solo.train(progress=False)
    assert solo.it == ITERS + 1 and os.path.exists(tmp_path / "run" / "checkpoint.pt")
    # the log rows are the global batch's losses
    for a, b in zip(ranks[0]["log"], one.log):
        assert abs(a["loss_rend"] - b["loss_rend"]) < 1e-5 and abs(a["loss_diff"] - b["loss_diff"]) < 1e-5
    # the decoder's gradient is all-reduced once per outer iteration (the last inner step),
    # never in the code-only inner steps
    assert [r["dec_allreduces"] for r in ranks] == [ITERS, ITERS]
    assert [r["model"] for r in ranks] == [True, False]
    # the two-stage baseline: the same, and the running mean code of stage 1 is global
    two = two_stage(Trainer)
    for r in ranks:
        assert torch.allclose(r["two"]["codes_"], two.bank.codes_[r["shard"]], rtol=0, atol=TOL)
        assert torch.allclose(r["two"]["mean_code"], two.mean_code, rtol=0, atol=TOL)
        for m in ("decoder", "prior"):
            for k, v in getattr(two, m).state_dict().items():
                assert torch.allclose(r["two"][m][k], v, rtol=0, atol=TOL), (m, k)


def fixed_randomness_here(monkeypatch):
    from minissd.nerf import autodecoder, occupancy, render
    from minissd.prior import diffusion
    for mod in (autodecoder, occupancy, render, diffusion):
        for name in ("rand", "randint", "randn_like"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, getattr(mod, name))
    fixed_randomness()


def test_cli_two_ranks_write_model_resume_and_stop_with_one_message(made, tmp_path):
    from minissd.ssd.model import Model
    out = str(tmp_path / "run")
    spawn(cli_worker, made, out, 2, False, 0)
    assert [rc for rc, _ in cli_results(out)] == [0, 0]
    model = Model.load(os.path.join(out, "model.pt"))        # all scenes' codes, gathered
    assert model.codes.shape[0] == 2 and model.names == sorted(model.names) and len(model.log) == 2
    assert sorted(os.listdir(out)) == [".lock", "checkpoint.pt", "config.json", "log.jsonl",
                                       "model.pt"]
    good = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    # resumed to 4 iterations; rank 1 diverges at iteration 3: both ranks stop there, and
    # the run says so once (rank 0), keeping the checkpoint of iteration 2
    spawn(cli_worker, made, out, 4, True, 3)
    (rc0, err0), (rc1, err1) = cli_results(out)
    assert (rc0, rc1) == (1, 1)
    errors = [ln[ln.index("error:"):] for ln in err0 + err1 if "error:" in ln]   # tqdm aside
    assert len(errors) == 1 and errors[0].startswith("error: training diverged at iteration 3")
    assert err1 == []                                       # rank 1 is silent
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == good
