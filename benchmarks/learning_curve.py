"""
Does pretraining learn, and from which budget? Val accuracy against images seen, one line per arm.

    python benchmarks/learning_curve.py --data fer2013 --arms simclr+semantic --seeds 0 1 \\
        --images 400000
    python benchmarks/learning_curve.py --data fer2013 --arms byol --seeds 0 --images 400000 \\
        --until 8                                                             # part of the budget
    python benchmarks/learning_curve.py --data fer2013 --arms simclr --baselines --seeds 0 \\
        --images 400000 --split test

Each arm is one pretraining run of train.py (tiny preset, plus COMMON options and the arm's own),
stopped at the end of epochs 1, 2, 4, 8, ... and of the last epoch (--stop-after-steps; the lr
schedule is the whole run's), and its trunk probed there on val: a linear probe on cached pooled
features of all training faces (eval.py's one probe: 30 epochs, batch 256, its lr chosen among
eval.PROBE_LRS on 10 % of the training faces held out) and a k-NN (k = 20, cosine) on the same
features. On faces with landmarks (synthetic) the landmark hit rate of the FaceMAE arms is measured
at the same points, beside random masking and a fixed mask of the central patches. "supervised"
trains the same trunk on the labels (cross-entropy, the probe's crop + flip, SGD, the same batch and
images seen); "lightly-byol" is BYOL as the lightly library implements it (pip install lightly, for
this benchmark only), on the same faces, trunk and budget: a cross-check of the GFL. Baselines
(--baselines) are budget-free lines: the random trunk as initialised, with BatchNorm statistics of
the training faces, and a linear classifier on pixels.

Rows are appended to --out (JSONL) as they are measured. The command is resumable: points already in
--out are not measured again, and a run continues from its last.pt in --runs (train.py --resume); if
that checkpoint is gone the run starts again from its seed and reproduces the rows it had. --until
EPOCH stops after that probe point without shortening the schedule: a later run with a larger
--until (or none) goes on along the same curve. After each point the picture (--out with .png) and a
table (.md) are redrawn from every row in --out. --split test reads the test split once, at the end:
each arm's checkpoint as it stands in --runs (nothing is trained) and the baselines, into their own
file (<data>_curve_test.jsonl).
"""
import argparse
import copy
import functools
import json
import math
import os
import shlex
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import eval as evaluate  # noqa: E402
import train  # noqa: E402
from simfle import Backbone, SimFLE, SimFLEConfig  # noqa: E402
from data_support.layouts import DatasetError
from train_support.options import build_parser
from train_support.run import save_checkpoint
from eval_support.landmarks import landmark_hit_rate
from eval_support.common import load_checkpoint, loader
from curve_rows import append_row, draw, read_rows  # noqa: E402  (this folder)
from sweep_synthetic import Pixels  # noqa: E402  (this folder: the pixels themselves as features)

# what every arm shares: the tiny preset with the options bench_fer2013.py measured faster on 48-px
# faces
COMMON = "--preset tiny --augment device --width 0.5"
OPEN = "--distill-target ffl --distill-loss cosine --alpha 1"
BYOL_LARS = ("--optimizer lars --lr 0.25 --lars-eta 0.02 --weight-decay 1e-5 --exclude-norm-bias "
             "true --warmup-epochs 1 --ema-schedule cosine --head-hidden 4096 --head-out 256")
BYOL_SGD = "--optimizer sgd --lr 0.03 --weight-decay 4e-4 --ema 0.996"
ARMS = {  # name -> the arm's own train.py options
    "byol": "--gfl byol --use-facemae false",
    "byol+random": "--gfl byol --masking random",
    "byol+semantic": "--gfl byol --masking semantic",
    "byol+recipe":  # BYOL's small-batch recipe: a higher lr, a warm-up, the EMA ramped to 1
        "--gfl byol --use-facemae false --lr 0.1 --warmup-epochs 1 --ema-schedule cosine",
    # small-scale BYOL recipes (benchmarks/README.md): solo-learn's CIFAR recipe at batch 64 (LARS,
    # lr 1.0 x B/256, eta 0.02 clipped, wd 1e-5 off BatchNorm and biases, warm-up, EMA 0.99 -> 1,
    # 4096/256 heads), and sthalles/PyTorch-BYOL's SGD recipe at batch 64; each with the predictor's
    # lr x 10
    "byol+lars": "--gfl byol --use-facemae false " + BYOL_LARS,
    "byol+lars+pred10": "--gfl byol --use-facemae false --predictor-lr-mult 10 " + BYOL_LARS,
    "byol+sgd": "--gfl byol --use-facemae false " + BYOL_SGD,
    "byol+sgd+pred10": "--gfl byol --use-facemae false --predictor-lr-mult 10 " + BYOL_SGD,
    "simclr": "--gfl simclr --use-facemae false",
    "simclr+random": "--gfl simclr --masking random",
    "simclr+semantic": "--gfl simclr --masking semantic",
    # the channel from FaceMAE opened (docs/departures.md; alpha chosen on val:
    # benchmarks/README.md)
    "simclr+random+open": "--gfl simclr --masking random " + OPEN,
    "simclr+semantic+open": "--gfl simclr --masking semantic " + OPEN,
    "supervised": None, "lightly-byol": None,  # trained here: supervised_arm, lightly_byol_arm
}
BASELINES = ("random trunk", "random trunk, BN statistics", "pixels 32x32")


# ----------------------------------------------------------------------------- rows


def probe_points(epochs):
    """Epochs 1, 2, 4, 8, ... below `epochs`, and `epochs` itself."""
    points, e = [], 1
    while e < epochs:
        points.append(e)
        e *= 2
    return points + [epochs]


def points_now(args):
    """The probe points this invocation measures: all of the budget's, or those up to --until (the
    lr schedule stays the whole budget's, so a later run with a larger --until continues the same
    curve)."""
    return [p for p in probe_points(args.epochs) if args.until is None or p <= args.until]


# ----------------------------------------------------------------------------- measuring a trunk


@functools.lru_cache(maxsize=4)
def dataset(name, root, split, seed):
    """A split, read once per process (FER2013's csv takes seconds to parse)."""
    return data.get_dataset(name, root, split, seed=seed, render=True)


def datasets(args, seed):
    """-> (train, held-out) of the probes: settings are chosen on val (FER2013's PublicTest);
    --split test reads test, once. --probe-cap N probes with N training and N/4 held-out faces drawn
    at random (dry runs)."""
    splits = (dataset(args.data, args.root, "train", seed),
              dataset(args.data, args.root, args.split, seed))
    if args.probe_cap:
        caps = args.probe_cap, args.probe_cap // 4
        splits = [data.random_subset(b, n, seed) for b, n in zip(splits, caps)]
    return splits


def measure(trunk, size, args, seed, device):
    """Linear probe (cached features, lr chosen on a train hold-out) and k-NN of a frozen trunk,
    train -> held-out split: -> {linear, knn, probe_lr}, and linear_dedup / knn_dedup on the
    held-out faces without a near-exact copy in train (data.near_duplicates; FER2013's standard
    split stays the headline). Both read the same features."""
    train_base, held_out = datasets(args, seed)
    trunk = trunk.to(device).eval()
    (tx, ty), (vx, vy) = (evaluate.frozen_features(trunk, b, size, device)
                          for b in (train_base, held_out))
    # eval.py's one probe (its lr chosen on 10 % of the training faces held out) and k-NN, as
    # train.py's verdict reads them
    linear, knn = evaluate.probe_and_knn((tx, ty), (vx, vy), held_out.classes, device, seed,
                                         duplicates=duplicates(args, seed))
    out = {"linear": linear["last_epoch_accuracy"],
           "linear_mean_class": linear["mean_class_accuracy"], "knn": knn["accuracy"],
           "probe_lr": linear["probe_lr"]}
    if "accuracy_deduplicated" in linear:
        out.update(linear_dedup=linear["accuracy_deduplicated"],
                   knn_dedup=knn["accuracy_deduplicated"],
                   held_out_duplicates=linear["held_out_duplicates"])
    return out


@functools.lru_cache(maxsize=4)
def _duplicates(name, root, split, seed):
    found = data.near_duplicates(dataset(name, root, "train", seed),
                                 dataset(name, root, split, seed))
    return None if found is None else found[0]


def duplicates(args, seed):
    """The held-out faces with a near-exact copy in train (bool per face), or None (none, or a
    --probe-cap run)."""
    return None if args.probe_cap else _duplicates(args.data, args.root, args.split, seed)


def hit_rates(model, args, seed, device):
    """Landmark hit rate of a FaceMAE model on the held-out faces, beside random masking and the
    central mask."""
    held_out = datasets(args, seed)[1]
    if not held_out.num_landmarks or not model.config.use_facemae:
        return {}
    h = landmark_hit_rate(model, held_out, device)
    return {"hit_rate": h["semantic"], "hit_rate_best_group": h["best_group"],
            "hit_rate_random": h["random"], "hit_rate_central": h["central"]}


# ----------------------------------------------------------------------------- arms


def run_folder(args, arm, seed):
    return os.path.join(args.runs, f"{args.data}-{arm}-s{seed}")


def pretrain_arm(args, arm, seed, done, device):
    """One self-supervised arm: train.py, stopped and probed at each point not yet in `done`
    (epochs)."""
    folder = run_folder(args, arm, seed)
    ckpt = os.path.join(folder, "last.pt")
    if args.split == "test":
        return read_test(args, arm, seed, done, device, ckpt)
    options = shlex.split(COMMON) + shlex.split(ARMS[arm]) + shlex.split(args.options)
    runtime = ["--device", args.device]
    if args.workers is not None:
        runtime += ["--workers", str(args.workers)]
    base = options + ["--data", args.data, "--seed", str(seed), "--epochs", str(args.epochs),
                      "--out", folder, "--knn-samples", "0", "--probe", "false"]
    base += (["--root", args.root] if args.root else []) + runtime
    for epoch in points_now(args):
        if epoch in done:
            continue
        steps = epoch * steps_per_epoch(args, seed)
        # None: no run yet
        at = load_checkpoint(ckpt)["step"] if os.path.exists(ckpt) else None
        # the checkpoint is past this point (a row was lost): start again
        if at is not None and at > steps:
            os.remove(ckpt)
            at = None
        # a checkpoint inside an epoch (an interrupted run) resumes where it stopped
        if at is None or at < steps:
            argv = ["--resume", ckpt] + runtime if at is not None else base
            argv = argv + ["--stop-after-steps", str(steps)]
            t0 = time.time()
            code = train.main(argv)
            if code != 0:
                raise SystemExit(f"train.py exited {code} ({' '.join(argv)}); rerun this "
                                 "command to continue")
            add_seconds(folder, time.time() - t0, restart=at is None)
            print(f"{arm} seed {seed}: epoch {epoch} reached in {time.time() - t0:.0f} s",
                  flush=True)
        state = load_checkpoint(ckpt)
        model, cfg = evaluate.load_model(ckpt, state)
        row = {"arm": arm, "seed": seed, "epoch": epoch, "images": state["step"] * args.batch_size,
               "options": " ".join(options),
               **measure(model.backbone, cfg.view_size, args, seed, device),
               **hit_rates(model, args, seed, device), **from_metrics(folder, epoch),
               "train_seconds": add_seconds(folder, 0.0)}
        append_row(args.out, row)
        draw(args.out)


def from_metrics(folder, epoch):
    """From the run's metrics.jsonl at this epoch: the FFL's share of the ResNet's gradient (L_d's)
    and the collapse monitor's figures, those the run measured ({} if none)."""
    rows = [r for r in read_rows(os.path.join(folder, "metrics.jsonl")) if r["epoch"] == epoch]
    if not rows:
        return {}
    keys = {"grad_share_distillation": "ffl_grad_share",
            "embedding_std_sqrt_d": "embedding_std_sqrt_d", "embedding_cosine": "embedding_cosine"}
    return {ours: rows[-1][theirs] for theirs, ours in keys.items() if theirs in rows[-1]}


def read_test(args, arm, seed, done, device, ckpt, trunk=None, load=None):
    """--split test: the arm's checkpoint as it stands in --runs, probed on test once (nothing is
    trained; a second call finds the row and does nothing). train.py's checkpoints load themselves;
    the script's own arms pass their trunk and a `load(state)` that puts the weights into it."""
    if done:
        return
    if not os.path.exists(ckpt):
        raise SystemExit(f"error: no checkpoint {ckpt} to read on test: run this arm's curve on "
                         "val first")
    if trunk is None:
        state = load_checkpoint(ckpt)
        model, cfg = evaluate.load_model(ckpt, state)
        trunk, size = model.backbone, cfg.view_size
        epoch = state["step"] // steps_per_epoch(args, seed)
        images = state["step"] * args.batch_size
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        load(state)
        size = SimFLEConfig.preset("tiny", **config_overrides(args)).view_size
        epoch = state["epoch"]
        images = epoch * steps_per_epoch(args, seed) * args.batch_size
    append_row(args.out, {"arm": arm, "seed": seed, "epoch": epoch, "images": images,
                          "split": "test", **measure(trunk, size, args, seed, device)})
    draw(args.out)


def add_seconds(folder, seconds, restart=False):
    """The run's training wall time (train.py calls, probes excluded), kept in its folder: -> the
    total so far."""
    path = os.path.join(folder, "curve_seconds.json")
    total = 0.0
    if os.path.exists(path) and not restart:
        with open(path) as f:
            total = json.load(f)["seconds"]
    with open(path, "w") as f:
        json.dump({"seconds": total + seconds}, f)
    return total + seconds


def steps_per_epoch(args, seed):
    n = len(dataset(args.data, args.root, "train", seed))
    return min(n // args.batch_size, args.max_steps or n)


def own_loop_arm(args, arm, seed, done, device, model, optimizer, one_epoch, trunk):
    """An arm this script trains itself (supervised, lightly-byol): one_epoch(epoch) trains an epoch
    of at most steps_per_epoch batches; the model and optimiser are saved after each epoch and the
    trunk probed at the same points as train.py's arms. Resumes from its checkpoint."""
    folder = run_folder(args, arm, seed)
    ckpt = os.path.join(folder, "arm.pt")
    # no folder made: a test read of a run that never was is an error, not an empty run
    if args.split == "test":
        return read_test(args, arm, seed, done, device, ckpt, trunk,
                         lambda state: model.load_state_dict(state["model"]))
    os.makedirs(folder, exist_ok=True)
    at, seconds = 0, 0.0
    if os.path.exists(ckpt):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"]), optimizer.load_state_dict(state["optimizer"])
        at, seconds = state["epoch"], state["seconds"]
    size = SimFLEConfig.preset("tiny", **config_overrides(args)).view_size
    for epoch in range(at, args.epochs):
        if all(p in done for p in points_now(args) if p > epoch):
            break
        t0 = time.time()
        model.train()
        one_epoch(epoch)
        seconds += time.time() - t0
        save_checkpoint(ckpt, {"model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                                     "seconds": seconds})
        if epoch + 1 in points_now(args) and epoch + 1 not in done:
            row = {"arm": arm, "seed": seed, "epoch": epoch + 1,
                   "images": (epoch + 1) * steps_per_epoch(args, seed) * args.batch_size,
                   "options": COMMON,
                   **measure(trunk, size, args, seed, device), "train_seconds": seconds}
            append_row(args.out, row)
            draw(args.out)


def cosine_lr(optimizer, base_lr, epoch, epochs):
    for group in optimizer.param_groups:
        group["lr"] = base_lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def supervised_arm(args, seed, done, device):
    """The trunk trained on the labels, with the pretraining's batch and images seen: SGD momentum
    0.9, lr 0.05 x batch/256 cosine per epoch (train.py's schedule), wd 1e-4, the probe's
    RandomResizedCrop + flip."""
    cfg = SimFLEConfig.preset("tiny", **config_overrides(args))
    train_base = dataset(args.data, args.root, "train", seed)
    torch.manual_seed(seed)
    trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
    head = torch.nn.Linear(trunk.dim, len(train_base.classes))
    model = torch.nn.Sequential(trunk, head).to(device)
    lr = 0.05 * args.batch_size / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    view = data.ProbeView(train_base, cfg.view_size, train=True, seed=seed)

    def one_epoch(epoch):
        view.set_epoch(epoch)
        cosine_lr(optimizer, lr, epoch, args.epochs)
        batches = loader(view, args.batch_size, 0, shuffle=True, seed=seed + epoch)
        for _, (b, _) in zip(range(steps_per_epoch(args, seed)), batches):
            x, y, _ = data.probe_batch(b, device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    own_loop_arm(args, "supervised", seed, done, device, model, optimizer, one_epoch, trunk)


class PilFaces(torch.utils.data.Dataset):
    """A FaceDataset's images as PIL images through a transform (lightly's transforms take PIL
    images)."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        import torchvision.transforms.functional as TF
        return self.transform(TF.to_pil_image(self.base[i][0]))


def lightly_byol_arm(args, seed, done, device):
    """Cross-check of the GFL: BYOL as a widely used library implements it (lightly: its projection
    and prediction heads, negative-cosine loss, momentum update and BYOLTransform views, with its
    example's SGD lr 0.06 and momentum 0.996 -> 1 on a cosine), on the same faces, trunk (the arms'
    narrow ResNet), view size, batch and images seen. lightly is installed for this benchmark only
    (pip install lightly), never a requirement of the project."""
    try:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import update_momentum
        from lightly.transforms.byol_transform import (BYOLTransform, BYOLView1Transform,
                                                       BYOLView2Transform)
        from lightly.utils.scheduler import cosine_schedule
    except ImportError:
        raise SystemExit("error: the lightly-byol arm needs the lightly package, for this "
                         "benchmark only: pip install lightly") from None
    cfg = SimFLEConfig.preset("tiny", **config_overrides(args))
    torch.manual_seed(seed)
    trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
    model = torch.nn.ModuleDict({"backbone": trunk,
                                 "projection": BYOLProjectionHead(trunk.dim, 1024, 256),
                                 "prediction": BYOLPredictionHead(256, 1024, 256)})
    model["target_backbone"] = copy.deepcopy(trunk).requires_grad_(False)
    model["target_projection"] = copy.deepcopy(model["projection"]).requires_grad_(False)
    model = model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.06)
    size = cfg.view_size
    views = PilFaces(dataset(args.data, args.root, "train", seed), BYOLTransform(
        BYOLView1Transform(input_size=size), BYOLView2Transform(input_size=size)))
    criterion = NegativeCosineSimilarity()

    def one_epoch(epoch):
        m = cosine_schedule(epoch, args.epochs, 0.996, 1)
        batches = torch.utils.data.DataLoader(views, batch_size=args.batch_size, shuffle=True,
                                              drop_last=True,
                                              generator=torch.Generator().manual_seed(seed + epoch))
        for _, (x0, x1) in zip(range(steps_per_epoch(args, seed)), batches):
            update_momentum(model["backbone"], model["target_backbone"], m)
            update_momentum(model["projection"], model["target_projection"], m)
            x0, x1 = x0.to(device), x1.to(device)
            p0, p1 = (model["prediction"](model["projection"](model["backbone"](x)))
                      for x in (x0, x1))
            with torch.no_grad():
                z0, z1 = (model["target_projection"](model["target_backbone"](x)) for x in (x0, x1))
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    own_loop_arm(args, "lightly-byol", seed, done, device, model, optimizer, one_epoch, trunk)


def config_overrides(args):
    """The model fields COMMON and --options set (for the arms that do not go through train.py)."""
    parsed = build_parser().parse_args(shlex.split(COMMON) + shlex.split(args.options))
    return {f: getattr(parsed, f) for f in SimFLEConfig.__dataclass_fields__
            if getattr(parsed, f) is not None}


def baselines(args, seed, done, device):
    """Budget-free lines: the random trunk of the arms' architecture as initialised (train.py seeds
    torch right before it builds the model) and with BatchNorm statistics of the training faces, and
    pixels at 32x32."""
    cfg = SimFLEConfig.preset("tiny", **config_overrides(args))
    torch.manual_seed(seed)
    trunk = SimFLE(cfg).backbone
    train_base = datasets(args, seed)[0]
    trunks = {"random trunk": (trunk, cfg.view_size),
              "random trunk, BN statistics": (evaluate.recompute_batchnorm(
                  copy.deepcopy(trunk), train_base, cfg.view_size, device), cfg.view_size),
              "pixels 32x32": (Pixels(32), 32)}
    for name, (t, size) in trunks.items():
        if name not in done:
            append_row(args.out, {"arm": name, "seed": seed, "epoch": 0, "images": 0,
                                  "options": COMMON,
                                  **({"split": "test"} if args.split == "test" else {}),
                                  **measure(t, size, args, seed, device)})
    # where the hit rate starts
    if train_base.num_landmarks and "semantic masking, untrained" not in done:
        torch.manual_seed(seed)
        append_row(args.out, {"arm": "semantic masking, untrained", "seed": seed, "epoch": 0,
                              "images": 0, "options": COMMON,
                              **hit_rates(SimFLE(cfg), args, seed, device)})
    draw(args.out)


# ----------------------------------------------------------------------------- picture and table


# ----------------------------------------------------------------------------- command line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fer2013", choices=["fer2013", "synthetic"])
    p.add_argument("--root", default=None, help="dataset folder (default: data/<data>)")
    p.add_argument("--arms", default="", help=f"comma-separated, of: {', '.join(ARMS)}")
    p.add_argument("--baselines", action="store_true", help="also the budget-free baselines")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--images", type=int, default=200_000,
                   help="pretraining budget per arm, in images seen")
    p.add_argument("--epochs", type=int, default=None,
                   help="the budget in epochs instead (overrides --images)")
    p.add_argument("--until", type=int, default=None, metavar="EPOCH",
                   help="stop after the probe point at this epoch (the schedule stays --images'); "
                        "rerun to go on")
    p.add_argument("--batch-size", type=int, default=64, help="the tiny preset's")
    p.add_argument("--options", default="",
                   help="more train.py options for every arm, e.g. '--crop-scale 0.3'")
    p.add_argument("--split", default="val", choices=["val", "test"],
                   help="held-out split: val to choose; test once, for the checkpoints as they "
                        "stand (no training)")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (dry runs)")
    p.add_argument("--runs", default="runs/learning_curve")
    p.add_argument("--out", default=None,
                   help="rows (JSONL; default benchmarks/results/<data>_curve[_test].jsonl)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps (training and probes)")
    p.add_argument("--workers", type=int, default=None,
                   help="train.py's data-loading processes (default: its own)")
    p.add_argument("--probe-cap", type=int, default=None, metavar="N",
                   help="probe with N training and N/4 held-out faces drawn at random instead of "
                        "all (dry runs)")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    suffix = "_test" if args.split == "test" else ""
    args.out = args.out or f"benchmarks/results/{args.data}_curve{suffix}.jsonl"
    if args.plot_only:
        draw(args.out)
        return 0
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    if any(r.get("split", "val") != args.split for r in read_rows(args.out)):
        p.error(f"{args.out} holds rows of another split: val and test rows go to their own files "
                "(--out)")
    if "--batch-size" in args.options:
        p.error("give the batch size as --batch-size, not inside --options")
    args.options += f" --batch-size {args.batch_size}"
    if args.max_steps:
        args.options += f" --max-steps {args.max_steps}"
    device = torch.device(args.device)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    try:
        per_epoch = steps_per_epoch(args, args.seeds[0]) * args.batch_size
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
    args.epochs = args.epochs or max(1, math.ceil(args.images / per_epoch))
    if args.split == "test":
        print(f"{args.data}: the checkpoints in {args.runs} as they stand, probed on test once -> "
              f"{args.out}", flush=True)
    else:
        print(f"{args.data}: {per_epoch:,} images an epoch; {args.epochs} epochs = "
              f"{args.epochs * per_epoch:,} images per arm; probed at epochs {points_now(args)} on "
              "val", flush=True)
    for seed in args.seeds:
        rows = [r for r in read_rows(args.out) if r["seed"] == seed]
        if args.baselines:
            baselines(args, seed, {r["arm"] for r in rows}, device)
        for arm in arms:
            done = {r["epoch"] for r in rows if r["arm"] == arm}
            if arm == "supervised":
                supervised_arm(args, seed, done, device)
            elif arm == "lightly-byol":
                lightly_byol_arm(args, seed, done, device)
            else:
                pretrain_arm(args, arm, seed, done, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
