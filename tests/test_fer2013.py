"""FER2013 as users have it (image folders -> the official csv, its standard splits), few-label
evaluation, the narrow ResNet, the central-mask control and the learning-curve bookkeeping: on
fixtures the tests build."""
import json
import os
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import data  # noqa: E402
import eval as evaluate  # noqa: E402
import learning_curve  # noqa: E402
from curve_rows import append_row, draw, read_rows  # noqa: E402
import prepare_fer2013 as prepare  # noqa: E402
import train  # noqa: E402
from simfle import Backbone, SimFLE, SimFLEConfig  # noqa: E402
from data_support.layouts import FaceDataset
from eval_support.landmarks import central_patches
from eval_support.common import load_checkpoint

# (split folder, class folder, file name): a re-packaging as public repositories hold it
LAYOUT = [("train", "angry", "Training_10.jpg"), ("train", "happy", "Training_3.jpg"),
          ("train", "Neutral", "Training_7.png"), ("train", "disgust", "Training_1.jpg"),
          ("test", "sad", "PublicTest_5.jpg"), ("test", "surprise", "PublicTest_2.jpg"),
          ("test", "fear", "PrivateTest_9.jpg"), ("test", "happy", "PrivateTest_4.png")]


def face(seed):
    return np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)


def make_folders(root, layout=LAYOUT, size=48):
    for k, (split, cls, name) in enumerate(layout):
        os.makedirs(os.path.join(root, split, cls), exist_ok=True)
        pixels = face(k) if size == 48 else np.zeros((size, size), np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, split, cls, name), quality=95)


def test_folders_become_the_official_csv_with_the_standard_splits(tmp_path, capsys):
    make_folders(tmp_path / "src")
    assert prepare.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "fer2013"),
                         "--npz", str(tmp_path / "fer.npz")]) == 0
    assert "Training 4, PublicTest 2, PrivateTest 2" in capsys.readouterr().out
    lines = open(tmp_path / "fer2013" / "fer2013.csv").read().splitlines()
    assert lines[0] == "emotion,pixels,Usage"
    # rows: Training, PublicTest, PrivateTest, each in the order of the number in the file name
    assert [(int(l.split(",")[0]), l.split(",")[2]) for l in lines[1:]] == [
        (1, "Training"), (3, "Training"), (6, "Training"), (0, "Training"),
        (5, "PublicTest"), (4, "PublicTest"), (3, "PrivateTest"), (2, "PrivateTest")]
    train, val, test = (data.get_dataset("fer2013", tmp_path, s) for s in ("train", "val", "test"))
    assert (train.labels, val.labels, test.labels) == ([1, 3, 6, 0], [5, 4], [3, 2])
    # the PNG (lossless) comes back pixel for pixel, grey in all three channels
    img, _, _ = train[2]
    assert torch.equal(img[0], torch.from_numpy(face(2))) and torch.equal(img[0], img[2])
    # the .npz holds the files' own bytes: the csv made from it is the same file
    assert prepare.main(["--from", str(tmp_path / "fer.npz"), "--out",
                         str(tmp_path / "again")]) == 0
    assert open(tmp_path / "again" / "fer2013.csv").read() == "\n".join(lines) + "\n"


def test_a_name_without_usage_takes_it_from_its_split_folder(tmp_path, capsys):
    make_folders(tmp_path / "src", [("train", "angry", "im0.jpg"), ("val", "happy", "im1.jpg"),
                                    ("test", "sad", "im2.jpg")])
    assert prepare.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "3 file names had no Training_/PublicTest_/PrivateTest_ prefix" in out
    rows = open(tmp_path / "out" / "fer2013.csv").read().splitlines()[1:]
    assert [r.split(",")[2] for r in rows] == ["Training", "PublicTest", "PrivateTest"]


@pytest.mark.parametrize("case, message", [
    ("missing", "fer2013 folders not found"),
    ("no split", "no split folder"),
    ("unknown class", "unknown class folder"),
    ("wrong size", "is 64x64, not 48x48"),
])
def test_bad_folders_get_one_message_and_exit_2(tmp_path, capsys, case, message):
    src = tmp_path / "src"
    if case == "no split":
        os.makedirs(src / "images")
    elif case == "unknown class":
        make_folders(src, [("train", "contempt", "Training_1.jpg")])
    elif case == "wrong size":
        make_folders(src, [("train", "angry", "Training_1.jpg")], size=64)
    assert prepare.main(["--from", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "fer2013.csv")


def test_unreadable_images_are_skipped_named_and_counted(tmp_path, capsys):
    make_folders(tmp_path / "src")
    bad = tmp_path / "src" / "train" / "angry" / "Training_11.jpg"
    bad.write_bytes(b"not a jpeg")
    assert prepare.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"skipped (cannot be decoded): {bad}" in out
    assert "skipped 1 unreadable images of 9" in out
    assert len(data.get_dataset("fer2013", tmp_path / "out", "train")) == 4


# ----------------------------------------------------------------------------- few labels


def test_labels_per_class_is_balanced_seeded_and_a_subset():
    base = FaceDataset("toy", ["a", "b", "c"], torch.zeros(30, 4, 4, dtype=torch.uint8),
                            [0] * 20 + [1] * 8 + [2] * 2)
    sub = data.labels_per_class(base, 5, seed=1)
    # a class with fewer keeps all of its items
    assert [sub.labels.count(k) for k in range(3)] == [5, 5, 2]
    assert sub.indices == sorted(set(sub.indices)) and all(base.labels[i] == l for i,
                                                           l in zip(sub.indices, sub.labels))
    assert data.labels_per_class(base, 5, seed=1).indices == sub.indices  # seeded
    assert data.labels_per_class(base, 5, seed=2).indices != sub.indices
    assert sub.classes == base.classes and torch.equal(sub[0][0], base[sub.indices[0]][0])


def test_eval_labels_per_class_draws_only_from_the_train_split(tmp_path, monkeypatch):
    make_folders(tmp_path / "src", [("train", c, f"Training_{k}.jpg")
                                    for k, c in enumerate(prepare.CLASSES * 3)]
                 + [("test", c, f"PrivateTest_{k}.jpg") for k, c in enumerate(prepare.CLASSES)])
    assert prepare.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "fer2013")]) == 0
    drawn = []
    real = data.labels_per_class
    def labels_per_class(d, n, seed):
        drawn.append((len(d), n, seed))
        return real(d, n, seed)
    monkeypatch.setattr(data, "labels_per_class", labels_per_class)
    out = tmp_path / "eval"
    assert evaluate.cli(["--ckpt", "random", "--data", "fer2013", "--root", str(tmp_path), "--mode",
                         "linear",
                         "--epochs", "2", "--labels-per-class", "2", "--seed", "3", "--out",
                         str(out)]) == 0
    assert drawn == [(21, 2, 3)]  # the 21 training faces, never the 7 test ones
    report = json.load(open(out / "eval_linear_fer2013_2pc.json"))
    assert report["train_images"] == 14 and report["labels_per_class"] == 2
    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--ckpt", "random", "--labels-per-class", "0"])
    assert e.value.code == 2


def toy_faces(n, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FaceDataset("toy", [str(k) for k in range(classes)],
                            torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8, generator=g),
                            [k % classes for k in range(n)])


def test_finetune_trains_the_trunk_and_scores_each_epoch_or_the_last_only():
    cfg = SimFLEConfig.preset("tiny", width=0.25)
    faces, reports, weights = toy_faces(24), {}, {}
    for every in (True, False):
        torch.manual_seed(0)
        trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
        before = trunk.conv1.weight.detach().clone()
        reports[every] = evaluate.finetune(trunk, faces, faces, cfg.view_size, "cpu", epochs=3,
                                           batch_size=8, seed=1,
                                           every_epoch=every)
        # the whole network is trained, not only the head
        assert not torch.equal(trunk.conv1.weight, before)
        weights[every] = trunk.conv1.weight.detach().clone()
    assert len(reports[True]["history"]) == 3 and len(reports[False]["history"]) == 1
    assert reports[False]["best_epoch"] == 3
    # scoring in between changes nothing of the training: the same weights and the same final
    # accuracy
    assert torch.equal(weights[True], weights[False])
    assert reports[True]["last_epoch_accuracy"] == reports[False]["last_epoch_accuracy"]


def test_few_labels_table_compares_the_trunks_on_the_same_class_balanced_labels(tmp_path):
    import few_labels
    make_folders(tmp_path / "src", [("train", c, f"Training_{k}.jpg")
                                    for k, c in enumerate(prepare.CLASSES * 4)]
                 + [("test", c, f"PublicTest_{k}.jpg") for k, c in enumerate(prepare.CLASSES)])
    assert prepare.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "fer2013")]) == 0
    run = tmp_path / "run"
    assert train.main(["--data", "fer2013", "--root", str(tmp_path), "--preset", "tiny", "--width",
                       "0.25",
                       "--batch-size", "14", "--epochs", "1", "--knn-samples", "0", "--probe",
                       "false",
                       "--device", "cpu", "--workers", "0", "--out", str(run)]) == 0
    out = tmp_path / "few.md"
    assert few_labels.main(["--ckpt", str(run / "last.pt"), "--data", "fer2013", "--root",
                            str(tmp_path),
                            "--labels", "2", "all", "--subsets", "0", "1", "--finetune",
                            "--finetune-epochs", "1",
                            "--out", str(out)]) == 0
    table = open(out).read().splitlines()
    assert [r.split(" |")[0] for r in table[6:]] == [
        "| pretrained trunk, linear probe", "| random trunk, linear probe", "| from scratch",
        "| pretrained trunk, fine-tuned"]
    # fine-tuning is for the few-label columns only
    assert all(r.endswith(" – |") for r in table[8:])
    scores = json.load(open(tmp_path / "few.json"))
    assert [len(scores[f"{r} | 2"]) for r in ("pretrained trunk, linear probe",
                                              "from scratch")] == [2, 2]
    assert len(scores["random trunk, linear probe | all"]) == 1  # every label: one subset
    assert all(0 <= a <= 1 for v in scores.values() for a in v)


# ----------------------------------------------------------------------------- narrow ResNet,
# central mask


def test_a_narrow_resnet_keeps_torchvisions_names_with_fewer_channels():
    narrow, full = Backbone("resnet18",
                            width=0.5).state_dict(), torchvision.models.resnet18().state_dict()
    assert set(narrow) == set(full) - {"fc.weight", "fc.bias"}
    for k, v in narrow.items():
        if v.dim() == 4:  # conv weights (out, in, kh, kw): channels halved, the image's 3 kept
            expected = (full[k].shape[0] // 2,
                        3 if full[k].shape[1] == 3 else full[k].shape[1] // 2, *full[k].shape[2:])
            assert v.shape == expected, k
    trunk = Backbone("resnet18", width=0.5)
    assert trunk.dim == 256 and trunk(torch.randn(2, 3, 64, 64)).shape == (2, 256)
    cfg = SimFLEConfig.preset("tiny", width=0.5)
    assert cfg.backbone_channels == 256 and SimFLE(cfg).backbone.dim == 256
    with pytest.raises(ValueError, match="width"):
        SimFLEConfig.preset("tiny", width=0.0)


def test_central_patches_are_the_ones_nearest_the_centre():
    # the 3x3 block
    assert sorted(central_patches(7, 9).tolist()) == [16, 17, 18, 23, 24, 25, 30, 31, 32]
    twelve = central_patches(7, 12).tolist()
    assert set(twelve) >= {16, 17, 18, 23, 24, 25, 30, 31,
                           32} and set(twelve) - set(twelve[:9]) == {10, 22, 26}


# ----------------------------------------------------------------------------- learning curves


def test_probe_points_double_and_end_at_the_budget():
    assert learning_curve.probe_points(14) == [1, 2, 4, 8, 14]
    assert learning_curve.probe_points(8) == [1, 2, 4, 8] and learning_curve.probe_points(1) == [1]


@pytest.mark.slow
def test_a_curve_stopped_with_until_goes_on_and_its_test_split_is_read_once(tmp_path):
    make_folders(tmp_path / "src", [("train", c, f"Training_{k}.jpg") for k,
                                    c in enumerate(prepare.CLASSES * 4)]
                 + [("test", c, f"{u}_{k}.jpg") for u in ("PublicTest", "PrivateTest")
                    for k, c in enumerate(prepare.CLASSES)])
    assert prepare.main(["--from", str(tmp_path / "src"), "--out", str(tmp_path / "fer2013")]) == 0
    out = str(tmp_path / "curve.jsonl")
    simclr_ckpt = tmp_path / "runs" / "fer2013-simclr-s0" / "last.pt"
    common = ["--data", "fer2013", "--root", str(tmp_path), "--arms", "simclr,supervised",
              "--batch-size", "7",
              "--epochs", "4", "--options", "--width 0.25", "--runs", str(tmp_path / "runs"),
              "--out", out]
    assert learning_curve.main(common + ["--until", "2"]) == 0
    assert [(r["arm"], r["epoch"]) for r in read_rows(out)] == [
        ("simclr", 1), ("simclr", 2), ("supervised", 1), ("supervised", 2)]
    assert load_checkpoint(str(simclr_ckpt))["step"] == 2 * 4
    # the rest of the budget: epoch 4 only, from the checkpoints
    assert learning_curve.main(common) == 0
    rows = read_rows(out)
    assert [(r["arm"], r["epoch"]) for r in rows[4:]] == [("simclr", 4), ("supervised", 4)]
    # 28 faces, batch 7: 4 steps an epoch
    assert [r["images"] for r in rows if r["epoch"] == 4] == [4 * 4 * 7] * 2
    assert load_checkpoint(str(simclr_ckpt))["step"] == 4 * 4
    with pytest.raises(SystemExit):  # test rows never go into the val file
        learning_curve.main(common + ["--split", "test"])
    test_out = str(tmp_path / "curve_test.jsonl")
    read_test = [a if a != out else test_out for a in common] + ["--split", "test", "--baselines"]
    for _ in range(2):  # the second call finds the rows: test is read once
        assert learning_curve.main(read_test) == 0
        assert [(r["arm"], r["epoch"], r["split"]) for r in read_rows(test_out)] == [
            ("random trunk", 0, "test"), ("random trunk, BN statistics", 0, "test"),
            ("pixels 32x32", 0, "test"),
            # the checkpoints as they stood: nothing trained
            ("simclr", 4, "test"), ("supervised", 4, "test")]
    assert load_checkpoint(str(simclr_ckpt))["step"] == 4 * 4
    assert "test linear probe" in open(str(tmp_path / "curve_test.md")).read()
    with pytest.raises(SystemExit, match="no checkpoint"):
        learning_curve.main(read_test + ["--arms", "byol", "--out", str(tmp_path / "other.jsonl")])


def test_curve_table_and_picture_from_rows(tmp_path):
    path = str(tmp_path / "curve.jsonl")
    rows = [{"arm": "random trunk", "seed": 0, "epoch": 0, "images": 0, "linear": 0.25, "knn": 0.2},
            {"arm": "simclr", "seed": 0, "epoch": 1, "images": 100, "linear": 0.2, "knn": 0.21},
            {"arm": "simclr", "seed": 1, "epoch": 1, "images": 100, "linear": 0.3, "knn": 0.23},
            {"arm": "simclr", "seed": 0, "epoch": 2, "images": 200, "linear": 0.4, "knn": 0.3,
             "hit_rate": 0.3,
             "hit_rate_random": 0.245, "hit_rate_central": 0.44, "linear_dedup": 0.32,
             "knn_dedup": 0.27,
             "ffl_grad_share": 0.25},
            {"arm": "semantic masking, untrained", "seed": 0, "epoch": 0, "images": 0,
             "hit_rate": 0.46,
             "hit_rate_random": 0.245, "hit_rate_central": 0.44}]
    for r in rows:
        append_row(path, r)
    draw(path)
    table = open(tmp_path / "curve.md").read()
    # mean ± std over the seeds
    assert "| simclr | 1 | 100 | 2 | 25.0 ± 7.1 | 22.0 ± 1.4 | – |" in table
    assert ("| simclr | 2 | 200 | 1 | 40.0 | 30.0 | 32.0 / 27.0 | 30.0 / 24.5 / 44.0 | 25.0 |"
            in table)
    assert "| semantic masking, untrained | 0 | 0 | 1 | – | – | – | 46.0 / 24.5 / 44.0 |" in table
    assert open(tmp_path / "curve.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_two_arms_are_compared_seed_by_seed(tmp_path, capsys):
    """A − B is taken per seed measured in both arms (a seed of one arm alone is left out of both
    columns), with its mean ± std; the README line says which epochs have fewer seeds."""
    import curve_rows

    def row(arm, seed, epoch, linear, knn, **more):
        return {"arm": arm, "seed": seed, "epoch": epoch, "images": 10 * epoch, "linear": linear,
                "knn": knn, **more}
    rows = [row("a", 0, 8, 0.40, 0.30, ffl_grad_share=0.1), row("b", 0, 8, 0.38, 0.31,
                                                                ffl_grad_share=0.3),
            row("a", 1, 8, 0.42, 0.30, ffl_grad_share=0.1), row("b", 1, 8, 0.41, 0.30,
                                                                ffl_grad_share=0.3),
            row("a", 2, 8, 0.90, 0.90), row("a", 2, 4, 0.35, 0.25)]
    assert curve_rows.paired_difference(rows, "a", "b", 8, "linear") == pytest.approx([2.0, 1.0])
    assert curve_rows.paired_difference(rows, "a", "b", 4, "linear") == []
    table = curve_rows.difference_table(rows, "a", "b").splitlines()
    assert len(table) == 3  # epoch 4 has no seed in both arms
    assert table[2] == ("| 8 | 0, 1 | 41.0 ± 1.4 / 30.0 ± 0.0 (10 %) | "
                        "39.5 ± 2.1 / 30.5 ± 0.7 (30 %) | +2.0, +1.0 / -1.0, 0.0 | "
                        "+1.5 ± 0.7 / -0.5 ± 0.7 | – / – |")
    assert curve_rows.readme_line(rows, "a", [4, 8, 14]) == \
        "| a, seeds 0, 1, 2 (epoch 4: 2) | 35.0 / 25.0 | 57.3±28.3 / 50.0±34.6 | – |"
    assert curve_rows.difference_line(rows, "a", "b", [4, 8]) == \
        "| a − b, per seed, seeds 0, 1 | – | +1.5±0.7 / -0.5±0.7 |"
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert curve_rows.main([str(path), "--difference", "a", "b"]) == 0
    assert capsys.readouterr().out.splitlines() == table
    with pytest.raises(SystemExit) as e:
        curve_rows.main([str(path), "--difference", "a", "c"])
    assert e.value.code == 2 and "no rows of c" in capsys.readouterr().err


def test_held_out_faces_copied_from_train_are_found_counted_and_left_out(tmp_path, capsys):
    """Two PublicTest faces are Training faces saved again (one brighter by a few levels, still a
    near-exact copy); prepare_fer2013 counts and lists them, eval.py scores the split with and
    without them."""
    src = tmp_path / "src"
    layout = [("train", c, f"Training_{k}.png") for k, c in enumerate(prepare.CLASSES * 2)]
    layout += [("test", c, f"PublicTest_{k}.png") for k, c in enumerate(prepare.CLASSES)]
    for k, (split, cls, name) in enumerate(layout):
        os.makedirs(src / split / cls, exist_ok=True)
        pixels = face(k)
        if name in ("PublicTest_1.png", "PublicTest_4.png"):  # copies of Training_3 and Training_11
            brighter = np.clip(face(11).astype(int) + 3, 0, 255)
            pixels = face(3) if name == "PublicTest_1.png" else brighter
        Image.fromarray(pixels.astype(np.uint8)).save(src / split / cls / name)
    assert prepare.main(["--from", str(src), "--out", str(tmp_path / "fer2013")]) == 0
    out = capsys.readouterr().out
    assert "PublicTest (val): 2 of 7 faces (28.6 %) have a near-exact copy in Training" in out
    report = json.load(open(tmp_path / "fer2013" / "duplicates.json"))
    assert report["val"]["indices"] == [1, 4] and report["val"]["nearest_training"] == [3, 11]
    assert report["test"]["duplicates"] == 0 and report["threshold"] == data.DUPLICATE_COSINE
    train_base, val = (data.get_dataset("fer2013", tmp_path, s) for s in ("train", "val"))
    mask, nearest = data.near_duplicates(train_base, val)
    assert mask.tolist() == [False, True, False, False, True, False, False]
    assert nearest[[1, 4]].tolist() == [3, 11]
    # not held in memory: not checked
    assert data.near_duplicates(data.random_subset(train_base, 5), val) is None
    out = tmp_path / "eval"
    assert evaluate.cli(["--ckpt", "random", "--data", "fer2013", "--root", str(tmp_path),
                         "--split", "val",
                         "--mode", "knn", "--out", str(out)]) == 0
    assert "2 of the val faces have a near-exact copy in train" in capsys.readouterr().out
    r = json.load(open(out / "eval_knn_fer2013_val.json"))
    assert r["held_out_duplicates"] == 2
    pred_right = round(r["accuracy"] * 7)
    assert 0 <= r["accuracy_deduplicated"] <= 1
    assert round(r["accuracy_deduplicated"] * 5) <= pred_right
