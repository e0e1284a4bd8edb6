"""The command line: every command has --help; make-data -> train -> resume end to end."""
import os

import pytest

from minissd.cli import COMMANDS, main
from minissd.ssd.model import Model
from minissd.ssd.logs import read_log


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: python -m minissd " + command in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)


def test_make_data_train_resume(tmp_path, capsys):
    data, run = str(tmp_path / "cars"), str(tmp_path / "run")
    main(["make-data", "--category", "cars", "--split", "train", "--scenes", "2", "--views", "4",
          "--resolution", "32", "--seed", "1", "--out", data])
    assert sorted(os.listdir(os.path.join(data, "cars_0000", "rgb"))) == [f"{i:06d}.png" for i in range(4)]
    main(["train", "--preset", "smoke", "--data", data, "--out", run, "--iters", "3"])
    assert [r["iter"] for r in read_log(os.path.join(run, "log.jsonl"))] == [1, 2, 3]
    model = Model.load(os.path.join(run, "model.pt"))
    assert model.codes.shape[0] == 2 and model.mode == "single-stage"
    # a second run into the same folder must not silently overwrite it...
    with pytest.raises(SystemExit, match="--resume"):
        main(["train", "--preset", "smoke", "--data", data, "--out", run, "--iters", "3"])
    # ...and --resume continues where it stopped
    main(["train", "--preset", "smoke", "--data", data, "--out", run, "--iters", "5", "--resume"])
    assert [r["iter"] for r in read_log(os.path.join(run, "log.jsonl"))] == [1, 2, 3, 4, 5]
    assert "resumed" in capsys.readouterr().out


def test_train_rejects_missing_data(tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        main(["train", "--preset", "smoke", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
