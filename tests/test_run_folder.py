"""No run is lost: train.py refuses an --out that holds another run unless told (--resume,
--overwrite), and config.json says which commit of the code made the run."""
import json
import os
import subprocess

import pytest

import train
from eval_support.common import load_checkpoint
from train_support import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--preset", "tiny", "--num-synthetic", "16", "--batch-size", "8", "--knn-samples", "0",
         "--probe", "false", "--device", "cpu", "--workers", "0", "--epochs", "1"]


def rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_a_folder_with_another_run_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--out", out]) == 0
    before = open(os.path.join(out, "last.pt"), "rb").read()
    capsys.readouterr()
    # the same command again: refused before anything is read or written
    with pytest.raises(SystemExit) as e:
        train.cli(QUICK + ["--out", out, "--seed", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "already holds a run (last.pt, metrics.jsonl)" in err
    assert "--resume" in err and "--overwrite" in err
    assert open(os.path.join(out, "last.pt"), "rb").read() == before and len(rows(out)) == 1
    # --resume continues it (here for one more epoch)
    assert train.cli(["--resume", os.path.join(out, "last.pt"), "--epochs", "2", "--device",
                      "cpu"]) == 0
    assert [r["epoch"] for r in rows(out)] == [1, 2]
    # --overwrite starts it afresh: the old metrics are gone, not appended to, and the new run's
    # curves drawn alone
    assert train.cli(QUICK + ["--out", out, "--seed", "1", "--overwrite"]) == 0
    assert [r["epoch"] for r in rows(out)] == [1]
    assert load_checkpoint(os.path.join(out, "last.pt"))["step"] == 2
    assert os.path.exists(os.path.join(out, "curves.png"))
    # metrics.jsonl alone (a run whose last.pt was moved away) is a run too
    os.remove(os.path.join(out, "last.pt"))
    with pytest.raises(SystemExit) as e:
        train.cli(QUICK + ["--out", out])
    assert e.value.code == 2 and "already holds a run (metrics.jsonl)" in capsys.readouterr().err


def test_config_json_records_the_git_commit(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--out", out]) == 0
    recorded = json.load(open(os.path.join(out, "config.json")))["git_commit"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:  # no git here
        head = ""
    if head:
        assert recorded.removesuffix("+dirty") == head
    else:
        assert recorded is None
    assert run.git_commit(str(tmp_path)) is None  # not a checkout

    def no_git(*a, **k):
        raise FileNotFoundError("git")
    monkeypatch.setattr(run.subprocess, "run", no_git)
    assert run.git_commit() is None  # no git at all: None, never an error
