"""Nothing silent, nothing overwritten, round two (issue 23): test-time settings validated
at parse time and on load, outputs that record what ran, model and checkpoint files
checked before use, no command writing over its own input, crash-safe dataset swaps,
and one line (not a traceback) for a missing device, out of memory or Ctrl-C."""
from dataclasses import replace
import fcntl
import json
import os
import shutil

import pytest
from test_robustness import TINY, assert_refused, cli, data  # noqa: F401 (data: a fixture)
from test_train import tiny_cfg, tiny_data
import torch

from minissd import overrides
from minissd.commands import make_data
from minissd.config import TestConfig, get_preset, parse_override
from minissd.errors import TrainingDiverged
from minissd.ssd import checkpoint as ckpt
from minissd.ssd.model import Model
from minissd.ssd.train import Trainer

BIG_SEED = "99999999999999999999"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained single-stage model of tiny_cfg (loads in milliseconds)."""
    path = str(tmp_path_factory.mktemp("m2") / "ss.pt")
    return Model.from_trainer(Trainer(tiny_cfg(), tiny_data())).save(path)


@pytest.fixture
def run(made, tmp_path, capsys):
    """A 2-iteration training run of TINY on `made`: (run folder, its argv)."""
    out = str(tmp_path / "run")
    argv = ["train", *TINY, "--data", made, "--out", out, "--iters", "2"]
    rc, err = cli(argv, capsys)
    assert rc == 0, err
    return out, argv


def _messages(err: str) -> list:
    """stderr's lines less argparse's usage and tqdm's progress bars."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip()
            and not line.startswith(("usage:", " "))
            and not any(bar in line for bar in ("it/s", "s/it", "?it"))]    # slow bars: s/it


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------ test-time settings ----
BAD_TEST_SETTINGS = [["--test-set", "lambda_gd=NaN"], ["--test-set", "ft_lr_decay=NaN"],
                     ["--test-set", "lambda_gd=1e309"], ["--test-set", "lambda_gd=-1"],
                     ["--test-set", "ft_inner=0"], ["--test-set", "guide_rays=-7"],
                     ["--test-set", "ft_schedule=[]"], ["--test-set", "ft_schedule=[[1,2]]"],
                     ["--test-set", "ft_schedule=[[1,-2,0.1]]"],
                     ["--test-set", "ft_lr_decay=1.5"], ["--lambda-gd", "nan"],
                     ["--lambda-gd", "-5"], ["--steps", "100000"]]


@pytest.mark.parametrize("bad", BAD_TEST_SETTINGS, ids=lambda b: " ".join(b))
def test_bad_test_time_settings_refused_at_parse_time(bad, made, model_file, tmp_path, capsys):
    out = tmp_path / "r"
    name = bad[1].split("=")[0] if bad[0] == "--test-set" else bad[0]
    assert_refused(["reconstruct", "--ckpt", model_file, "--data", made, "--out", str(out),
                    "--input-views", "0", "--scenes", "1", *bad], capsys,
                   name)
    assert not out.exists()                                  # refused before anything is written
    assert_refused(["evaluate", "--ckpt", model_file, "--data", made, "--json", str(tmp_path / "e.json"),
                    "--input-views", "0", "--scenes", "1", *bad], capsys)
    assert not (tmp_path / "e.json").exists()


def _edit_model(src, dst, edit):
    sd = torch.load(src, weights_only=True)
    edit(sd)
    torch.save(sd, dst)
    return dst


def _set(*keys, value):
    def edit(sd):
        d = sd
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


BAD_MODEL_FILES = {   # case -> (edit, what the message names besides the file)
    "test lambda_gd NaN": (_set("test", "lambda_gd", value=float("nan")), "lambda_gd"),
    "test ft_inner 0": (_set("test", "ft_inner", value=0), "ft_inner"),
    "test recon_steps > T": (_set("test", "recon_steps", value=10**5), "recon_steps"),
    "mode three-stage": (_set("mode", value="three-stage"), "three-stage"),
    "no codes": (lambda sd: sd.pop("codes"), "codes"),
    "zero codes": (lambda sd: sd.__setitem__("codes", sd["codes"][:0]), "codes"),
    "code_ch changed": (_set("config", "code_ch", value=4), "codes"),
    "code_res 0": (_set("config", "code_res", value=0), "code_res"),
    "unknown config key": (_set("config", "code_size", value=3), "code_size"),
    "config value a string": (_set("config", "code_res", value="sixteen"), "code_res"),
    "config not a dict": (_set("config", value="laptop"), "config"),
    "dec_hidden changed": (_set("config", "dec_hidden", value=7), "decoder"),
    "ema_beta 1": (_set("config", "ema_beta", value=1.0), "ema_beta"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL_FILES))
def test_malformed_model_file_refused_naming_it(case, model_file, tmp_path, capsys):
    edit, name = BAD_MODEL_FILES[case]
    bad = _edit_model(model_file, str(tmp_path / "bad.pt"), edit)
    with pytest.raises(ckpt.CheckpointError) as e:
        Model.load(bad)
    assert "bad.pt" in str(e.value) and name in str(e.value), str(e.value)
    assert_refused(["sample", "--ckpt", bad, "--out", str(tmp_path / "s"), "--n", "1"], capsys,
                   "bad.pt", name)
    assert not (tmp_path / "s").exists()


def test_outputs_record_the_settings_used(made, model_file, tmp_path, capsys):
    """--lambda-gd 0 runs unguided and metrics.json says 0 (it said the model's 60)."""
    out = tmp_path / "r"
    rc, err = cli(["reconstruct", "--ckpt", model_file, "--data", made, "--out", str(out), "--scenes", "1",
                   "--steps", "2", "--input-views", "0", "--finetune", "none", "--lambda-gd", "0",
                   "--test-set", "ft_c_diff=2"], capsys)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["lambda_gd"] == 0 and m["test_config"]["lambda_gd"] == 0
    assert m["test_config"]["recon_steps"] == 2 and m["test_config"]["ft_c_diff"] == 2


def test_one_parser_for_set_config_and_test_set(monkeypatch, tmp_path):
    """--set, --config and --test-set all go through overrides.coerce (one parser)."""
    assert parse_override("code-res=16") == ("code_res", 16)
    assert TestConfig().with_overrides(["ft-inner=2", "lambda_gd=1"]).ft_inner == 2
    calls = []
    real = overrides.coerce
    monkeypatch.setattr(overrides, "coerce", lambda *a: calls.append(a[1]) or real(*a))
    parse_override("code_res=16")
    TestConfig().with_overrides(["ft_inner=3"])
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text('{"n_samples": 12}')
    from minissd.config import load_config_file
    load_config_file(str(cfg_file))
    assert calls == ["code_res", "ft_inner", "n_samples"]


# ------------------------------------------------------------------ training config ----
BAD_TRAIN = {   # extra argv -> what the message names
    "k_in_schedule flat": (["--set", "k_in_schedule=[0,4]"], "k_in_schedule"),
    "ema_beta 1": (["--set", "ema_beta=1.0"], "ema_beta"),
    "T below ddim_steps": (["--set", "T=1"], "ddim_steps"),
    "near_min beyond the cameras": (["--set", "near_min=1e6"], "near_min"),
    "seed overflow": (["--seed", BIG_SEED], "--seed"),
    "set seed overflow": (["--set", f"seed={BIG_SEED}"], "seed"),
    "config /dev/zero": (["--config", "/dev/zero"], "/dev/zero"),
    "device cuda:7": (["--device", "cuda:7"], "--device cuda:7"),
    "device gpu0": (["--device", "gpu0"], "--device gpu0"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_bad_training_settings_one_line_and_nothing_written(case, made, tmp_path, capsys):
    extra, name = BAD_TRAIN[case]
    out = tmp_path / "run"
    err = assert_refused(["train", *TINY, "--data", made, "--out", str(out), "--iters", "1", *extra],
                         capsys, name)
    assert len(_messages(err)) == 1, err
    assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()


def test_config_file_size_is_bounded(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"n_samples": 12' + " " * overrides.MAX_CONFIG_BYTES + "}")
    with pytest.raises(ValueError, match="big.json.*larger than"):
        overrides.load_json_overrides(str(big), {"n_samples": "int"})


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "gpu0"])
def test_unavailable_device_names_the_devices_there(device, made, model_file, tmp_path, capsys):
    from minissd.config import available_devices
    if device in available_devices() or (device == "cuda" and "cuda:0" in available_devices()):
        pytest.skip(f"{device} exists here")
    for argv in (["sample", "--ckpt", model_file, "--out", str(tmp_path / "s")],
                 ["reconstruct", "--ckpt", model_file, "--data", made, "--out", str(tmp_path / "r"),
                  "--input-views", "0"]):
        assert_refused([*argv, "--device", device], capsys, f"--device {device}", "cpu")


@pytest.mark.parametrize("command", ["sample", "reconstruct", "evaluate"])
def test_seed_overflow_names_the_flag(command, made, model_file, tmp_path, capsys):
    argv = {"sample": ["--out", str(tmp_path / "s")],
            "reconstruct": ["--data", made, "--out", str(tmp_path / "r")],
            "evaluate": ["--data", made, "--json", str(tmp_path / "e.json")]}[command]
    assert_refused([command, "--ckpt", model_file, *argv, "--seed", BIG_SEED], capsys, "--seed")


def test_steps_beyond_T_and_duplicate_views_refused(made, model_file, tmp_path, capsys):
    T = Model.load(model_file).cfg.T
    assert_refused(["sample", "--ckpt", model_file, "--out", str(tmp_path / "s"), "--steps", str(T + 1)],
                   capsys, "--steps", f"T={T}")
    assert_refused(["reconstruct", "--ckpt", model_file, "--data", made, "--out", str(tmp_path / "r"),
                    "--input-views", "0", "0", "0"], capsys, "--input-views", "more than once")
    assert_refused(["evaluate", "--ckpt", model_file, "--data", made, "--json", str(tmp_path / "e.json"),
                    "--input-views", "64", "64"], capsys, "--input-views")
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("threshold", ["nan", "-5", "0", "inf"])
def test_generation_threshold_must_be_positive(threshold, made, model_file, tmp_path, capsys):
    assert_refused(["evaluate", "--task", "generation", "--ckpt", model_file, "--data", made,
                    "--json", str(tmp_path / "g.json"), "--threshold", threshold], capsys, "--threshold")
    assert not (tmp_path / "g.json").exists()


# ------------------------------------------------------------- inputs not overwritten ----
def test_no_command_writes_over_its_input(made, model_file, run, tmp_path, capsys):
    out, _ = run
    copy = str(tmp_path / "model.pt")
    shutil.copy(model_file, copy)
    before = _bytes(copy)
    assert_refused(["evaluate", "--ckpt", copy, "--data", made, "--json", copy], capsys, "--json", "--ckpt")
    codes = str(tmp_path / "s" / "codes.pt")
    os.makedirs(os.path.dirname(codes))
    shutil.copy(model_file, codes)
    assert_refused(["sample", "--ckpt", codes, "--out", os.path.dirname(codes), "--n", "1"], capsys,
                   "codes.pt", "--ckpt")
    assert _bytes(codes) == before and _bytes(copy) == before
    log = os.path.join(out, "log.jsonl")
    log_before = _bytes(log)
    assert_refused(["plot", out, "--out", log], capsys, "--out")
    assert _bytes(log) == log_before
    assert_refused(["train", *TINY, "--data", made, "--out", made], capsys, "--out", "--data")
    cfg_before = _bytes(os.path.join(out, "config.json"))
    assert_refused(["train", *TINY, "--data", made, "--out", out, "--resume",
                    "--config", os.path.join(out, "config.json")], capsys, "--config")
    assert _bytes(os.path.join(out, "config.json")) == cfg_before


def test_plot_into_an_existing_folder_and_without_extension(run, tmp_path, capsys):
    out, _ = run
    folder = tmp_path / "figs"
    folder.mkdir()
    assert cli(["plot", out, "--out", str(folder)], capsys)[0] == 0
    assert (folder / "curves.png").is_file() and not (tmp_path / "figs.png").exists()
    assert cli(["plot", out, "--out", str(tmp_path / "noext")], capsys)[0] == 0
    assert (tmp_path / "noext.png").is_file()


# -------------------------------------------------------------------- resume state ----
def test_refused_resume_writes_nothing(run, made, capsys):
    out, argv = run
    before = {f: _bytes(os.path.join(out, f)) for f in ("config.json", "checkpoint.pt", "model.pt")}
    assert_refused([*argv, "--resume", "--set", "code_res=8"], capsys, "code_res")
    assert_refused([*argv[:-1], "1", "--resume"], capsys, "iteration 2", "--iters 2")
    assert {f: _bytes(os.path.join(out, f)) for f in before} == before


def test_resume_from_a_byte_identical_copy_of_the_data(run, made, tmp_path, capsys):
    out, argv = run
    other = str(tmp_path / "renamed_copy")
    shutil.copytree(made, other)
    argv = [other if a == made else a for a in argv]
    rc, err = cli([*argv[:-1], "3", "--resume"], capsys)
    assert rc == 0, err
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["iter"] == 3


CKPT_DAMAGE = {   # case -> (edit of checkpoint.pt, what the message names)
    "NaN in ema_decoder": (lambda sd: next(iter(sd["ema_decoder"].values())).fill_(float("nan")),
                           "ema_decoder"),
    "NaN in an Adam moment": (lambda sd: sd["opt_dec"]["state"][0]["exp_avg"].fill_(float("nan")),
                              "opt_dec"),
    "iter a string": (_set("iter", value="thirty"), "thirty"),
    "no bank": (lambda sd: sd.pop("bank"), "bank"),
    "bank of another shape": (lambda sd: sd["bank"].__setitem__("codes_", sd["bank"]["codes_"][:1]),
                              "bank"),
    "config a string": (_set("config", value="smoke"), "config"),
}


@pytest.mark.parametrize("case", sorted(CKPT_DAMAGE))
def test_damaged_checkpoint_refused_on_resume(case, tmp_path):
    edit, name = CKPT_DAMAGE[case]
    out = str(tmp_path / "run")
    Trainer(tiny_cfg(iters=2), tiny_data(), out_dir=out).train(progress=False)
    path = os.path.join(out, "checkpoint.pt")
    _edit_model(path, path, edit)
    tr = Trainer(tiny_cfg(iters=4), tiny_data(), out_dir=out)
    with pytest.raises(ckpt.CheckpointError) as e:
        tr.resume()
    assert "checkpoint.pt" in str(e.value) and name in str(e.value), str(e.value)
    assert tr.it == 0


def test_nonfinite_adam_moment_is_never_checkpointed(tmp_path):
    out = str(tmp_path / "run")
    tr = Trainer(tiny_cfg(iters=6, ckpt_every=2, diff_steps=1), tiny_data(), out_dir=out)
    tr.train(progress=False, stop_after=2)
    good = _bytes(os.path.join(out, "checkpoint.pt"))
    for state in tr.opt_prior.state.values():
        state["exp_avg_sq"].fill_(float("inf"))            # no loss or parameter sees it yet
        break
    tr.opt_prior.step = lambda *a, **k: None               # so it stays in the state
    with pytest.raises(TrainingDiverged, match="non-finite parameters opt_prior"):
        tr.train(progress=False)
    assert _bytes(os.path.join(out, "checkpoint.pt")) == good


@pytest.mark.parametrize("mode,module", [("single-stage", "ema_decoder"), ("two-stage", "prior")])
def test_parameters_checked_every_iteration(mode, module, tmp_path):
    """A NaN the losses cannot see (an EMA copy; the denoiser during stage 1) stops
    training at the next iteration, not at the next checkpoint."""
    out = str(tmp_path / "run")
    tr = Trainer(tiny_cfg(iters=20, ckpt_every=100), tiny_data(), mode=mode, out_dir=out)
    tr.train(progress=False, stop_after=2)
    with torch.no_grad():
        next(getattr(tr, module).parameters()).view(-1)[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=rf"iteration 3 .*non-finite parameters {module}\."):
        tr.train(progress=False)


# -------------------------------------------------------------------- run folder ----
def test_lock_file_symlink_is_refused_and_not_written(made, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("precious")
    os.symlink(victim, out / ".lock")
    assert_refused(["train", *TINY, "--data", made, "--out", str(out), "--iters", "1"], capsys,
                   ".lock", "symbolic link")
    assert victim.read_text() == "precious"


def test_ctrl_c_in_train_says_what_was_kept(made, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    step, calls = Trainer.outer_step, []

    def interrupted_at_4(self):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(self)
    monkeypatch.setattr(Trainer, "outer_step", interrupted_at_4)
    rc, err = cli(["train", *TINY, "--data", made, "--out", out, "--iters", "9"], capsys)
    assert rc == 130 and "Traceback" not in err and len(_messages(err)) == 1, err
    assert "interrupted" in err and "iteration 2" in err and "--resume" in err, err
    assert ckpt.RunLock(out).acquire() is not None                       # lock released


def test_ctrl_c_in_make_data_keeps_the_old_data(data, capsys, monkeypatch):
    before = sorted(os.listdir(data))

    def interrupted(d, *a, **k):
        os.makedirs(os.path.join(d, "half"))
        raise KeyboardInterrupt
    monkeypatch.setattr(make_data.procedural, "generate", interrupted)
    rc, err = cli(["make-data", "--scenes", "1", "--views", "2", "--resolution", "8", "--out", data,
                   "--overwrite"], capsys)
    assert rc == 130 and "interrupted" in err and "as it was" in err and "Traceback" not in err, err
    assert sorted(os.listdir(data)) == before
    assert not [f for f in os.listdir(os.path.dirname(data)) if ".tmp-" in f or ".old-" in f]


@pytest.mark.parametrize("error", [RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried "
                                                "to allocate 4398046511104 bytes"), MemoryError()])
def test_out_of_memory_is_one_line(error, made, tmp_path, capsys, monkeypatch):
    def oom(*a, **k):
        raise error
    monkeypatch.setattr("minissd.commands.train.train_run", oom)
    err = assert_refused(["train", *TINY, "--data", made, "--out", str(tmp_path / "r"), "--set",
                          "rays_per_scene=1048576"], capsys, "out of memory", "rays_per_scene")
    assert len(_messages(err)) == 1, err


# ----------------------------------------------------------------- make-data swap ----
def _dataset(path, marker):
    os.makedirs(os.path.join(path, "cars_0000"))
    open(os.path.join(path, marker), "w").close()


@pytest.mark.parametrize("killed", ["between the renames", "before the first rename"])
def test_make_data_recovers_a_killed_swap(killed, tmp_path):
    out = str(tmp_path / "mk")
    _dataset(out + ".old-aaaa1111", "old")
    if killed == "between the renames":
        _dataset(out + ".tmp-aaaa1111", "new")            # whole: old-TAG exists only then
    else:
        os.rename(out + ".old-aaaa1111", out)             # the swap had not started
        _dataset(out + ".tmp-aaaa1111", "half")
    _dataset(out + ".tmp-bbbb2222", "half")               # an earlier killed write
    _dataset(out + ".old-cccc3333", "stale")              # a finished swap's leftover
    os.utime(out + ".old-cccc3333", (0, 0))
    make_data.recover(out)
    want = {"between the renames": "new", "before the first rename": "old"}[killed]
    assert os.path.exists(os.path.join(out, want))
    assert sorted(os.listdir(tmp_path)) == ["mk"]


def test_make_data_leaves_a_live_write_alone(tmp_path):
    out = str(tmp_path / "mk")
    _dataset(out, "old")
    live = out + ".tmp-dddd4444"
    os.makedirs(live)
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        make_data.recover(out)
        assert os.path.isdir(live)
    finally:
        os.close(fd)
    make_data.recover(out)
    assert not os.path.exists(live)


def test_make_data_failed_second_rename_rolls_back(tmp_path, monkeypatch):
    out = str(tmp_path / "mk")
    _dataset(out, "old")
    real, calls = os.rename, []

    def rename(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(a, b)
    monkeypatch.setattr(make_data.os, "rename", rename)
    with pytest.raises(OSError):
        make_data.write_replacing(out, lambda d: _dataset(d + "/x", "new"))
    monkeypatch.setattr(make_data.os, "rename", real)
    assert os.path.exists(os.path.join(out, "old"))
    assert sorted(os.listdir(tmp_path)) == ["mk"]


def test_make_data_symlink_and_empty_out(tmp_path, capsys):
    target = tmp_path / "real"
    _dataset(str(target), "old")
    link = tmp_path / "link"
    os.symlink(target, link)
    rc, err = cli(["make-data", "--scenes", "1", "--views", "2", "--resolution", "8", "--out", str(link),
                   "--overwrite"], capsys)
    assert rc == 0, err
    assert os.path.islink(link) and os.path.realpath(link) == str(target)
    assert sorted(os.listdir(target)) == ["cars_0000", "dataset.json"]
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]
    assert_refused(["make-data", "--scenes", "1", "--out", ""], capsys, "--out", "empty")


def test_ema_beta_just_below_one_is_accepted():
    assert get_preset("smoke", ema_beta=0.9999).ema_beta == 0.9999
    assert replace(TestConfig(), lambda_gd=0.0).validate().lambda_gd == 0
