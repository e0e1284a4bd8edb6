"""Mixed precision (cfg.amp) and the automatic thread count (runtime.py)."""
import os

import pytest
import torch

from minissd import runtime
from minissd.config import Config, get_preset
from minissd.nerf.decoder import TriplaneDecoder
from minissd.prior.diffusion import DiffusionPrior
from minissd.ssd.train import Trainer
from tests.test_train import tiny_cfg, tiny_data


def test_amp_modes_resolve_and_refuse_bad_values(monkeypatch):
    assert runtime.amp_dtype("off", "cpu") is None
    assert runtime.amp_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        runtime.amp_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="amp='half'"):
        runtime.amp_dtype("half", "cpu")
    for fast in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast)
        assert runtime.amp_dtype("auto", "cpu") == (torch.bfloat16 if fast else None)


def test_old_configs_and_keys_without_amp_are_unchanged():
    cfg = get_preset("smoke")
    assert cfg.amp == "off" and "amp" not in cfg.to_dict()          # model keys as before
    assert Config.from_dict(cfg.to_dict()).amp == "off"              # old files load as fp32
    assert get_preset("smoke", amp="bf16").to_dict()["amp"] == "bf16"


def test_bf16_runs_the_networks_in_bf16_and_stays_close_to_fp32():
    torch.manual_seed(0)
    cfg = get_preset("smoke")
    dec32 = TriplaneDecoder.from_config(cfg)
    dec16 = TriplaneDecoder.from_config(get_preset("smoke", amp="bf16"))
    dec16.load_state_dict(dec32.state_dict())
    feat, dirs = torch.randn(64, 3 * cfg.code_ch), torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    seen = []
    h = dec16.base.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    (s16, c16), (s32, c32) = dec16(feat, dirs), dec32(feat, dirs)
    h.remove()
    assert seen == [torch.bfloat16] and s16.dtype == c16.dtype == torch.float32
    torch.testing.assert_close(c16, c32, atol=2e-2, rtol=0)
    torch.testing.assert_close(s16, s32, rtol=5e-2, atol=1e-3)
    p32, p16 = DiffusionPrior(cfg), DiffusionPrior(get_preset("smoke", amp="bf16"))
    with torch.no_grad():
        for q in p32.parameters():          # the output layer starts at zero: make it non-trivial
            q.add_(0.05 * torch.randn_like(q))
    p16.load_state_dict(p32.state_dict())
    x, t = torch.randn(2, 3, cfg.code_ch, cfg.code_res, cfg.code_res), torch.tensor([10, 500])
    v32, v16 = p32(x, t), p16(x, t)
    assert v16.dtype == torch.float32
    rel = (v16 - v32).norm() / v32.norm()
    assert 0 < rel < 0.05, rel                   # bf16 really ran (not bit-equal), and is close


def test_bf16_training_steps_track_fp32():
    """A few outer iterations of a tiny model under bf16 stay close to fp32."""
    runs = {}
    for amp in ("off", "bf16"):
        tr = Trainer(tiny_cfg(amp=amp, iters=3), tiny_data())
        init = tr.bank.codes_.clone()
        rows = [tr.outer_step() for _ in range(3)]
        runs[amp] = (tr.bank.codes_.clone(), [r["loss_rend"] for r in rows],
                     [r["loss_diff"] for r in rows])
    codes32, rend32, diff32 = runs["off"]
    codes16, rend16, diff16 = runs["bf16"]
    assert not torch.equal(codes32, codes16)
    # Adam steps are ~lr x sign(g), so a texel whose gradient is ~0 may step either way:
    # compare the codes' movements as a whole
    assert (codes16 - codes32).norm() < 0.3 * (codes32 - init).norm()
    for a, b in zip(rend32 + diff32, rend16 + diff16):
        assert abs(a - b) <= 0.05 * abs(a) + 1e-4, (a, b)


def test_auto_threads_leave_the_busy_cores(monkeypatch):
    """Where /proc/stat and /proc/loadavg's runnable count are missing, the governor's first
    decision is the usable cores minus the 1-minute load average."""
    def first_decision():
        g = runtime.ThreadGovernor(read_busy=lambda: None, read_own=lambda: 0.0,
                                   read_running=lambda: None, apply=lambda n: None)
        return g.start()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for load, want in ((0.0, 2), (0.4, 2), (1.0, 1), (1.6, 1), (7.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert first_decision() == want, load
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert first_decision() == 13


def test_set_threads_parses_its_setting():
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads("1") == 1 == torch.get_num_threads()
        assert runtime.set_threads("torch") == 1                    # left as it is
        for bad in ("0", "many"):
            with pytest.raises(ValueError, match="MINISSD_THREADS"):
                runtime.set_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_importing_minissd_sets_threads_and_brief_spinning():
    """The one place: `import minissd` applies MINISSD_THREADS and, before torch loads,
    GOMP_SPINCOUNT=300000 unless the user chose a wait policy (an explicit one is kept)."""
    import subprocess
    import sys
    code = ("import os, minissd, torch; "
            "print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'), "
            "os.environ.get('GOMP_SPINCOUNT'))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for extra, want in (({"MINISSD_THREADS": "1"}, "1 None 300000"),
                        ({"MINISSD_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}, "2 ACTIVE None")):
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        env.update(extra, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert " ".join(out) == want, out


def test_cli_threads_flag(tmp_path, capsys):
    from minissd.cli import main
    before = torch.get_num_threads()
    missing = ["train", "--preset", "smoke", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]
    try:
        assert main(missing + ["--threads", "zero"]) == 1          # refused before the command runs
        assert "MINISSD_THREADS / --threads 'zero'" in capsys.readouterr().err
        with pytest.raises(SystemExit):                              # the command ran, threads set
            main(missing + ["--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
