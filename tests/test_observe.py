"""What a run shows (train_support/observe.py): curves.png, TensorBoard, --help, eval.py's
pictures."""
import argparse
import json
import os
import sys

import pytest

import data
import eval as evaluate
import train
from eval_support.report import save_confusion_png
from simfle import CHOICES, SimFLEConfig
from train_support import observe
from train_support.options import TRAIN_DEFAULTS, build_parser

from e2e import QUICK, metrics  # tests/e2e.py


# ----------------------------------------------------------------------------- logging: curves,
# TensorBoard, --help

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(png):
    """(width, height) in pixels, from the PNG's header chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_curves_png_after_each_epoch_and_across_a_resume(tmp_path, monkeypatch, capsys):
    """curves.png is rewritten after every epoch; after a resume it is drawn from the whole
    metrics.jsonl."""
    out = str(tmp_path / "run")
    drawn = []  # (epochs drawn, the PNG's bytes) after each epoch

    def spy(metrics_path, png_path, draw=observe.draw_curves):
        epochs = draw(metrics_path, png_path)
        drawn.append((epochs, open(png_path, "rb").read()))
        return epochs
    monkeypatch.setattr(observe, "draw_curves", spy)
    # epoch 1 (2 steps) and stop there, then resume for epoch 2
    assert train.cli(QUICK + ["--epochs", "2", "--out", out, "--stop-after-steps", "2"]) == 0
    assert train.cli(["--resume", os.path.join(out, "last.pt"), "--device", "cpu", "--workers",
                      "0"]) == 0
    # the picture after the resume shows the whole run
    assert [epochs for epochs, _ in drawn] == [[1], [1, 2]]
    (_, first), (_, second) = drawn
    assert first.startswith(PNG_SIGNATURE) and second.startswith(PNG_SIGNATURE) and first != second
    assert png_size(second)[0] >= 1000  # 12 inches at 100 dpi
    assert open(os.path.join(out, "curves.png"), "rb").read() == second
    assert not os.path.exists(os.path.join(out,
                                           "curves.png.tmp"))  # written beside, then renamed over
    rows = metrics(out)
    assert all(0 <= r["landmark_hit_rate"] <= 1 and 0 <= r["knn_accuracy"] <= 1 for r in rows)
    # the printed epoch shows the total as the sum of its weighted terms, each with its share
    printed = capsys.readouterr().out
    assert printed.count("  loss: total=") == 2
    assert "weighted_grouping" in printed and "%)" in printed


def test_training_goes_on_without_matplotlib_or_when_plotting_fails(tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:  # matplotlib missing: every import of it fails
        for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
            m.setitem(sys.modules, name, None)
        assert train.cli(QUICK + ["--epochs", "2", "--knn-samples", "0", "--out",
                                  str(tmp_path / "a")]) == 0
    assert len(metrics(str(tmp_path / "a"))) == 2 and not (tmp_path / "a" / "curves.png").exists()
    # said once
    assert capsys.readouterr().out.count("curves.png not drawn: matplotlib is not installed") == 1

    from matplotlib.figure import Figure

    def broken(*a, **k):
        raise RuntimeError("a bug in plotting")
    monkeypatch.setattr(Figure, "savefig", broken)
    assert train.cli(QUICK + ["--epochs", "1", "--knn-samples", "0", "--out",
                              str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "not drawn (RuntimeError: a bug in plotting); training goes on" in out
    assert len(metrics(str(tmp_path / "b"))) == 1 and (tmp_path / "b" / "last.pt").exists()


def test_tensorboard_scalars_match_the_metrics_keys(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--epochs", "1", "--out", out, "--tensorboard"]) == 0
    events = EventAccumulator(out)
    events.Reload()
    tags = events.Tags()["scalars"]
    record = metrics(out)[0]
    assert {t[len("epoch/"):] for t in tags if t.startswith("epoch/")} == set(record) - {"epoch"}
    per_step = {t[len("step/"):] for t in tags if t.startswith("step/")}
    assert per_step <= set(record) and {"total", "weighted_grouping", "l_g", "lr"} <= per_step
    assert [e.step for e in events.Scalars("step/total")] == [1, 2]  # x: the global step
    assert events.Scalars("epoch/total")[0].value == pytest.approx(record["total"])


def test_tensorboard_missing_is_one_message_and_exit_2(tmp_path, monkeypatch, capsys):
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train.cli(QUICK + ["--epochs", "1", "--out", str(out), "--tensorboard"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --tensorboard")
    assert "pip install tensorboard" in err
    assert not out.exists()  # before any training: nothing written


def option_help(text):
    """--help's text cut per option: {first option string: its whole entry on one line}."""
    entries, name = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
            entries[name] = line.strip()
        elif name is not None and line.startswith("    "):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def test_help_states_each_default_once(capsys):
    """No option's help says its default twice, nor "(default: None)"; an option whose default
    depends on the preset gives each preset's value; one with a plain default shows it, with or
    without a help text."""
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    texts = {"train.py": build_parser().format_help(), "eval.py": capsys.readouterr().out}
    for script, text in texts.items():
        entries = option_help(text)
        assert len(entries) > 15, script
        for entry in entries.values():
            assert entry.lower().count("default") <= 1 and "(default: None)" not in entry, (script,
                                                                                            entry)
    train_help, eval_help = option_help(texts["train.py"]), option_help(texts["eval.py"])
    for name in ("epochs", "batch_size", "crop_scale", "warmup_epochs"):
        values = ", ".join(f"{p}: {d[name]}" for p, d in TRAIN_DEFAULTS.items())
        assert values in train_help["--" + name.replace("_", "-")]
    assert "paper: resnet50, tiny: resnet18" in train_help["--backbone"]
    for action in build_parser()._actions:
        if action.default is not None and action.default != argparse.SUPPRESS:
            assert "(default: " in train_help[action.option_strings[0]], action.option_strings
    assert "(default: auto)" in eval_help["--device"] and "(default: linear)" in eval_help["--mode"]


def test_the_allowed_values_are_declared_once(capsys):
    """--help lists simfle.CHOICES, the command line refuses what validate refuses, and validate
    accepts each listed value: one declaration read by both."""
    actions = {a.dest: a for a in build_parser()._actions}
    assert set(CHOICES) == {name for name, a in actions.items() if a.choices and name in CHOICES}
    for name, values in CHOICES.items():
        assert tuple(actions[name].choices) == values
        for value in values:
            SimFLEConfig.preset("tiny", **{name: value})
        with pytest.raises(ValueError, match=name):
            SimFLEConfig.preset("tiny", **{name: "nonsense"})
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--" + name.replace("_", "-"), "nonsense"])
    assert "invalid choice" in capsys.readouterr().err


def test_eval_draws_the_accuracy_per_epoch_beside_the_confusion(tmp_path, monkeypatch):
    def small(*a, get=data.get_dataset, **k):
        return get(*a, **{**k, "synthetic_count": 24})
    monkeypatch.setattr(data, "get_dataset", small)
    assert evaluate.cli(["--ckpt", "random", "--mode", "linear", "--epochs", "3",
                         "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.load(open(tmp_path / "eval_linear_synthetic.json"))
    assert len(report["history"]) == 3 and all(0 <= a <= 1 for a in report["history"])
    png = (tmp_path / "eval_linear_synthetic_confusion.png").read_bytes()
    alone = save_confusion_png(report["confusion"], report["classes"],
                                        str(tmp_path / "alone.png"), "k-NN")
    (width, height), (alone_width, _) = png_size(png), png_size(open(alone, "rb").read())
    # a second panel beside the matrix
    assert png.startswith(PNG_SIGNATURE) and width > 1.4 * alone_width
    assert height >= 600  # 7 classes at 120 dpi: legible
