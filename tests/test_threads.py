"""The thread governor (runtime.ThreadGovernor): torch's threads follow the CPU other
processes leave free: first from the tasks runnable at import (/proc/loadavg), then
measured from /proc/stat during the run. Fed fake readings."""
import os

import pytest
import torch

from minissd import runtime

GOVERNOR = runtime.ThreadGovernor           # (some tests replace runtime's name)


class Machine:
    """A fake clock, /proc/stat busy seconds, own CPU seconds, other tasks runnable now
    (/proc/loadavg) and thread setting."""

    def __init__(self, load=(0.0, 0.0, 0.0), proc_stat=True, proc_loadavg=True):
        self.t, self.busy, self.own, self.load, self.running = 100.0, 5000.0, 3.0, load, 0.0
        self.proc_stat, self.proc_loadavg = proc_stat, proc_loadavg
        self.threads, self.applied = 7, []

    def run(self, seconds, others, own):
        """`seconds` pass with other processes on `others` cores and this one on `own`."""
        self.t += seconds
        self.busy += (others + own) * seconds
        self.own += own * seconds

    def set_threads(self, n):
        self.threads = n
        self.applied.append(n)

    def governor(self, cores=2, **kw):
        return GOVERNOR(
            cores=cores, read_busy=lambda: self.busy if self.proc_stat else None,
            read_own=lambda: self.own, clock=lambda: self.t, loadavg=lambda: self.load,
            read_running=lambda: self.running if self.proc_loadavg else None,
            apply=self.set_threads, current=lambda: self.threads, **kw)


def started(m, others_at_start=0.0, **kw):
    """A governor's first decision with `others_at_start` other tasks runnable."""
    m.running = others_at_start
    g = m.governor(**kw)
    t0 = m.t
    g.start()
    assert m.t == t0                                # no waiting: the import stays fast
    return g


def test_idle_machine_gets_every_core_even_if_the_load_average_lags():
    m = Machine(load=(1.9, 1.5, 1.0))            # the previous job still in the 1-minute load
    assert started(m).threads == 2 == m.threads
    assert started(Machine(), cores=16).threads == 16


def test_a_competitor_at_start_takes_its_cores():
    m = Machine()
    assert started(m, others_at_start=1.0).threads == 1 == m.threads
    assert started(Machine(), others_at_start=3.0, cores=16).threads == 13
    assert started(Machine(), others_at_start=5.0).threads == 1      # never below 1


def test_a_competitor_that_starts_later_is_followed_and_its_end_too():
    m = Machine()
    g = started(m)
    assert m.threads == 2
    m.run(2.5, others=0.0, own=1.9)
    assert g.tick() == 2 and m.applied == [2]                     # idle: unchanged
    m.run(3.0, others=0.7, own=1.3)     # shares the 2 cores with our 2 threads
    assert g.tick() == 1 == m.threads
    m.run(3.0, others=1.0, own=1.0)
    assert g.tick() == 1 and m.applied == [2, 1]
    m.run(3.0, others=0.0, own=1.0)     # the competitor ended
    assert g.tick() == 2 == m.threads


def test_tick_is_cheap_between_decisions():
    m = Machine()
    g = started(m, every=2.0)
    reads = []
    g.read_busy = lambda: reads.append(1) or m.busy
    m.run(1.5, others=1.0, own=1.0)
    assert g.tick() == 2 and reads == []                           # too soon: nothing read
    m.run(1.0, others=1.0, own=1.0)
    assert g.tick() == 1 and len(reads) == 1


def test_hysteresis_keeps_the_count_near_the_boundary():
    m = Machine()
    g = started(m)
    for others in (0.52, 0.45, 0.53, 0.5, 0.51):          # 2 cores - others rounds to 1 or 2
        m.run(3.0, others=others, own=1.4)
        assert g.tick() == 2, others
    m.run(3.0, others=0.65, own=1.3)
    assert g.tick() == 1
    for others in (0.48, 0.55, 0.47):
        m.run(3.0, others=others, own=1.0)
        assert g.tick() == 1, others
    m.run(3.0, others=0.3, own=1.0)
    assert g.tick() == 2
    assert m.applied == [2, 1, 2]


def test_the_first_tick_replaces_the_instant_guess_by_the_measure():
    m = Machine()
    g = started(m, others_at_start=1.0)             # e.g. a short-lived task at import
    assert m.threads == 1
    m.run(1.0, others=0.0, own=0.9)
    assert g.tick() == 1                            # before `every`: still the guess
    m.run(1.5, others=0.0, own=0.9)                 # /proc/stat since import: idle
    assert g.tick() == 2 == m.threads and m.applied == [1, 2]
    m = Machine()
    g = started(m, others_at_start=0.0)             # a competitor not runnable at that instant
    m.run(2.5, others=1.0, own=1.0)
    assert g.tick() == 1 and m.applied == [2, 1]


def test_without_proc_stat_the_load_average_minus_our_own_use():
    m = Machine(load=(1.0, 1.0, 1.0), proc_stat=False, proc_loadavg=False)
    g = started(m)
    assert g.threads == 1 == runtime.threads_for(2, 1.0)       # the import-time load rule
    m.run(3.0, others=0.0, own=1.0)     # the load of 1.0 is this process itself
    assert g.tick() == 2
    m.load = (3.0, 3.0, 3.0)
    m.run(3.0, others=1.0, own=2.0)
    assert g.tick() == 1


def test_someone_else_setting_the_threads_stops_the_governor():
    m = Machine()
    g = started(m)
    m.threads = 1                                   # e.g. torch.set_num_threads in a notebook
    m.run(3.0, others=0.0, own=1.0)
    assert g.tick() == 1
    m.run(3.0, others=0.0, own=1.0)
    assert g.tick() == 1 and m.applied == [2]


def test_explicit_threads_are_never_changed(monkeypatch):
    """After "auto", an explicit number or "torch" (MINISSD_THREADS, --threads) ends the
    governor: tick() then changes nothing, whatever the machine does."""
    before = torch.get_num_threads()
    try:
        for spec, want in (("1", 1), ("torch", 1), ("2", 2)):
            m = Machine()
            monkeypatch.setattr(runtime, "ThreadGovernor", lambda: m.governor())
            runtime.set_threads("auto")
            assert m.applied == [2]
            assert runtime.set_threads(spec) == want == torch.get_num_threads()
            m.threads = want
            for others in (1.0, 0.0, 1.5):
                m.run(3.0, others=others, own=1.0)
                assert runtime.tick() == want
            assert m.applied == [2], spec
    finally:
        runtime._governor = None
        torch.set_num_threads(before)


def test_set_threads_auto_starts_a_governor_that_tick_drives(monkeypatch):
    before = torch.get_num_threads()
    m = Machine()
    monkeypatch.setattr(runtime, "ThreadGovernor", lambda: m.governor())
    try:
        assert runtime.set_threads("auto") == torch.get_num_threads()
        assert m.applied == [2]
        m.run(3.0, others=1.0, own=1.0)
        assert runtime.tick() == 1 == m.threads
    finally:
        runtime._governor = None
        torch.set_num_threads(before)


def test_read_busy_seconds_counts_only_our_cpus(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 30 900 9 0 0 0 0 0\n"
                    "cpu0 10 1 10 300 3 1 1 1 0 0\n"          # busy 10+1+10+1+1+1 = 24
                    "cpu1 20 2 20 300 3 2 2 2 5 0\n"          # 48 (guest is already in user)
                    "cpu2 99 9 99 300 3 9 9 9 0 0\n"
                    "intr 1 2 3\n")
    hz = os.sysconf("SC_CLK_TCK")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert runtime.read_busy_seconds(str(stat)) == pytest.approx(72 / hz)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7}, raising=False)
    assert runtime.read_busy_seconds(str(stat)) is None
    assert runtime.read_busy_seconds(str(tmp_path / "missing")) is None


def test_read_running_others_counts_runnable_tasks_but_ours(tmp_path, monkeypatch):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.90 1.50 1.00 3/93 12345\n")   # 3 runnable: this process + 2 others
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert runtime.read_running_others(str(loadavg)) == 2.0
    monkeypatch.setattr(os, "cpu_count", lambda: 8)     # others spread over 8 cores, 2 ours
    assert runtime.read_running_others(str(loadavg)) == 0.5
    loadavg.write_text("0.00 0.00 0.00 1/93 12345\n")   # only this process
    assert runtime.read_running_others(str(loadavg)) == 0.0
    loadavg.write_text("0.00 0.00\n")
    assert runtime.read_running_others(str(loadavg)) is None
    assert runtime.read_running_others(str(tmp_path / "missing")) is None


def test_the_long_loops_call_tick(monkeypatch):
    from minissd.prior import sampling
    from minissd.prior.diffusion import NoiseSchedule
    from minissd.ssd import resume
    from minissd.ssd.train import Trainer
    from tests.test_train import tiny_cfg, tiny_data
    calls = []
    for mod in (resume, sampling):
        monkeypatch.setattr(mod, "tick", lambda: calls.append(1))
    Trainer(tiny_cfg(iters=2), tiny_data()).train(progress=False)
    assert len(calls) == 2
    sched = NoiseSchedule(T=100)
    sampling.ddim_sample(lambda x, t: torch.zeros_like(x), torch.randn(1, 4), sched, steps=5)
    assert len(calls) == 7
