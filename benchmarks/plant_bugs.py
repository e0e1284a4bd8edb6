"""Planted-bug (mutation) check of the unit tests of the paper's one-step functions.

    OMP_NUM_THREADS=1 python benchmarks/plant_bugs.py [--only R1 G1 ...] [--exclude-new]
                                                      [--json plants.json]

Each plant is a small, plausible wrong version of one formula (a sign, a missing factor
such as 1/N_v or sigma^2/alpha, alpha and sigma swapped, an inclusive instead of an
exclusive transmittance, an off-by-one in a schedule, an EMA rate misused, ...), written
as exact string replacements in one file of the package. For every plant the script
applies it to this checkout, runs the fast unit tests of that file's area (`AREA_TESTS`:
NeRF, prior, training or test time, plus every known-answer test file (test_known_answers_*); `pytest -x -q`),
records whether a test failed (caught) or all passed (missed) and which test failed
first, and restores the file with `git checkout -- FILE`. Two columns: `before` = the
area's existing tests, `after` = those plus the known-answer files test_known_answers_* (run only when
the existing tests miss the plant). It prints one row per plant and both catch rates. A
test that still passes with a plant in place does not pin the formula.

It rewrites files of the package while it runs, so it refuses to start when minissd/ has
uncommitted changes, and it always restores them (also on Ctrl-C or SIGTERM). Not run by
CI: it took about 70 minutes for all plants on 2 CPU cores under load (each plant re-runs
its area's tests, in a child forked from this process so torch is imported once; results
and timing in docs/planted_bugs.md). `--exclude-new` leaves out
the known-answer files (test_known_answers_*).
Datasets go to a private cache (MINISSD_CACHE in a temporary folder), so a planted bug
never reaches ~/.cache/minissd.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW_TESTS = "tests/test_known_answers_*.py"

R, O, T, D = "minissd/nerf/render.py", "minissd/nerf/occupancy.py", "minissd/nerf/triplane.py", \
    "minissd/nerf/decoder.py"
P, S, E = "minissd/prior/diffusion.py", "minissd/prior/sampling.py", "minissd/prior/ema.py"
TR, A, CFG = "minissd/ssd/train.py", "minissd/nerf/autodecoder.py", "minissd/config.py"
G, F = "minissd/testtime/guidance.py", "minissd/testtime/finetune.py"

# the unit tests of each file's area (every known-answer test file, test_known_answers_*, is added to all)
_NERF = ["tests/test_render.py", "tests/test_triplane.py", "tests/test_decoder.py",
         "tests/test_autodecoder.py"]
_PRIOR = ["tests/test_diffusion.py", "tests/test_sampling.py"]
_TRAIN = ["tests/test_train.py", "tests/test_autodecoder.py"]
_TEST_TIME = ["tests/test_guidance.py", "tests/test_generate.py"]
AREA_TESTS = {R: _NERF, O: _NERF, T: _NERF, D: _NERF,
              P: _PRIOR + _TRAIN + _TEST_TIME, S: _PRIOR + _TEST_TIME, E: _PRIOR + _TRAIN,
              TR: _TRAIN, CFG: _TRAIN, A: _TRAIN + _TEST_TIME, G: _TEST_TIME, F: _TEST_TIME}

# (id, file, description, [(old, new), ...]): each old string must occur exactly once
PLANTS = [
    # --- renderer (eq. 1's volume rendering)
    ("R1", R, "inclusive transmittance: T_i = exp(-sum_{j<=i} sigma_j delta_j)",
     [("T = torch.exp(-excl)", "T = torch.exp(-cum)")]),
    ("R2", R, "alpha linearised: alpha = min(sigma delta, 1) instead of 1 - exp(-sigma delta)",
     [("alpha = 1.0 - torch.exp(-tau)", "alpha = tau.clamp(max=1.0)")]),
    ("R3", R, "no early termination (samples behind T < 1e-4 still weighted)",
     [("weights = T * alpha * (T >= stop_eps)", "weights = T * alpha")]),
    ("R4", R, "segment transmittance T0 not carried into T_end",
     [("T, T_end = T * T0[..., None], T_end * T0", "T, T_end = T * T0[..., None], T_end")]),
    ("R5", R, "white background term missing",
     [('"rgb": rgb + background * (1.0 - acc)[..., None]', '"rgb": rgb')]),
    ("R6", R, "background argument ignored (always white)",
     [("rgb + background * (1.0 - acc)[..., None]", "rgb + (1.0 - acc)[..., None]")]),
    ("R7", R, "bin width (far - near) / (S - 1) (linspace thinking)",
     [("width = (far - near)[..., None] / S", "width = (far - near)[..., None] / (S - 1)")]),
    ("R8", R, "samples at bin left edges instead of centres",
     [("u = torch.full(near.shape + (S,), 0.5", "u = torch.full(near.shape + (S,), 0.0")]),
    ("R9", R, "depth normalised by acc",
     [('"depth": (weights * t).sum(dim=-1),',
       '"depth": (weights * t).sum(dim=-1) / weights.sum(dim=-1).clamp_min(1e-10),')]),
    ("R10", R, "padded slots of the gathered batch not zeroed (masked samples get density)",
     [("sig = torch.where(valid, sig, torch.zeros_like(sig))", "sig = sig")]),
    # --- occupancy grids
    ("O1", O, "threshold clamp(min=) instead of clamp(max=) (never below cfg.occ_threshold)",
     [("clamp(max=threshold)", "clamp(min=threshold)")]),
    ("O2", O, "no dilation of the occupied cells",
     [("return cls(dilate(dens > thr, dilation), bound)", "return cls(dens > thr, bound)")]),
    ("O3", O, "fixed threshold (no mean-density rule for young fields)",
     [("thr = dens.mean(dim=(1, 2, 3), keepdim=True).clamp(max=threshold)", "thr = threshold")]),
    ("O4", O, "query index order z-major instead of [ix, iy, iz]",
     [("lin = (ijk[..., 0] * G + ijk[..., 1]) * G + ijk[..., 2]",
       "lin = (ijk[..., 2] * G + ijk[..., 1]) * G + ijk[..., 0]")]),
    ("O5", O, "cell index scaled by res - 1",
     [("/ (2 * bound) * res).floor()", "/ (2 * bound) * (res - 1)).floor()")]),
    ("O6", O, "cell 'centre' point at the cell corner",
     [("torch.full_like(u[:, :1], 0.5)", "torch.full_like(u[:, :1], 0.0)")]),
    ("O7", O, "mean instead of max density over a cell's points",
     [(".amax(-1).reshape(n_scenes, res, res, res)", ".mean(-1).reshape(n_scenes, res, res, res)")]),
    # --- triplane, code bank, decoder
    ("T1", T, "xz plane reads (z, x)",
     [("AXES = ((0, 1), (0, 2), (1, 2))", "AXES = ((0, 1), (2, 0), (1, 2))")]),
    ("T2", T, "Adam eps inside the square root",
     [("((v / bc2).sqrt() + self.eps)", "((v / bc2) + self.eps).sqrt()")]),
    ("T3", T, "per-scene Adam step count never stored (bias correction stuck at k = 1)",
     [("self.exp_avg[idx], self.exp_avg_sq[idx], self.step[idx] = m, v, k",
       "self.exp_avg[idx], self.exp_avg_sq[idx] = m, v")]),
    ("D1", D, "sigmoid saturation stretched by (1 + s) instead of (1 + 2 s)",
     [("rgb = rgb * (1 + 2 * self.saturation) - self.saturation",
       "rgb = rgb * (1 + self.saturation) - self.saturation")]),
    ("D2", D, "view-direction features added after the SiLU",
     [("g = F.silu(h + self.dir_net(sh_basis(dirs.to(h.dtype))))",
       "g = F.silu(h) + self.dir_net(sh_basis(dirs.to(h.dtype)))")]),
    # --- diffusion prior (eq. 2-3) and lambda_diff
    ("P1", P, "lambda_diff statistic mean(x0)^2 instead of mean(x0^2)",
     [("x0.detach().float().pow(2).mean()", "x0.detach().float().mean().pow(2)")]),
    ("P2", P, "x0 EMA momentum swapped (m <-> 1 - m)",
     [("self.x0_sq_ema.mul_(1 - m).add_(m * ", "self.x0_sq_ema.mul_(m).add_((1 - m) * ")]),
    ("P3", P, "w(t) exponent omega instead of 2 omega",
     [("return (alpha / sigma) ** (2 * omega)", "return (alpha / sigma) ** omega")]),
    ("P4", P, "linear betas not rescaled for T != 1000",
     [("scale = 1000.0 / T", "scale = 1.0")]),
    ("P5", P, "cosine schedule f(u) = cos(...) without the square",
     [("* math.pi / 2) ** 2", "* math.pi / 2)")]),
    ("P6", P, "lambda_diff = c * EMA instead of c / EMA",
     [("return float(c) / max(float(self.x0_sq_ema), 1e-12)",
       "return float(c) * max(float(self.x0_sq_ema), 1e-12)")]),
    ("P7", P, "prior gradient ignores `scale` (no 1/B in training)",
     [("(prior.lambda_diff(c) * scale * loss.sum()).backward()",
       "(prior.lambda_diff(c) * loss.sum()).backward()")]),
    ("P8", P, "denoise does not clip x0",
     [("return clip_x0(x0_from_v(x_t, self(x_t, t), alpha, sigma), self.clip)",
       "return x0_from_v(x_t, self(x_t, t), alpha, sigma)")]),
    ("P9", P, "v read as x0 with alpha and sigma swapped",
     [('"""x0 = alpha * x_t - sigma * v."""\n    return per_sample(alpha, x_t) * x_t - per_sample(sigma, x_t) * v',
       '"""x0 = alpha * x_t - sigma * v."""\n    return per_sample(sigma, x_t) * x_t - per_sample(alpha, x_t) * v')]),
    # --- DDIM sampler
    ("S1", S, "DDIM spacing i (T - 1) / S instead of i T / S",
     [("torch.floor(T - 1 - i * T / steps)", "torch.floor(T - 1 - i * (T - 1) / steps)")]),
    ("S2", S, "eta noise term uses (alpha_s / alpha_t)^2 (c = 0: eta ignored)",
     [("(1 - (a_t / a_s) ** 2)", "(1 - (a_s / a_t) ** 2)")]),
    ("S3", S, "last DDIM step lands on t = 0 instead of the clean end",
     [("s = ts[i + 1] if i + 1 < len(ts) else -1", "s = ts[i + 1] if i + 1 < len(ts) else 0")]),
    ("S4", S, "noise drawn at the final step too",
     [("if eta > 0 and s >= 0:", "if eta > 0:")]),
    ("S5", S, "eps_hat from alpha_s, sigma_s instead of alpha_t, sigma_t",
     [("eps = eps_from_x0(x_t, x0_hat, a_t, s_t)", "eps = eps_from_x0(x_t, x0_hat, a_s, s_s)")]),
    # --- EMA of weights
    ("E1", E, "EMA lerp weight beta instead of 1 - beta",
     [("lerp_(param.detach().to(ema_p[name].dtype), 1.0 - beta)",
       "lerp_(param.detach().to(ema_p[name].dtype), beta)")]),
    ("E2", E, "EMA half-life ln beta / ln 0.5 (inverted)",
     [("min(math.log(0.5) / math.log(beta), rampup * max(it, 0))",
       "min(math.log(beta) / math.log(0.5), rampup * max(it, 0))")]),
    ("E3", E, "ramp-up rate 0.5^h instead of 0.5^(1/h)",
     [("return 0.5 ** (1.0 / half_life) if half_life > 0 else 0.0",
       "return 0.5 ** half_life if half_life > 0 else 0.0")]),
    # --- training steps (Algorithm 1)
    ("TR1", TR, "decoder stepped on every inner step",
     [("loss_rend = self.rendering_step(idx, g_diff, step_decoder=(k == k_in - 1))",
       "loss_rend = self.rendering_step(idx, g_diff, step_decoder=True)")]),
    ("TR2", TR, "cached prior gradient not added to the code step (line 9)",
     [("prior_grad=prior_grad, occupancy=self.occupancy", "prior_grad=None, occupancy=self.occupancy")]),
    ("TR3", TR, "diffusion gradient not averaged over the batch (scale 1 instead of 1/B)",
     [("noise=noise, scale=1.0 / len(idx), code_grad=code_grad)",
       "noise=noise, scale=1.0, code_grad=code_grad)")]),
    ("TR4", TR, "lambda_diff read after the batch updated the x0 EMA",
     [("        code_ = self.bank.get(idx)                                          # (B, 3, C, R, R)\n",
       "        code_ = self.bank.get(idx)                                          # (B, 3, C, R, R)\n"
       "        self.prior.update_x0_ema(code_activation(code_.detach()))\n"),
      ("            self.opt_prior.step()                                           # line 5\n"
       "        self.prior.update_x0_ema(code_activation(code_.detach()))\n",
       "            self.opt_prior.step()                                           # line 5\n")]),
    ("TR5", TR, "warm-up factor it / warmup (lr 0 at the first iteration)",
     [("return min(1.0, (it + 1) / max(1, warmup))", "return min(1.0, it / max(1, warmup))")]),
    ("TR6", CFG, "K_in schedule switches one iteration late (it > start)",
     [("            if it >= start:\n                k = value", "            if it > start:\n                k = value")]),
    ("TR7", A, "rendering loss mean over RGB instead of sum",
     [("loss = lambda_rend(c, n_views) * 0.5 * sq.sum(-1).mean(-1)",
       "loss = lambda_rend(c, n_views) * 0.5 * sq.mean(-1).mean(-1)")]),
    ("TR8", A, "rendering backward ignores `scale` (no 1/B)",
     [("(loss.sum() * scale).backward()", "loss.sum().backward()")]),
    ("TR9", A, "prior gradient subtracted in line 9",
     [("code_.grad if prior_grad is None else code_.grad + prior_grad",
       "code_.grad if prior_grad is None else code_.grad - prior_grad")]),
    # --- guidance (eq. 5-6)
    ("G1", G, "missing 1/N_v on the guidance rendering weight",
     [("self.lam = lambda_rend(c_rend, n_views) / n_views", "self.lam = lambda_rend(c_rend, n_views)")]),
    ("G2", G, "guidance scale sigma / alpha instead of sigma^2 / alpha",
     [("return sigma ** 2 / alpha * (alpha / sigma) ** (2 * omega)",
       "return sigma / alpha * (alpha / sigma) ** (2 * omega)")]),
    ("G3", G, "guidance gradient w.r.t. x0_hat, not through the denoiser",
     [("x0_hat = self.denoise(x_in, t)  ", "x0_hat = self.denoise(x_in, t).detach().requires_grad_(True)  "),
      ("g, = torch.autograd.grad(loss.sum(), x_in)", "g, = torch.autograd.grad(loss.sum(), x0_hat)")]),
    ("G4", G, "guidance step with the wrong sign",
     [("x0 = x0_hat.detach() - k * g", "x0 = x0_hat.detach() + k * g")]),
    ("G5", G, "ray subset not rescaled to the full sum",
     [("scale = (n_total or origins.shape[1]) / origins.shape[1]", "scale = 1.0")]),
    ("G6", G, "guidance loss without the 1/2",
     [("return lam * scale * 0.5 * (out[", "return lam * scale * (out[")]),
    ("G7", G, "guidance loss mean over pixels instead of sum",
     [('(out["rgb"] - target).pow(2).sum(dim=(1, 2))', '(out["rgb"] - target).pow(2).mean(dim=(1, 2))')]),
    ("G8", G, "guided x0 not clipped",
     [("return clip_x0(x0, self.clip), loss.detach()", "return x0, loss.detach()")]),
    # --- finetuning (eq. 7)
    ("F1", F, "lr decays per outer iteration instead of per step",
     [("lr * tcfg.ft_lr_decay ** step", "lr * tcfg.ft_lr_decay ** (step // inner)")]),
    ("F2", F, "no lr decay",
     [("lr * tcfg.ft_lr_decay ** step", "lr")]),
    ("F3", F, "prior gradient recomputed on every inner step (not cached)",
     [("        g_diff, l_diff = (prior_gradient(prior, bank.get(idx), tcfg.ft_c_diff, generator=generator)\n"
       "                          if mode == \"rend+diff\" else (None, float(\"nan\")))\n"
       "        for _ in range(inner):\n",
       "        for _ in range(inner):\n"
       "            g_diff, l_diff = (prior_gradient(prior, bank.get(idx), tcfg.ft_c_diff, generator=generator)\n"
       "                              if mode == \"rend+diff\" else (None, float(\"nan\")))\n")]),
    ("F4", F, "training c_diff instead of the test-time c'_diff",
     [("tcfg.ft_c_diff, generator=generator", "cfg.c_diff, generator=generator")]),
    ("F5", F, "test-time c_rend not passed (training c_rend used)",
     [("generator=generator, c_rend=tcfg.ft_c_rend)", "generator=generator)")]),
]


def git(*args, check=True):
    return subprocess.run(["git", *args], cwd=ROOT, check=check, capture_output=True, text=True)


def run_tests(files, cache, timeout):
    """pytest -x -q FILES in a forked child (torch is imported once, in this process; the
    child imports minissd afresh, planted). Returns ('caught'|'missed'|..., first failure)."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    pid = os.fork()
    if pid == 0:                                                        # the child
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            os.environ.update(OMP_NUM_THREADS="1", MINISSD_CACHE=cache)
            os.chdir(ROOT)
            sys.path.insert(0, ROOT)
            signal.alarm(timeout)
            import pytest
            rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *files])
        except BaseException:                                           # noqa: BLE001
            rc = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(int(rc))
    _, status = os.waitpid(pid, 0)
    with open(log.name) as f:
        out = f.read()
    os.unlink(log.name)
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    first = m.group(1) if m else ""
    if os.WIFSIGNALED(status):
        return ("timeout" if os.WTERMSIG(status) == signal.SIGALRM else "killed"), first
    return {0: "missed", 1: "caught"}.get(os.WEXITSTATUS(status),
                                          f"error rc={os.WEXITSTATUS(status)}"), first


def apply(path, edits):
    full = os.path.join(ROOT, path)
    with open(full) as f:
        text = f.read()
    for old, new in edits:
        n = text.count(old)
        if n != 1:
            raise ValueError(f"{path}: plant text found {n} times: {old[:60]!r}")
        text = text.replace(old, new)
    with open(full, "w") as f:
        f.write(text)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")       # so that `finally` restores the file


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", help="plant ids to run (default: all)")
    ap.add_argument("--exclude-new", action="store_true", help=f"leave out {NEW_TESTS}")
    ap.add_argument("--list", action="store_true", help="print the plants and exit")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    args = ap.parse_args(argv)
    plants = [p for p in PLANTS if not args.only or p[0] in args.only]
    if args.list:
        for pid, path, desc, _ in plants:
            print(f"{pid:5s} {path:32s} {desc}")
        return 0
    if git("status", "--porcelain", "--", "minissd").stdout.strip():
        sys.exit("plant_bugs.py: minissd/ has uncommitted changes; commit or stash them first")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _terminate)
    import torch  # noqa: F401  (imported once here; every forked test run shares it)
    new = [] if args.exclude_new else sorted(
        os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, NEW_TESTS)))
    areas = {path for _, path, _, _ in plants}
    everything = sorted({f for a in areas for f in AREA_TESTS[a]}) + new
    cache = tempfile.mkdtemp(prefix="minissd-plants-")
    print(f"new tests: {' '.join(new) or 'none'}", flush=True)
    status, first = run_tests(everything, cache, args.timeout)    # also fills the private cache
    if status != "missed":
        sys.exit(f"plant_bugs.py: the tests fail without any plant ({status} {first}); fix that first")
    rows = []
    print(f"{'id':5s} {'before':8s} {'after':8s} file / plant [first failing test]", flush=True)
    for pid, path, desc, edits in plants:
        t0 = time.time()
        after, first_new = "", ""
        try:
            apply(path, edits)
            before, first = run_tests(list(dict.fromkeys(AREA_TESTS[path])), cache, args.timeout)
            if new and before != "caught":          # the new tests only matter for a miss
                after, first_new = run_tests(new, cache, args.timeout)
        except ValueError as e:
            before, first = "bad plant", str(e)
        finally:
            git("checkout", "--", path)
        after = after or before
        rows.append({"id": pid, "file": path, "plant": desc, "before": before, "after": after,
                     "caught_by": first_new or first, "seconds": round(time.time() - t0, 1)})
        print(f"{pid:5s} {before:8s} {after:8s} {path} / {desc} [{first_new or first}]", flush=True)
    if git("status", "--porcelain", "--", "minissd").stdout.strip():
        sys.exit("plant_bugs.py: minissd/ is not clean after restoring: check `git diff minissd`")
    for key, label in (("before", "existing tests"), ("after", "with " + (NEW_TESTS if new else "-"))):
        caught = sum(r[key] == "caught" for r in rows)
        print(f"{label}: caught {caught} of {len(rows)} plants ({100 * caught / max(1, len(rows)):.0f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"area_tests": AREA_TESTS, "new_tests": new, "plants": rows}, f, indent=1)
    return 0 if all(r["after"] == "caught" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
