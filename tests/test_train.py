"""train.py / eval.py end to end on CPU: options, checkpoints, resume, interrupts, bad input, DDP.
"""
import argparse
import contextlib
import copy
import functools
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision

import data
import eval as evaluate
import train
from simfle import SimFLE, SimFLEConfig
from data_support.device_augment import normalize
from eval_support.common import CHECKPOINT_FORMAT, load_checkpoint
from train_support.options import build_parser, parse_args
from train_support.run import Setup, save_checkpoint
from eval_support.landmarks import landmark_hit_rate
from train_support import observe, run

from e2e import QUICK, ROOT, metrics, random_pretrain_batch, run_script  # tests/e2e.py


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("bad", [["--no-such-option"], ["--mask-ratio", "1.0"], ["--mask-ratio",
                                                                                 "0"],
                                 ["--groups", "30"], ["--epochs", "0"], ["--batch-size", "-1"],
                                 ["--gfl", "moco"], ["--data", "imagenet"]])
def test_impossible_options_are_argparse_errors(bad, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(bad)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_defaults_follow_the_paper():
    args = parse_args(["--data", "rafdb"])
    assert args.preset == "paper" and args.batch_size == 256 and args.epochs == 100
    assert args.lr == pytest.approx(0.05)  # 0.05 x 256 / 256
    assert args.out == os.path.join("runs", "rafdb-paper")
    args = parse_args([])
    assert args.preset == "tiny" and args.data == "synthetic" and args.probe
    assert args.lr == pytest.approx(0.05 * args.batch_size / 256)
    args = parse_args(["--gfl", "simclr", "--use-facemae", "false", "--mask-ratio", "0.5"])
    assert args.config.gfl == "simclr" and not args.config.use_facemae
    assert args.config.num_visible == 24


def test_learning_rate_cosine_per_epoch_after_an_optional_warmup():
    import math
    # the paper: cosine per epoch, no warm-up
    args = parse_args(["--lr", "0.1", "--epochs", "4"])
    assert train.learning_rate(args, 0, 0, 10) == pytest.approx(0.1)
    assert train.learning_rate(args, 2, 25, 10) == pytest.approx(0.05)
    args = parse_args(["--lr", "0.1", "--epochs", "4", "--warmup-epochs", "1"])
    assert train.learning_rate(args, 0, 0, 10) == pytest.approx(0.01)  # step 1 of 10
    assert train.learning_rate(args, 0, 4, 10) == pytest.approx(0.05)
    assert train.learning_rate(args, 0, 9, 10) == pytest.approx(0.1)
    assert train.learning_rate(args, 1, 10, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))


def test_help_lists_every_config_field():
    text = build_parser().format_help()
    for field in SimFLEConfig.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in text


def test_missing_dataset_is_one_clear_message(tmp_path):
    r = run_script("train.py", "--data", "rafdb", "--root", str(tmp_path / "nowhere"), "--device",
                   "cpu", timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "list_patition_label.txt" in r.stderr and "nowhere" in r.stderr


# ----------------------------------------------------------------------------- training and
# checkpoints


def test_a_log_file_reads_line_by_line(tmp_path, monkeypatch):
    """train.py with its output in a file (CI, nohup, Colab): plain progress lines, none over 300
    characters. In process, with stdout and stderr sent to the file, and the final probe on 64 faces
    a split."""
    def small(*a, get=data.get_dataset, **k):
        return get(*a, **{**k, "synthetic_count": k.get("synthetic_count") or 64})
    monkeypatch.setattr(data, "get_dataset", small)
    log = tmp_path / "log.txt"
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        code = train.cli(QUICK + ["--epochs", "1", "--out", str(tmp_path / "run"), "--probe",
                                  "true",
                                  "--probe-epochs", "2"])
    assert code == 0
    text = log.read_text()
    assert "\r" not in text and "epoch=1 step=2" in text and "epoch 1/1: 100%" in text
    # the final probe's bars too: the lr search, then the head at the chosen lr
    assert "probe lr, on a train hold-out: 100%" in text and "linear probe (cached, lr" in text
    assert "pretrained − better random trunk: linear" in text
    assert max(len(line) for line in text.splitlines()) <= 300


def test_train_then_eval_on_synthetic(tmp_path):
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--epochs", "2", "--out", out]) == 0
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all("knn_accuracy" in r and r["similarity"] > 0 for r in rows)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model"]["backbone"] == "resnet18"
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4 and ckpt["config"]["view_size"] == 64
    # the trunk of a checkpoint loads into torchvision's ResNet with only the classifier missing
    net = torchvision.models.resnet18()
    trunk = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    missing, unexpected = net.load_state_dict(trunk, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    # eval rebuilds the trunk from the checkpoint alone
    assert evaluate.cli(["--ckpt", os.path.join(out, "last.pt"), "--mode", "knn", "--device",
                         "cpu"]) == 0
    report = json.load(open(os.path.join(out, "eval_knn_synthetic.json")))
    assert len(report["classes"]) == 7 and 0 <= report["accuracy"] <= 1


@pytest.mark.parametrize("augment", ["loader", "device"])
def test_resume_is_exact(tmp_path, augment):
    """A run stopped mid-epoch and resumed with only --resume (its views made where they were
    made before) ends with the weights and losses of the run never stopped."""
    straight, cut = str(tmp_path / "straight"), str(tmp_path / "cut")
    options = QUICK + ["--epochs", "2", "--knn-samples", "0", "--augment", augment]
    assert train.cli(options + ["--out", straight]) == 0
    # stop in the middle of epoch 1 (step 1 of 2), then resume to the end
    assert train.cli(options + ["--out", cut, "--stop-after-steps", "1"]) == 0
    assert not os.path.exists(os.path.join(cut, "metrics.jsonl"))
    assert train.cli(["--resume", os.path.join(cut, "last.pt"), "--device", "cpu", "--workers",
                      "0"]) == 0
    a, b = metrics(straight), metrics(cut)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in ("similarity", "reconstruction", "distillation", "grouping", "l_g",
                    "weighted_grouping", "total",
                    "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key
    sa = torch.load(os.path.join(straight, "last.pt"), weights_only=True)["model"]
    sb = torch.load(os.path.join(cut, "last.pt"), weights_only=True)["model"]
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k


def test_gradient_shares_logged_and_invisible_to_training(tmp_path):
    """Each epoch's record has the loss terms' shares of the ResNet's gradient (they add up; L_r and
    l_g² read 0), and measuring them at every step trains exactly as not measuring them at all."""
    measured, plain = str(tmp_path / "measured"), str(tmp_path / "plain")
    options = QUICK + ["--epochs", "2", "--knn-samples", "0", "--gfl", "simclr", "--distill-target",
                       "ffl",
                       "--distill-loss", "cosine", "--alpha", "3"]
    assert train.cli(options + ["--out", measured, "--grad-share-every", "1"]) == 0
    assert train.cli(options + ["--out", plain, "--grad-share-every", "0"]) == 0
    rows = metrics(measured)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        shares = [r["grad_share_" + t] for t in observe.LOSS_TERMS]
        assert sum(shares) == pytest.approx(1.0, abs=1e-9)
        assert r["grad_share_reconstruction"] == 0.0 and r["grad_share_grouping"] == 0.0
        assert 0.05 < r["grad_share_distillation"] < 0.95
    assert not any(k.startswith("grad_share") for r in metrics(plain) for k in r)
    a, b = (torch.load(os.path.join(d, "last.pt"), weights_only=True)["model"] for d in (measured,
                                                                                         plain))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_another_model(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--epochs", "1", "--out", out, "--knn-samples", "0"]) == 0
    assert train.cli(["--resume", os.path.join(out, "last.pt"), "--preset", "paper"]) == 2
    assert "another model configuration" in capsys.readouterr().err


class RunsCode:
    """A pickle payload: unpickling it would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bad_checkpoints_get_one_message(tmp_path, capsys):
    proof = tmp_path / "code_ran"
    malicious = tmp_path / "malicious.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": RunsCode(str(proof))}, malicious,
               pickle_protocol=pickle.HIGHEST_PROTOCOL)
    good = tmp_path / "good.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "config": {"backbone": "resnet18"}},
               good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    alien = tmp_path / "alien.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": {"backbone": "vgg16"}}, alien)
    for path, words in [(malicious, "not a loadable"), (truncated, "not a loadable"),
                        (text, "not a loadable"),
                        (plain, "not a SimFLE checkpoint"), (alien, "unknown model configuration"),
                        (tmp_path / "missing.pt", "not found")]:
        assert evaluate.cli(["--ckpt", str(path), "--device", "cpu"]) == 2
        assert words in capsys.readouterr().err
    assert not proof.exists()  # the code inside the malicious file never ran


def test_non_finite_loss_stops_and_keeps_last_good(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--epochs", "1", "--out", out, "--knn-samples", "0"]) == 0
    before = open(os.path.join(out, "last.pt"), "rb").read()
    code = train.cli(["--resume", os.path.join(out, "last.pt"), "--epochs", "3", "--lr", "1e30",
                      "--device", "cpu", "--workers", "0"])
    assert code == 3
    err = capsys.readouterr().out
    assert "non-finite loss" in err and "step" in err
    assert open(os.path.join(out, "last.pt"), "rb").read() == before


def test_out_of_memory_is_one_message(tmp_path, monkeypatch, capsys):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(SimFLE, "forward", oom)
    assert train.cli(QUICK + ["--epochs", "1", "--out", str(tmp_path / "run")]) == 4
    err = capsys.readouterr().err
    assert "out of GPU memory" in err
    assert "--batch-size" in err and "--activation-checkpointing" in err


@pytest.mark.slow
def test_sigint_saves_and_resume_continues(tmp_path):
    out = str(tmp_path / "run")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "train.py", "--preset", "tiny", "--num-synthetic", "80", "--batch-size",
            "8",
            "--epochs", "2", "--knn-samples", "0", "--probe", "false", "--device", "cpu", "--out",
            out]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    # wait until a few steps have run: the progress bar shows 'epoch 1/2' with a step count
    deadline, seen = time.time() + 120, ""
    while time.time() < deadline:
        chunk = proc.stdout.read(1) if proc.stdout else ""
        seen += chunk
        training = seen.rpartition("epoch 1/2")[2]  # not the bar of the faces' rendering before it
        if "epoch 1/2" in seen and ("it/s" in training or "s/it" in training):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    seen += rest
    assert proc.returncode == 130, seen[-2000:]
    assert "Resume with" in seen and "Traceback" not in seen
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert ckpt["step"] >= 1
    r = run_script("train.py", "--resume", os.path.join(out, "last.pt"), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [m["epoch"] for m in metrics(out)][-1] == 2


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out = str(tmp_path / "ddp")
    r = run_script("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                   "train.py",
                   *QUICK, "--epochs", "1", "--out", out, "--batch-size", "8", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    # 16 images / (2 processes x 4) = 2 steps
    assert ckpt["step"] == 2 and ckpt["train"]["batch_size"] == 8
    assert len(metrics(out)) == 1  # one writer: rank 0


@pytest.mark.slow
def test_memory_holds_steady_over_hundreds_of_steps():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_memory
    trace, code = bench_memory.rss_trace(steps=120, batch_size=2)
    assert code == 0
    warm, late = bench_memory.summary(trace)
    assert late < warm * 1.10 + 50, f"RSS grew from {warm:.0f} MB to {late:.0f} MB"


def saved_bytes_and_step(trainer, batch):
    """One training step; -> (bytes the forward kept for the backward outside checkpointed blocks,
    loss parts)."""
    kept = [0]

    def pack(t):
        kept[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        values = trainer.step(batch, lr=0.1)
    return kept[0], values


def test_activation_checkpointing_keeps_less_and_changes_nothing_else():
    """Same seed, same batch, one step: same loss, gradients, BatchNorm statistics (not counted
    twice by the recomputation) and weights; the same state_dict keys; and the forward keeps less
    for the backward."""
    cfg = SimFLEConfig.preset("tiny", view_size=32)
    setup = Setup(argparse.Namespace(device="cpu", precision="fp32"))
    batch = random_pretrain_batch(cfg, 4)
    runs = []
    for on in (False, True):
        torch.manual_seed(0)
        trainer = train.Trainer(cfg, setup, lr=0.1, weight_decay=1e-4, activation_checkpointing=on)
        torch.manual_seed(1)
        kept, values = saved_bytes_and_step(trainer, batch)
        model = trainer.raw_model
        runs.append((kept, values, {n: p.grad for n,
                                    p in model.named_parameters() if p.grad is not None},
                     model.state_dict()))
    (kept0, values0, grads0, state0), (kept1, values1, grads1, state1) = runs
    assert kept1 < 0.5 * kept0
    assert values1 == pytest.approx(values0, rel=1e-5)
    assert grads0.keys() == grads1.keys() and len(grads0) > 50
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-4, atol=1e-6, msg=name)
    assert list(state0) == list(state1)
    for name in state0:  # running_mean / running_var / num_batches_tracked included
        torch.testing.assert_close(state1[name], state0[name], rtol=1e-5, atol=1e-6, msg=name)
    # views + origin, nothing more
    assert state1["backbone.layer1.0.bn1.num_batches_tracked"].item() == 2


def test_activation_checkpointing_under_torch_compile():
    """Compiled, checkpoint takes no context_fn; the compiled backward recomputes values, never the
    BatchNorm updates, so gradients and running statistics are those of the plain module.
    (aot_eager: compiles in seconds.)"""
    torch.manual_seed(0)
    blocks = torch.nn.Sequential(*torchvision.models.resnet18().layer1)
    plain, checkpointed = copy.deepcopy(blocks), copy.deepcopy(blocks)
    for block in checkpointed:
        block.forward = functools.partial(run.checkpointed_forward, block, block.forward)
    x = torch.randn(2, 64, 8, 8)
    plain(x).square().mean().backward()
    torch.compile(checkpointed, backend="aot_eager")(x).square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad)
    for a, b in zip(plain.buffers(), checkpointed.buffers()):
        torch.testing.assert_close(b, a)
    assert checkpointed[0].bn1.num_batches_tracked.item() == 1


def test_views_augmented_on_the_device_train(tmp_path):
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--epochs", "1", "--augment", "device", "--knn-samples", "0", "--out",
                              out]) == 0
    record = metrics(out)[0]
    assert record["step"] == 2 and all(math.isfinite(record[k]) for k in ("similarity",
                                                                          "reconstruction",
                                                                          "total"))


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 1})
    real_save = torch.save

    def dies_halfway(obj, f, *a, **k):  # writes part of the file, then the process "dies"
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact


# ----------------------------------------------------------------------------- loader and precision


def test_one_loader_serves_every_epoch_with_persistent_workers():
    """train.py keeps one DataLoader with persistent workers for the whole run. The workers hold
    their own copy of the dataset, so each epoch's items must still be that epoch's augmentations
    (the epoch travels with the index), and a resumed epoch must skip exactly the batches already
    done."""
    from torch.utils.data import DataLoader, DistributedSampler

    import data
    base = data.get_dataset("synthetic", None, "train", seed=0, synthetic_size=32,
                            synthetic_count=8)
    view = data.PretrainView(base, view_size=32, origin_size=32, seed=0)
    order = DistributedSampler(view, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    sampler = run.EpochSampler(order, batch_size=4, steps_per_epoch=2)
    loader = DataLoader(view, batch_size=4, sampler=sampler, num_workers=1, persistent_workers=True,
                        collate_fn=data.collate)
    # main-process copy, set_epoch works
    reference = data.PretrainView(base, view_size=32, origin_size=32, seed=0)
    views = {}
    for epoch, start in ((0, 0), (1, 0), (2, 1)):
        sampler.set(epoch, start)
        got = [batch for batch, _ in loader]
        indices = list(order)[start * 4: 8]
        reference.set_epoch(epoch)
        want = [data.collate([reference[i] for i in indices[k:k + 4]])[0]
                for k in range(0, len(indices), 4)]
        assert len(got) == len(want) == 2 - start
        for g, w in zip(got, want):
            for a, b in zip(g, w):
                assert torch.equal(a, b)
        views[epoch] = dict(zip(indices, torch.cat([b[1] for b in got])))
    same = [i for i in views[0] if i in views[1]]
    # a new augmentation each epoch
    assert same and all(not torch.equal(views[0][i], views[1][i]) for i in same)


def test_auto_precision(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: True)
    assert run.pick_precision("auto", cpu) == "bf16"
    assert run.pick_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: False)
    assert run.pick_precision("auto", cpu) == "fp32"
    assert run.pick_precision("auto", torch.device("mps")) == "fp32"


def test_main_puts_signal_handlers_back(tmp_path):
    """train.main installs its save-and-stop handlers only for the run: a script that calls it
    (compare.py) must get its own Ctrl-C / SIGTERM behaviour back, or a later SIGTERM would be
    silently swallowed."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert train.cli(QUICK + ["--epochs", "1", "--out", str(tmp_path / "run"), "--knn-samples",
                              "0"]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_eval_landmarks_reports_the_hit_rate_trained_and_untrained(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    assert train.cli(QUICK + ["--epochs", "1", "--out", out, "--knn-samples", "0"]) == 0
    def small(*a, get=data.get_dataset, **k):
        return get(*a, **{**k, "synthetic_count": 24})
    monkeypatch.setattr(data, "get_dataset", small)
    assert evaluate.cli(["--ckpt", os.path.join(out, "last.pt"), "--mode", "landmarks", "--device",
                         "cpu"]) == 0
    report = json.load(open(os.path.join(out, "eval_landmarks_synthetic.json")))
    for key in ("hit_rate", "hit_rate_untrained"):
        assert 0 <= report[key]["semantic"] <= 1 and abs(report[key]["random"] - 12 / 49) < 0.1
        assert len(report[key]["per_group"]) == 32
    assert "landmark hit rate" in capsys.readouterr().out


def test_landmark_hit_rate_counts_landmarks_in_visible_patches():
    """Recomputed independently: for every group, the 12 patches whose upsampled group map is
    highest are visible; a landmark counts when its 16-px patch is one of them. The model is left as
    it was."""
    from simfle import SimFLE, SimFLEConfig
    torch.manual_seed(0)
    model = SimFLE(SimFLEConfig.preset("tiny", groups=4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    faces = data.get_dataset("synthetic", synthetic_count=6, split="val")
    r = landmark_hit_rate(model, faces, "cpu", batch_size=6)
    assert torch.equal(before["backbone.bn1.running_mean"],
                       model.state_dict()["backbone.bn1.running_mean"])
    # synthetic faces are drawn at 112 px
    origin = normalize(torch.stack([faces[i][0] for i in range(6)]))
    marks = torch.stack([faces[i][2] for i in range(6)])  # (6, 15, 2) pixels
    with torch.no_grad():
        attn = model.train().grouping(model.backbone.feature_map(origin))  # (6, 512, 4, 4)
    model.load_state_dict(before)
    hits = []
    for g in range(4):
        m = attn[:, g * 128:(g + 1) * 128].sum(1, keepdim=True)
        m = torch.nn.functional.interpolate(m, size=(112, 112), mode="bilinear",
                                            align_corners=False)
        scores = torch.nn.functional.avg_pool2d(m, 16).flatten(1)  # (6, 49)
        top = scores.topk(12, dim=1).indices
        patch = (marks[..., 1] // 16).long() * 7 + (marks[..., 0] // 16).long()
        kept = sum(int(p) in set(top[b].tolist()) for b in range(6) for p in patch[b])
        hits.append(kept / marks[..., 0].numel())
    assert r["per_group"] == pytest.approx(hits) and r["semantic"] == pytest.approx(sum(hits) / 4)
    # random masking drawn as in training: 12 of 49 patches visible, landmarks all inside the image
    assert abs(r["random"] - 12 / 49) < 0.06 and r["best_group"] == max(r["per_group"])
    # the fixed control: the 3x3 block at the centre of the 7x7 grid, and the patches above, left
    # and right of it
    central = {16, 17, 18, 23, 24, 25, 30, 31, 32, 10, 22, 26}
    in_central = sum(int(p) in central for p in patch.flatten())
    assert r["central"] == pytest.approx(in_central / patch.numel())


def test_recompute_batchnorm_is_the_plain_average_over_the_images():
    from simfle import Backbone
    torch.manual_seed(0)
    trunk = Backbone("resnet18")
    faces = data.get_dataset("synthetic", synthetic_count=10, synthetic_size=64)
    assert evaluate.recompute_batchnorm(trunk, faces, 32, "cpu") is trunk
    batch, _ = data.collate([data.ProbeView(faces, 32, train=False)[i] for i in range(10)])
    with torch.no_grad():
        # (10, 64, 16, 16): what bn1 normalises
        conv1 = trunk.conv1(data.probe_batch(batch, "cpu")[0])
    assert torch.allclose(trunk.bn1.running_mean, conv1.mean((0, 2, 3)), atol=1e-5)
    # unbiased, as BatchNorm keeps it
    assert torch.allclose(trunk.bn1.running_var, conv1.var((0, 2, 3)), rtol=1e-3)
    assert trunk.bn1.momentum == 0.1 and not trunk.training  # left as it was found, in eval mode
