"""Nothing lost, nothing silent (issue 12): a zoo of damaged SRN folders and bad
arguments, each refused with one line naming the file or argument; divergence stops
training without touching the last good checkpoint; one trainer per run folder;
checkpoint integrity; config overrides; the log every few iterations."""
from dataclasses import replace
import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys

from PIL import Image
import pytest
from test_train import tiny_cfg, tiny_data
import torch

from minissd.cli import COMMANDS, command_parser, main
from minissd.config import get_preset
from minissd.data.srn import SRNDataset
from minissd.errors import RunLocked, TrainingDiverged
from minissd.ssd import checkpoint as ckpt
from minissd.ssd.model import Model
from minissd.ssd.logs import read_log, write_log
from minissd.ssd.resume import same_data
from minissd.ssd.train import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a train command small enough to run in about a second
TINY = ["--preset", "smoke", "--set", "image_res=16", "--set", "rays_per_scene=32",
        "--set", "n_samples=8", "--set", "scenes_per_batch=2", "--set", "ckpt_every=2"]


@pytest.fixture
def data(made, tmp_path):
    dst = str(tmp_path / "data")
    shutil.copytree(made, dst)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Untrained single-stage and two-stage model files (load in milliseconds)."""
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, mode, cfg in (("ss", "single-stage", tiny_cfg()), ("ts", "two-stage", tiny_cfg()),
                            ("other", "two-stage", replace(tiny_cfg(), name="laptop"))):
        out[name] = Model.from_trainer(Trainer(cfg, tiny_data(), mode=mode)).save(str(d / f"{name}.pt"))
    return out


def cli(argv, capsys):
    """(exit status, stderr) of an in-process `python -m minissd ARGV`."""
    try:
        rc = main(argv)
    except SystemExit as e:              # argparse errors, and the commands' SystemExit(msg)
        rc = e.code
        if isinstance(rc, str):
            print(rc, file=sys.stderr)
            rc = 1
    err = capsys.readouterr().err
    return rc, err


def assert_refused(argv, capsys, *names):
    rc, err = cli(argv, capsys)
    assert rc not in (0, None), f"{argv} exited 0"
    assert "Traceback" not in err
    for n in names:
        assert n in err, (n, err)
    return err


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _pose(path, t=(0, 0, 1.3)):
    _write(path, f"1 0 0 {t[0]} 0 1 0 {t[1]} 0 0 1 {t[2]} 0 0 0 1")


def _replace_by_folder(path):
    os.remove(path)
    os.mkdir(path)


def _fifo(path):
    os.remove(path)
    os.mkfifo(path)


def _fewer_views(scene):
    for sub, ext in (("rgb", "png"), ("pose", "txt")):
        os.remove(os.path.join(scene, sub, f"000003.{ext}"))


# case -> (how to break the data folder, the scene it breaks, the file the message names)
ZOO = {
    "nan focal": (lambda s: _write(os.path.join(s, "intrinsics.txt"), "nan 8 8 0\n0. 0. 0.\n1.\n16 16\n"),
                  "cars_0001", "intrinsics.txt"),
    "inf focal": (lambda s: _write(os.path.join(s, "intrinsics.txt"), "inf 8 8 0\n0. 0. 0.\n1.\n16 16\n"),
                  "cars_0001", "intrinsics.txt"),
    "1e30 focal": (lambda s: _write(os.path.join(s, "intrinsics.txt"), "1e30 8 8 0\n0. 0. 0.\n1.\n16 16\n"),
                   "cars_0001", "intrinsics.txt"),
    "nan principal point": (lambda s: _write(os.path.join(s, "intrinsics.txt"), "20 nan 8 0\n0. 0. 0.\n1.\n"),
                            "cars_0001", "intrinsics.txt"),
    "1e30 translation": (lambda s: _pose(os.path.join(s, "pose", "000002.txt"), (0, 1e30, 0)),
                         "cars_0001", "pose/000002.txt"),
    "inf translation": (lambda s: _pose(os.path.join(s, "pose", "000002.txt"), (0, float("inf"), 0)),
                        "cars_0001", "pose/000002.txt"),
    "pose is a folder": (lambda s: _replace_by_folder(os.path.join(s, "pose", "000002.txt")),
                         "cars_0001", "pose/000002.txt"),
    "fifo in rgb": (lambda s: _fifo(os.path.join(s, "rgb", "000001.png")), "cars_0001", "rgb/000001.png"),
    "huge image": (lambda s: Image.new("RGB", (9000, 16)).save(os.path.join(s, "rgb", "000001.png")),
                   "cars_0001", "rgb/000001.png"),
    "size mismatch": (lambda s: Image.new("RGB", (12, 16)).save(os.path.join(s, "rgb", "000003.png")),
                      "cars_0001", "rgb/000003.png"),
    "first scene has fewer views": (_fewer_views, "cars_0000", ""),
    "later scene has fewer views": (_fewer_views, "cars_0001", ""),
    "cmyk image": (lambda s: (os.remove(os.path.join(s, "rgb", "000001.png")),
                              Image.new("CMYK", (16, 16)).save(os.path.join(s, "rgb", "000001.jpg"))),
                   "cars_0001", "rgb/000001.jpg"),
    # cases that were already refused before issue 12: still one line from the CLI
    "missing pose": (lambda s: shutil.rmtree(os.path.join(s, "pose")), "cars_0001", "pose"),
    "pose not rigid": (lambda s: _write(os.path.join(s, "pose", "000001.txt"), "2 0 0 0 0 2 0 0 0 0 2 0 0 0 0 1"),
                       "cars_0001", "pose/000001.txt"),
    "not an image": (lambda s: _write(os.path.join(s, "rgb", "000001.png"), "hello"), "cars_0001",
                     "rgb/000001.png"),
}


@pytest.mark.parametrize("case", sorted(ZOO))
def test_damaged_data_refused_in_one_line(case, data, tmp_path, capsys):
    breaker, scene, rel = ZOO[case]
    breaker(os.path.join(data, scene))
    out = str(tmp_path / "run")
    assert_refused(["train", *TINY, "--data", data, "--out", out, "--iters", "1"], capsys,
                   os.path.join(data, scene, rel).rstrip("/"))
    assert not os.path.exists(os.path.join(out, "model.pt"))


def test_grayscale_with_and_without_alpha_accepted(data):
    rgb = os.path.join(data, "cars_0001", "rgb")
    Image.new("L", (16, 16), 128).save(os.path.join(rgb, "000001.png"))
    Image.new("LA", (16, 16), (0, 0)).save(os.path.join(rgb, "000002.png"))
    images = SRNDataset(data)[1]["images"]
    assert torch.allclose(images[1], torch.full_like(images[1], 128 / 255))
    assert torch.allclose(images[2], torch.ones_like(images[2]))          # transparent -> white


def test_huge_image_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    from minissd.data.srn import read_image
    path = str(tmp_path / "big.png")
    Image.new("RGB", (9000, 16)).save(path)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded first"))
    with pytest.raises(ValueError, match="big.png.*larger than"):
        read_image(path)


def test_damaged_surface_names_the_file(data):
    path = os.path.join(data, "cars_0000", "surface.npz")
    blob = bytearray(open(path, "rb").read())
    blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)
    open(path, "wb").write(bytes(blob))
    with pytest.raises(ValueError, match="surface.npz"):
        SRNDataset(data).surface(0)


BAD_ARGS = {   # argv (DATA, MODEL, OUT are filled in) -> the argument the message names
    "train --iters 0": (["train", "--data", "DATA", "--out", "OUT", "--iters", "0"], "--iters"),
    "train --iters -3": (["train", "--data", "DATA", "--out", "OUT", "--iters", "-3"], "--iters"),
    "train --views-per-scene -1": (["train", "--data", "DATA", "--out", "OUT", "--views-per-scene", "-1"],
                                   "--views-per-scene"),
    "train lr nan": (["train", "--data", "DATA", "--out", "OUT", "--set", "lr_code=nan"], "lr_code"),
    "train lr inf": (["train", "--data", "DATA", "--out", "OUT", "--set", "lr_decoder=inf"], "lr_decoder"),
    "train lr negative": (["train", "--data", "DATA", "--out", "OUT", "--set", "lr_code=-1"], "lr_code"),
    "train size zero": (["train", "--data", "DATA", "--out", "OUT", "--set", "code_res=0"], "code_res"),
    "train size absurd": (["train", "--data", "DATA", "--out", "OUT", "--set", "image_res=100000"], "image_res"),
    "train unknown key": (["train", "--data", "DATA", "--out", "OUT", "--set", "code_size=3"], "code_res"),
    "train mistyped value": (["train", "--data", "DATA", "--out", "OUT", "--set", "code_res=1.5"], "code_res"),
    "train missing config": (["train", "--data", "DATA", "--out", "OUT", "--config", "OUT/none.json"], "none.json"),
    "train out is a file": (["train", *TINY, "--data", "DATA", "--out", "FILE"], "--out FILE"),
    "make-data --scenes 0": (["make-data", "--scenes", "0", "--out", "OUT"], "--scenes"),
    "make-data --views 0": (["make-data", "--views", "0", "--out", "OUT"], "--views"),
    "make-data --resolution 0": (["make-data", "--resolution", "0", "--out", "OUT"], "--resolution"),
    "make-data --resolution 10000": (["make-data", "--resolution", "10000", "--out", "OUT"], "--resolution"),
    "make-data into data": (["make-data", "--scenes", "1", "--views", "2", "--resolution", "8",
                             "--out", "DATA"], "--overwrite"),
    "sample --n 0": (["sample", "--ckpt", "MODEL", "--out", "OUT", "--n", "0"], "--n"),
    "sample --frames 0": (["sample", "--ckpt", "MODEL", "--out", "OUT", "--frames", "0"], "--frames"),
    "sample --steps 0": (["sample", "--ckpt", "MODEL", "--out", "OUT", "--steps", "0"], "--steps"),
    "sample --res 0": (["sample", "--ckpt", "MODEL", "--out", "OUT", "--res", "0"], "--res"),
    "sample --res 100000": (["sample", "--ckpt", "MODEL", "--out", "OUT", "--res", "100000"], "--res"),
    "sample out is a file": (["sample", "--ckpt", "MODEL", "--out", "FILE"], "--out FILE"),
    "reconstruct --scenes 0": (["reconstruct", "--ckpt", "MODEL", "--data", "DATA", "--out", "OUT",
                                "--scenes", "0"], "--scenes"),
    "reconstruct --scenes -1": (["reconstruct", "--ckpt", "MODEL", "--data", "DATA", "--out", "OUT",
                                 "--scenes", "-1"], "--scenes"),
    "reconstruct --steps 0": (["reconstruct", "--ckpt", "MODEL", "--data", "DATA", "--out", "OUT",
                               "--steps", "0"], "--steps"),
    "reconstruct out is a file": (["reconstruct", "--ckpt", "MODEL", "--data", "DATA", "--out", "FILE"], "--out FILE"),
    "evaluate --input-views 999": (["evaluate", "--ckpt", "MODEL", "--data", "DATA", "--json", "OUT/a.json",
                                    "--input-views", "999"], "--input-views"),
    "evaluate --json is a folder": (["evaluate", "--ckpt", "MODEL", "--data", "DATA", "--json", "DATA"], "--json DATA"),
    "evaluate --json under a file": (["evaluate", "--ckpt", "MODEL", "--data", "DATA", "--json",
                                      "FILE/a.json"], "--json FILE"),
    "evaluate --ckpt2 single-stage": (["evaluate", "--ckpt", "MODEL", "--ckpt2", "MODEL", "--data", "DATA",
                                       "--ablation", "A1", "--json", "OUT/a.json"], "--ckpt2"),
    "evaluate --ckpt2 other preset": (["evaluate", "--ckpt", "MODEL", "--ckpt2", "OTHER", "--data", "DATA",
                                       "--ablation", "A1", "--json", "OUT/a.json"], "OTHER"),
    "evaluate --scenes 0": (["evaluate", "--ckpt", "MODEL", "--data", "DATA", "--json", "OUT/a.json",
                             "--scenes", "0"], "--scenes"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_refused_in_one_line(case, data, models, tmp_path, capsys):
    argv, name = BAD_ARGS[case]
    (tmp_path / "out").mkdir()
    (tmp_path / "file").write_text("not a folder")
    subs = {"DATA": data, "MODEL": models["ss"], "OTHER": models["other"],
            "OUT": str(tmp_path / "out"), "FILE": str(tmp_path / "file")}
    fill = lambda arg: re.sub(r"\b(DATA|MODEL|OTHER|OUT|FILE)\b", lambda m: subs[m.group(1)], arg)  # noqa: E731
    before = sorted(os.listdir(data))
    assert_refused([fill(a) for a in argv], capsys, fill(name))
    assert sorted(os.listdir(data)) == before
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp")]


def test_debug_shows_the_traceback(data, tmp_path):
    with pytest.raises(ValueError, match="lr_code"):
        main(["train", "--data", data, "--out", str(tmp_path / "r"), "--set", "lr_code=nan", "--debug"])


def test_cli_subprocess_prints_one_line_no_traceback(tmp_path):
    """The real `python -m minissd`: a bad --set and a missing data folder."""
    for extra in (["--set", "lr_code=nan", "--data", str(tmp_path)],
                  ["--data", str(tmp_path / "nope")]):
        p = subprocess.run([sys.executable, "-m", "minissd", "train", "--out", str(tmp_path / "r"), *extra],
                           capture_output=True, text=True, cwd=REPO, timeout=120,
                           env={**os.environ, "PYTHONPATH": REPO})
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_make_data_overwrite_replaces_whole(data, capsys):
    (open(os.path.join(data, "stale.txt"), "w")).close()
    main(["make-data", "--scenes", "1", "--views", "2", "--resolution", "8", "--out", data, "--overwrite"])
    assert sorted(os.listdir(data)) == ["cars_0000", "dataset.json"]
    assert len(os.listdir(os.path.join(data, "cars_0000", "rgb"))) == 2
    assert not [f for f in os.listdir(os.path.dirname(data)) if ".tmp-" in f or ".old-" in f]


# ------------------------------------------------------------------- divergence ----
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    tr = Trainer(tiny_cfg(iters=6, ckpt_every=2), tiny_data(), out_dir=out)
    tr.train(progress=False, stop_after=2)
    good = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    with torch.no_grad():                         # what an absurd step does to the weights
        next(tr.decoder.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"iteration 3 .*loss_rend = nan.*untouched"):
        tr.train(progress=False)
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == good
    log = read_log(os.path.join(out, "log.jsonl"))
    assert [r["iter"] for r in log] == [1, 2, 3] and math.isnan(log[-1]["loss_rend"])
    with pytest.raises(ckpt.CheckpointError, match="non-finite"):
        Model.from_trainer(tr).save(os.path.join(out, "model.pt"))
    assert not os.path.exists(os.path.join(out, "model.pt"))
    again = Trainer(tiny_cfg(iters=6, ckpt_every=2), tiny_data(), out_dir=out)
    assert again.resume() and again.it == 2              # resume from the good one


def test_nonfinite_parameters_are_never_checkpointed(tmp_path):
    """A NaN that no loss sees yet (the EMA copy) is caught at the next iteration (issue 23:
    not only at the next checkpoint)."""
    out = str(tmp_path / "run")
    tr = Trainer(tiny_cfg(iters=6, ckpt_every=2), tiny_data(), out_dir=out)
    tr.train(progress=False, stop_after=2)
    good = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    with torch.no_grad():
        next(tr.ema_prior.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"iteration 3 .*non-finite parameters ema_prior"):
        tr.train(progress=False)
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == good


def test_absurd_learning_rate_stops_training_from_the_cli(made, tmp_path, capsys):
    out = str(tmp_path / "run")
    err = assert_refused(["train", *TINY, "--data", made, "--out", out, "--iters", "20",
                          "--set", "lr_code=1e30", "--set", "lr_decoder=1e30", "--set", "lr_denoiser=1e30"],
                         capsys, "diverged at iteration")
    assert not os.path.exists(os.path.join(out, "model.pt"))
    if os.path.exists(os.path.join(out, "checkpoint.pt")):
        assert not ckpt.nonfinite(ckpt.load(os.path.join(out, "checkpoint.pt"))["decoder"]), err
    assert "NaN" not in open(os.path.join(out, "log.jsonl")).read()       # null, valid JSON


def test_missing_losses_are_not_divergence():
    cfg = tiny_cfg(iters=2, diff_steps=1)
    tr = Trainer(cfg, tiny_data(), mode="two-stage")
    log = tr.train(progress=False)                # stage 1: loss_diff nan; stage 2: loss_rend nan
    assert [r["phase"] for r in log] == ["stage1"] * 2 + ["stage2"] * 2


def test_nonfinite_model_file_is_refused_on_load(models, tmp_path):
    sd = torch.load(models["ss"], weights_only=True)
    sd["codes"][0] = float("nan")
    torch.save(sd, str(tmp_path / "nan.pt"))
    with pytest.raises(ckpt.CheckpointError, match="nan.pt.*NaN"):
        Model.load(str(tmp_path / "nan.pt"))


# ------------------------------------------------------------------- run folder ----
def test_two_trainers_one_run_folder_one_is_refused(tmp_path, made, capsys):
    out = str(tmp_path / "run")
    first = Trainer(tiny_cfg(), tiny_data(), out_dir=out)
    first.run_lock = ckpt.RunLock(out).acquire()            # as train_run holds it
    second = Trainer(tiny_cfg(), tiny_data(), out_dir=out)
    with pytest.raises(RunLocked, match="in use"):
        second.train(progress=False)
    assert_refused(["train", *TINY, "--data", made, "--out", out, "--iters", "1"], capsys, out, "in use")
    first.train(progress=False)                              # the holder is unaffected
    first.run_lock.release()
    second.resume()
    assert second.it == first.it


def test_lock_held_by_another_process(tmp_path, made, capsys):
    out = str(tmp_path / "run")
    code = ("import sys, time; from minissd.ssd.checkpoint import RunLock; "
            f"RunLock({out!r}).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_refused(["train", *TINY, "--data", made, "--out", out, "--iters", "1"], capsys,
                       "in use", f"process {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert cli(["train", *TINY, "--data", made, "--out", out, "--iters", "1"], capsys)[0] == 0


def test_unique_temp_names_orphans_and_permissions(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl.tmp").mkdir()                    # the old fixed temp name, taken
    (out / ".tmp-dead-checkpoint.pt").write_bytes(b"half a file from a killed write")
    tr = Trainer(tiny_cfg(iters=2), tiny_data(), out_dir=str(out))
    tr.train(progress=False)
    assert not (out / ".tmp-dead-checkpoint.pt").exists()
    mask = os.umask(0)
    os.umask(mask)
    for name in ("checkpoint.pt", "log.jsonl"):
        assert os.stat(out / name).st_mode & 0o777 == 0o666 & ~mask, name


def test_full_disk_names_the_path(tmp_path, monkeypatch):
    def full(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"No space left on device.*x\.pt") as e:
        ckpt.save_atomic(str(tmp_path / "x.pt"), {"a": 1})
    assert e.value.filename == str(tmp_path / "x.pt")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------- integrity ----
def test_damaged_model_file_is_refused(models, tmp_path, capsys):
    blob = bytearray(open(models["ss"], "rb").read())
    blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ckpt.CheckpointError, match="bad.pt: damaged"):
        Model.load(str(bad))
    assert_refused(["sample", "--ckpt", str(bad), "--out", str(tmp_path / "s")], capsys, "bad.pt", "damaged")
    assert Model.load(models["ss"]).mode == "single-stage"          # an intact one loads


def test_resume_on_other_data_with_the_same_name_is_refused(data, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli(["train", *TINY, "--data", data, "--out", out, "--iters", "2"], capsys)[0] == 0
    _pose(os.path.join(data, "cars_0001", "pose", "000000.txt"), (0, 0, 1.2))   # same names, counts
    assert_refused(["train", *TINY, "--data", data, "--out", out, "--iters", "3", "--resume"], capsys,
                   "data_id")
    assert same_data("cars:2", "cars:2:0123456789ab")            # checkpoints from before fingerprints
    assert not same_data("cars:2", "cars:3:0123456789ab")


# --------------------------------------------------------------- config and log ----
def test_set_and_config_file_override_and_are_recorded(made, tmp_path, capsys):
    out = tmp_path / "run"
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({"n_samples": 12, "k_in_schedule": [[0, 2]]}))
    rc, err = cli(["train", *TINY, "--config", str(cfg_file), "--set", "lr_code=5e-3", "--set", "n_samples=10",
                   "--data", made, "--out", str(out), "--iters", "2"], capsys)
    assert rc == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr_code"] == 5e-3 and saved["n_samples"] == 10 and saved["image_res"] == 16
    assert saved["k_in_schedule"] == [[0, 2]] and saved["iters"] == 2
    assert Model.load(str(out / "model.pt")).cfg.n_samples == 10
    with pytest.raises(ValueError, match="unknown config keys"):
        get_preset("smoke", code_size=3)


def test_log_every_appends_rows_with_null(tmp_path, monkeypatch):
    out = tmp_path / "run"
    tr = Trainer(tiny_cfg(iters=10, ckpt_every=100, diff_steps=1), tiny_data(), out_dir=str(out))
    step, calls = tr.outer_step, []

    def killed_at_4():
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step()
    monkeypatch.setattr(tr, "outer_step", killed_at_4)
    with pytest.raises(KeyboardInterrupt):
        tr.train(progress=False, log_every=1)
    assert not (out / "checkpoint.pt").exists()             # no checkpoint yet...
    text = (out / "log.jsonl").read_text()
    assert len(text.splitlines()) == 3 and "NaN" not in text                      # ...but a log
    rows = [json.loads(line) for line in text.splitlines()]
    assert all(r["loss_diff_extra"] is None for r in rows)
    assert math.isnan(read_log(str(out / "log.jsonl"))[0]["loss_diff_extra"])
    write_log(str(out / "log.jsonl"), tr.log)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"iter": 4, "los')                         # a write killed half-way
    assert len(read_log(str(out / "log.jsonl"))) == 3


def test_every_flag_has_help_and_every_command_an_example():
    for name in COMMANDS:
        p = command_parser(name)
        missing = [a.option_strings for a in p._actions if a.option_strings and not a.help]
        assert not missing, (name, missing)
        assert "example:" in p.format_help()
    assert "number of objects (default: 32)" in command_parser("make-data").format_help()
    assert "number of samples (default: 8)" in command_parser("sample").format_help()


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "minissd " in capsys.readouterr().out
