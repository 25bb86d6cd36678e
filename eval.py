"""
Evaluate a pretrained SimFLE trunk, rebuilt from the checkpoint alone (no model flags).

    python eval.py --ckpt runs/rafdb-paper/last.pt --data rafdb  # linear probe (lr chosen)
    python eval.py --ckpt runs/synthetic-tiny/last.pt --mode landmarks  # landmark probe (NME)
    python eval.py --ckpt random --preset tiny                   # the randomly initialised baseline
    python eval.py --ckpt runs/rafdb-paper/last.pt --predict face1.jpg face2.jpg

Modes: linear (default; frozen trunk, BatchNorm in eval mode), knn, finetune (whole network),
landmarks (linear regression from the frozen last feature map to landmark coordinates; for a
checkpoint with FaceMAE also the landmark hit rate of its semantic masking, trained and at
initialisation).
"""
import argparse
import copy
import dataclasses
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from simfle import Backbone, SimFLE, SimFLEConfig
from data_support.device_augment import normalize
from data_support.layouts import BadImageError, DatasetError, read_image
from data_support.synthetic_faces import LOOKS
from eval_support.common import (CheckpointError, HelpFormatter, load_checkpoint, loader,
                                 pick_device, run_cli)
from eval_support.landmarks import hit_rate_trained_and_untrained, landmark_probe
from eval_support.report import print_report, print_verdict, save_confusion_png

TRUNK_FORMAT = "simfle-trunk-v1"  # eval.py --export: the trunk alone (hubconf.py reads it)
PROBE_FORMAT = "simfle-probe-v1"


# ----------------------------------------------------------------------------- the trunk


def load_trunk(ckpt, preset="tiny", state=None):
    """Trunk + its config from a train.py checkpoint, or a random one: -> (Backbone, SimFLEConfig,
    name).

    `state`: the checkpoint already read by load_checkpoint(ckpt), so the file is read only once.
    """
    if ckpt == "random":
        cfg = SimFLEConfig.preset(preset)
        return Backbone(cfg.backbone, cfg.stem, cfg.width), cfg, f"random {cfg.backbone}"
    state = state if state is not None else load_checkpoint(ckpt)
    cfg = state["config_obj"]
    trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
    weights = {k[len("backbone."):]: v for k,
               v in state["model"].items() if k.startswith("backbone.")}
    try:
        trunk.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt}: its trunk does not match its own config ({cfg.backbone}): "
                              f"{str(e).splitlines()[0]}") from None
    return trunk, cfg, ckpt


def export_trunk(ckpt, path, preset="tiny"):
    """Write the trunk alone, for other code (hubconf.py; torch.hub): its state_dict under
    torchvision's key names (a torchvision ResNet's, fc.* missing) and its SimFLEConfig as JSON,
    only tensors and strings, so that the file loads with torch.load(weights_only=True). -> 0"""
    trunk, cfg, name = load_trunk(ckpt, preset)
    torch.save({"format": TRUNK_FORMAT, "config": json.dumps(dataclasses.asdict(cfg)),
                "state_dict": trunk.state_dict()}, path)
    millions = sum(p.numel() for p in trunk.parameters()) / 1e6
    print(f"wrote {path}: the {cfg.backbone} trunk of {name} ({millions:.1f} M parameters, width "
          f"{cfg.width}, stem {cfg.stem}); load it with torch.hub.load(<this folder>, "
          f"\"simfle_trunk\", source=\"local\", checkpoint=\"{path}\")")
    return 0


def load_model(ckpt, state=None):
    """A train.py checkpoint's whole SimFLE (for the masking it learned): -> (SimFLE, config)."""
    state = state if state is not None else load_checkpoint(ckpt)
    model = SimFLE(state["config_obj"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{ckpt} does not fit its own config: {first}") from None
    return model, state["config_obj"]


@torch.no_grad()
def recompute_batchnorm(trunk, dataset, size, device, workers=0):
    """A trunk's BatchNorm running statistics recomputed as plain averages over a dataset's resized
    images.

    A random trunk's BatchNorm layers hold their initial statistics (mean 0, variance 1): in eval
    mode they do nothing. A trained trunk's hold statistics of real images. This puts a random trunk
    on that footing, to tell what training changed in the weights from what it changed in the
    statistics alone. -> the trunk.
    """
    trunk = trunk.to(device)
    norms = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over every batch
    trunk.train()
    for batch, _ in loader(data.ProbeView(dataset, size, train=False), 256, workers):
        if batch is not None:
            trunk(data.probe_batch(batch, device)[0])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return trunk.eval()


# ----------------------------------------------------------------------------- features and metrics


@torch.no_grad()
def embed(trunk, loader, device):
    """Pooled trunk features of a probe loader: -> (n,C) features, (n,) labels."""
    feats, labels = [], []
    for batch, _ in loader:
        if batch is None:
            continue
        images, y, _ = data.probe_batch(batch, device)
        feats.append(trunk(images).float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def frozen_features(trunk, dataset, size, device, workers=0):
    """Pooled features of a dataset's images resized to size² (no augmentation): -> (n,C), (n,)."""
    return embed(trunk, loader(data.ProbeView(dataset, size, train=False), 256, workers), device)


def knn_predict(train_x, train_y, test_x, num_classes, k=20, temperature=0.07):
    """Weighted k-NN on cosine similarity (the usual self-supervised monitor): -> classes."""
    train_x, test_x = torch.nn.functional.normalize(train_x,
                                                    dim=1), torch.nn.functional.normalize(test_x,
                                                                                          dim=1)
    sim, idx = (test_x @ train_x.T).topk(min(k, len(train_x)), dim=1)
    votes = torch.zeros(len(test_x), num_classes).scatter_add_(1, train_y[idx],
                                                               (sim / temperature).exp())
    return votes.argmax(1)


def classification_report(pred, target, classes, duplicates=None):
    """Accuracy, mean class accuracy, per-class accuracy and the confusion matrix (rows: true
    class); with `duplicates` (bool per scored face, data.near_duplicates) also the accuracy on the
    faces without a copy in the training set."""
    K = len(classes)
    confusion = torch.zeros(K, K, dtype=torch.long)
    confusion.index_put_((target, pred), torch.ones_like(target), accumulate=True)
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()
    present = confusion.sum(1) > 0
    return {"accuracy": (pred == target).float().mean().item(),
            "mean_class_accuracy": per_class[present].mean().item(),
            "per_class_accuracy": {c: per_class[i].item() for i, c in enumerate(classes)},
            "confusion": confusion.tolist(), **deduplicated(pred, target, duplicates)}


def mark_copies(train_base, scored):
    """scored.duplicates = its faces with a near-exact copy in train_base (data.near_duplicates),
    when some have one: -> their number (0: none)."""
    found = data.near_duplicates(train_base, scored)
    if found is None or not found[0].any():
        return 0
    scored.duplicates = found[0]
    return int(found[0].sum())


def deduplicated(pred, target, duplicates):
    """-> {accuracy_deduplicated, held_out_duplicates} if some scored faces are copies, else {}."""
    if duplicates is None or not duplicates.any():
        return {}
    keep = ~duplicates
    return {"accuracy_deduplicated": (pred[keep] == target[keep]).float().mean().item(),
            "held_out_duplicates": int(duplicates.sum())}


# ----------------------------------------------------------------------------- protocols


def probe_head(dim, num_classes):
    """A linear classifier on standardised features: parameter-free BatchNorm, then Linear(C, K) ~
    N(0, 0.01).

    The BatchNorm (as in MAE's linear probe) only standardises each feature with statistics of the
    training set, so the head stays one affine map; without it the paper's lr (2.0 at batch 1024)
    diverges on features whose scale differs from trunk to trunk, and a random trunk and a trained
    one would not be compared fairly.
    """
    linear = nn.Linear(dim, num_classes)
    nn.init.normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


# The one linear probe every user-facing path runs (eval.py --mode linear, train.py's verdict, the
# benchmarks, the notebook): cached pooled features of the un-augmented training faces, 30 epochs,
# batch 256, its lr chosen per trunk among PROBE_LRS on the training faces alone: on FER2013 a large
# lr hides most of what a trunk learned, by how much differs per trunk (docs/departures.md).
PROBE_LRS = (1.0, 0.3, 0.1, 0.03, 0.01)
PROBE_EPOCHS, PROBE_BATCH = 30, 256
# the paper's protocol (§4.1): augmented views, 100 epochs, batch 1024, lr 0.5 x batch / 256
PAPER_EPOCHS, PAPER_BATCH = 100, 1024


def choose_probe_lr(tx, ty, classes, device="cpu", seed=0, epochs=PROBE_EPOCHS,
                    batch_size=PROBE_BATCH, lrs=PROBE_LRS):
    """The probe's lr for these training features, chosen on the training faces alone: on 10 % of
    them held out, or by 5-fold cross-validation when there are fewer than 2,000 (few labels). The
    held-out split is never seen. -> (lr, {lr: hold-out accuracy}); ties go to the larger lr."""
    order = torch.randperm(len(tx), generator=torch.Generator().manual_seed(seed))
    folds = order.chunk(5) if len(tx) < 2000 else [order[:len(tx) // 10]]
    scores = {}
    for lr in tqdm(lrs, desc="probe lr, on a train hold-out", **data.progress_options()):
        right = 0.0
        for held in folds:
            fit = order[~torch.isin(order, held)]
            report, _ = train_head(None, (tx[fit], ty[fit]), (tx[held], ty[held]), classes,
                                   device=device, epochs=epochs, batch_size=batch_size, lr=lr,
                                   seed=seed, progress=False)
            right += report["last_epoch_accuracy"] * len(held)
        scores[lr] = right / sum(len(held) for held in folds)
    return max(scores, key=scores.get), scores


def probe_features(train, test, classes, device="cpu", seed=0, lr=None, epochs=PROBE_EPOCHS,
                   batch_size=PROBE_BATCH, duplicates=None):
    """The one probe on features already computed: train (features, labels), test (features,
    labels); lr None: chosen by choose_probe_lr. -> (report with probe_lr and probe_lr_scores,
    head)."""
    scores = None
    if lr is None:
        lr, scores = choose_probe_lr(*train, classes, device, seed, epochs, batch_size)
    report, head = train_head(None, train, test, classes, device=device, epochs=epochs,
                              batch_size=batch_size, lr=lr, seed=seed, duplicates=duplicates)
    report.update({"protocol": "chosen" if scores else "fixed lr", "probe_lr": lr,
                   "probe_lr_scores": {str(k): v for k, v in (scores or {}).items()}})
    return report, head


def probe_and_knn(train, test, classes, device="cpu", seed=0, epochs=PROBE_EPOCHS, duplicates=None):
    """Both opinions of cached features, train and test (features, labels), as the verdict and
    learning_curve.py read a trunk: the one probe and k-NN. -> (linear report, k-NN report)."""
    linear, _ = probe_features(train, test, classes, device, seed, epochs=epochs,
                               duplicates=duplicates)
    return linear, knn_report(train, test, classes, duplicates)


def linear_probe(trunk, train_base, test_base, size, device, protocol="chosen", epochs=None,
                 batch_size=None, lr=None, workers=0, seed=0):
    """Linear probe of a frozen trunk (BN in eval mode): Linear(C, K) ~ N(0, 0.01) on standardised
    features, SGD momentum 0.9, no weight decay, constant lr, cross-entropy. Protocol "chosen": the
    one probe (probe_features): cached features, 30 epochs, batch 256, lr chosen on a train hold-out
    (or `lr` if given). "paper": the paper's protocol, training on RandomResizedCrop + flip views,
    100 epochs, batch 1024, lr 0.5 x batch / 256. -> (report, head)."""
    trunk = trunk.to(device).eval().requires_grad_(False)
    test = frozen_features(trunk, test_base, size, device, workers)
    if protocol == "paper":
        epochs, batch_size = epochs or PAPER_EPOCHS, batch_size or PAPER_BATCH
        report, head = train_head(trunk, None, test, test_base.classes, train_base, size, device,
                                  epochs, batch_size, lr, workers, seed, test_base.duplicates)
        report["protocol"] = "paper"
        return report, head
    if protocol != "chosen":
        raise ValueError(f"unknown probe protocol {protocol!r}: chosen or paper")
    train = frozen_features(trunk, train_base, size, device, workers)
    return probe_features(train, test, test_base.classes, device, seed, lr,
                          epochs or PROBE_EPOCHS, batch_size or PROBE_BATCH, test_base.duplicates)


def train_head(trunk, cached, test, classes, train_base=None, size=None, device="cpu", epochs=100,
               batch_size=1024, lr=None, workers=0, seed=0, duplicates=None, progress=True):
    """The probe head's training at one constant lr (None: the paper's 0.5 x batch / 256): on
    `cached` (train features, labels), or with cached None on augmented train_base images the
    frozen trunk embeds every epoch; scored on `test` (features, labels) after every epoch.
    -> (report, head)."""
    torch.manual_seed(seed)
    test_x, test_y = test
    batch_size = min(batch_size, len(cached[0]) if cached is not None else len(train_base))
    lr = lr if lr is not None else 0.5 * batch_size / 256
    head = probe_head(test_x.shape[1], len(classes)).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    features = "cached" if cached is not None else "augmented"
    if cached is not None:
        cached_x, cached_y = cached
    else:
        train_view = data.ProbeView(train_base, size, train=True, seed=seed)
    history = []
    for epoch in tqdm(range(epochs), desc=f"linear probe ({features}, lr {lr:g})",
                      disable=not progress, **data.progress_options()):
        if features == "cached":
            order = torch.randperm(len(cached_x),
                                   generator=torch.Generator().manual_seed(seed + epoch))
            batches = ((cached_x[i].to(device),
                        cached_y[i].to(device)) for i in order.split(batch_size))
        else:
            train_view.set_epoch(epoch)
            batches = ((trunk(x).float(), y) for x, y, _ in
                       (data.probe_batch(b, device) for b, _ in loader(train_view, batch_size,
                                                                       workers, True, seed + epoch)
                        if b is not None))
        for x, y in batches:
            loss = F.cross_entropy(head(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            right = head(test_x.to(device)).argmax(1).cpu() == test_y
            history.append(right.float().mean().item())
        head.train()
    head.eval()
    with torch.no_grad():
        pred = head(test_x.to(device)).argmax(1).cpu()
    report = classification_report(pred, test_y, classes, duplicates)
    best = max(range(epochs), key=lambda i: history[i])
    report.update({"mode": "linear", "features": features, "epochs": epochs,
                   "batch_size": batch_size, "lr": lr,
                   "last_epoch_accuracy": history[-1], "best_epoch_accuracy": history[best],
                   "best_epoch": best + 1, "history": history})
    return report, head.cpu()


def knn_report(train, test, classes, duplicates=None, k=20):
    """Weighted k-NN of cached features, train and test (features, labels): -> its report."""
    report = classification_report(knn_predict(*train, test[0], len(classes), k), test[1], classes,
                                   duplicates)
    return {**report, "mode": "knn", "k": k}


def knn_eval(trunk, train_base, test_base, size, device, k=20, workers=0):
    """Weighted k-NN on frozen pooled features (cosine similarity, k = 20)."""
    trunk = trunk.to(device).eval()
    train, test = (frozen_features(trunk, b, size, device, workers)
                   for b in (train_base, test_base))
    return knn_report(train, test, test_base.classes, test_base.duplicates, k)


def finetune(trunk, train_base, test_base, size, device, epochs=30, batch_size=256, lr=None,
             workers=0, seed=0, every_epoch=True):
    """Fine-tune the whole network + a linear head: SGD momentum 0.9, wd 1e-4, cosine lr, RRC +
    flip. The test split is scored after every epoch (the history eval.py draws), or with
    every_epoch=False after the last one only."""
    torch.manual_seed(seed)
    classes = test_base.classes
    batch_size = min(batch_size, len(train_base))
    lr = lr if lr is not None else 0.01 * batch_size / 256
    model = nn.Sequential(trunk, nn.Linear(trunk.dim, len(classes))).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    train_view = data.ProbeView(train_base, size, train=True, seed=seed)
    test_loader = loader(data.ProbeView(test_base, size, train=False), 256, workers)
    history = []
    for epoch in tqdm(range(epochs), desc="fine-tune", **data.progress_options()):
        model.train()
        train_view.set_epoch(epoch)
        for b, _ in loader(train_view, batch_size, workers, True, seed + epoch):
            if b is None:
                continue
            x, y, _ = data.probe_batch(b, device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if every_epoch or epoch == epochs - 1:
            model.eval()
            logits, y = embed(model, test_loader, device)
            history.append((logits.argmax(1) == y).float().mean().item())
    report = classification_report(logits.argmax(1), y, classes, test_base.duplicates)
    best = max(range(len(history)), key=lambda i: history[i])
    report.update({"mode": "finetune", "epochs": epochs, "lr": lr, "batch_size": batch_size,
                   "last_epoch_accuracy": history[-1], "best_epoch_accuracy": history[best],
                   "best_epoch": epochs - len(history) + best + 1, "history": history})
    return report


# ----------------------------------------------------------------------------- after pretraining


def compare_with_random(ckpt, data_name, root, device, epochs=PROBE_EPOCHS, seed=0, workers=0,
                        look="aligned", count=None):
    """The verdict after pretraining: the trained trunk against two random trunks (as initialised,
    and with BatchNorm statistics of the training faces), each by the one linear probe (its lr
    chosen on a train hold-out) and by k-NN (no lr to get wrong), on val where the dataset has one,
    else test. Printed, and written to probe_vs_random_<data>.json beside the checkpoint.

    count: the number of synthetic faces in the train split (train.py's --num-synthetic).
    -> {trunk name: {linear: report, knn: report}}."""
    split = "val" if data_name in data.SPLITS_WITH_VAL else "test"
    train_base = data.get_dataset(data_name, root, "train", seed=seed, render=True,
                                  synthetic_look=look, synthetic_count=count)
    test_base = data.get_dataset(data_name, root, split, seed=seed, render=True,
                                 synthetic_look=look)
    mark_copies(train_base, test_base)
    trained, cfg, _ = load_trunk(ckpt)
    torch.manual_seed(seed)  # the trunk as train.py --seed seed initialised it (torch seeded, then
    random_trunk = SimFLE(cfg).backbone  # the model built), as learning_curve.py's random trunk
    # the same random weights with BatchNorm statistics of the faces, as a trained trunk has them
    random_bn = recompute_batchnorm(copy.deepcopy(random_trunk), train_base, cfg.view_size, device,
                                    workers)
    results = {}
    for name, trunk in (("pretrained", trained), ("random", random_trunk),
                        ("random, BN", random_bn)):
        train, test = (frozen_features(trunk.to(device).eval(), b, cfg.view_size, device, workers)
                       for b in (train_base, test_base))
        linear, knn = probe_and_knn(train, test, test_base.classes, device, seed, epochs,
                                    test_base.duplicates)
        results[name] = {"linear": linear, "knn": knn}
    print_verdict(results, data_name, split, len(test_base), epochs, 1 / len(test_base.classes))
    with open(os.path.join(os.path.dirname(ckpt), f"probe_vs_random_{data_name}.json"), "w") as f:
        json.dump({"split": split, **results}, f, indent=2)
    return results


def predict(ckpt, images, device):
    """Expression probabilities for image files, with the probe head a linear-probe run saved."""
    path = os.path.join(os.path.dirname(ckpt), "probe_head.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"no probe head at {path}: run a linear probe first "
                              f"(python eval.py --ckpt {ckpt} --data <dataset>)")
    head_state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(head_state, dict) or head_state.get("format") != PROBE_FORMAT:
        raise CheckpointError(f"{path} is not a probe head saved by eval.py")
    trunk, _, _ = load_trunk(ckpt)
    head = probe_head(trunk.dim, len(head_state["classes"]))
    head.load_state_dict(head_state["head"])
    trunk, head = trunk.to(device).eval(), head.to(device).eval()
    size = head_state["size"]
    for image_path in images:
        try:
            img = read_image(image_path)
        except BadImageError as e:
            print(f"{image_path}: skipped ({e})", file=sys.stderr)
            continue
        x = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        x = normalize(x.round().clamp(0, 255).to(torch.uint8)).to(device)
        with torch.no_grad():
            probs = F.softmax(head(trunk(x)), dim=1)[0].cpu()
        order = probs.argsort(descending=True)
        print(f"{image_path}: {head_state['classes'][order[0]]} ("
              + ", ".join(f"{head_state['classes'][i]} {probs[i]:.2f}" for i in order) + ")")


# ----------------------------------------------------------------------------- command line


def build_parser():
    p = argparse.ArgumentParser(description="Evaluate a SimFLE trunk.",
                                formatter_class=HelpFormatter)
    add = p.add_argument
    add("--ckpt", required=True, help="a train.py checkpoint (last.pt), or 'random'")
    add("--data", default=None, choices=list(data.DATASETS), help="default: the checkpoint's data")
    add("--root", default=None, help="dataset folder (default: data/<data>)")
    add("--mode", default="linear", choices=["linear", "knn", "finetune", "landmarks"])
    add("--preset", default="tiny", choices=["tiny", "paper"], help="backbone of --ckpt random")
    add("--protocol", default="chosen", choices=["chosen", "paper"],
        help="linear probe: chosen = cached features, 30 epochs, batch 256, lr chosen among "
             f"{', '.join(map(str, PROBE_LRS))} on 10 %% of train held out (what every number of "
             "this project reports); paper = the paper's: augmented views, 100 epochs, batch "
             "1024, lr 0.5 x batch / 256")
    add("--epochs", type=int, default=None,
        help="probe / fine-tuning epochs (default: chosen 30, paper 100, finetune 30)")
    add("--batch-size", type=int, default=None,
        help="default: chosen 256, paper 1024, finetune 256")
    add("--lr", type=float, default=None,
        help="a fixed lr instead (default: chosen on train (chosen), 0.5 x batch/256 (paper), "
             "0.01 x batch/256 (finetune))")
    add("--device", default="auto")
    add("--workers", type=int, default=0)
    add("--seed", type=int, default=0)
    add("--labels-per-class", type=int, default=None, metavar="N",
        help="train the probe / fine-tuning on N labelled images per class of the train split (a "
             "seeded, class-balanced subset drawn with --seed; the rest unused); default: all")
    add("--look", default=None, choices=list(LOOKS),
        help="synthetic faces: default the look the checkpoint was trained on (aligned for --ckpt "
             "random)")
    add("--split", default="test", choices=["test", "val"],
        help="where to score: test, or val to choose settings (synthetic faces and FER2013's "
             "PublicTest)")
    add("--out", default=None, help="folder for the JSON / PNG (default: beside the checkpoint)")
    add("--predict", nargs="+", metavar="IMG", help="print the expression of these images")
    add("--export", default=None, metavar="PATH",
        help="write the trunk alone to PATH (torchvision key names + its config; see hubconf.py) "
             "and stop")
    return p


def evaluation_data(args, state):
    """The train split (or its --labels-per-class subset), the split to score -> (train, scored)"""
    if args.look is None:  # checkpoints from before the look option were trained on the scene look
        args.look = "aligned" if state is None else state["train"].get("look", "scene")
    train_base = data.get_dataset(args.data, args.root, "train", seed=args.seed,
                                  synthetic_look=args.look, render=True)
    test_base = data.get_dataset(args.data, args.root, args.split, seed=args.seed,
                                 synthetic_look=args.look, render=True)
    if not test_base.classes:
        raise DatasetError(f"{args.data} has no labels to evaluate with")
    classes = test_base.classes
    print(f"{args.data}: {len(train_base)} train / {len(test_base)} {args.split} images, "
          f"{len(classes)} classes ({', '.join(classes)})")
    # before a few-label subset: copies in the whole split
    copies = mark_copies(train_base, test_base)
    if copies:
        print(f"{copies} of the {args.split} faces have a near-exact copy in train "
              f"(cosine > {data.DUPLICATE_COSINE} on 16x16 grey pixels): accuracy is also reported "
              "without them")
    if args.labels_per_class:
        train_base = data.labels_per_class(train_base, args.labels_per_class, args.seed)
        counts = [train_base.labels.count(k) for k in range(len(classes))]
        print(f"few labels: {len(train_base)} training images, {args.labels_per_class} per class "
              f"(seed {args.seed})" + ("" if min(counts) == args.labels_per_class else
                 f"; classes with fewer keep all theirs: {dict(zip(classes, counts))}"))
    return train_base, test_base


def run_mode(args, state, trunk, cfg, train_base, test_base, device, out):
    """The chosen evaluation: -> its report."""
    if args.mode == "linear":
        report, head = linear_probe(trunk, train_base, test_base, cfg.view_size, device,
                                    args.protocol, args.epochs, args.batch_size, args.lr,
                                    args.workers, args.seed)
        if args.ckpt != "random":
            torch.save({"format": PROBE_FORMAT, "head": head.state_dict(),
                        "classes": test_base.classes,
                        "size": cfg.view_size, "data": args.data}, os.path.join(out,
                                                                                "probe_head.pt"))
    elif args.mode == "knn":
        report = knn_eval(trunk, train_base, test_base, cfg.view_size, device, workers=args.workers)
    elif args.mode == "finetune":
        report = finetune(trunk, train_base, test_base, cfg.view_size, device, args.epochs or 30,
                          args.batch_size or 256, args.lr, args.workers, args.seed)
    else:
        report = landmark_probe(trunk, train_base, test_base, cfg.origin_size, device, args.workers,
                                seed=args.seed)
        # the masking itself: trained, and the same config untrained
        if state is not None and cfg.use_facemae:
            report["hit_rate"], report["hit_rate_untrained"] = hit_rate_trained_and_untrained(
                load_model(args.ckpt, state)[0], args.seed, test_base, device, args.workers)
    return report


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "labels_per_class"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    device = pick_device(args.device)
    if args.predict:
        if args.ckpt == "random":
            p.error("--predict needs a trained checkpoint")
        predict(args.ckpt, args.predict, device)
        return 0
    if args.export:
        return export_trunk(args.ckpt, args.export, args.preset)
    state = None if args.ckpt == "random" else load_checkpoint(args.ckpt)
    trunk, cfg, name = load_trunk(args.ckpt, args.preset, state)
    if args.data is None:
        args.data = "synthetic" if state is None else state.get("data", "synthetic")
    out = args.out or (os.path.dirname(os.path.abspath(args.ckpt)) if args.ckpt != "random"
                       else os.path.join("runs", f"random-{args.preset}"))
    os.makedirs(out, exist_ok=True)
    print(f"{name}: {cfg.backbone}; device {device}")
    train_base, test_base = evaluation_data(args, state)
    t0 = time.time()
    report = run_mode(args, state, trunk, cfg, train_base, test_base, device, out)
    classes = test_base.classes
    report.update({"checkpoint": args.ckpt, "data": args.data, "split": args.split,
                   "classes": classes,
                   "seconds": time.time() - t0, "labels_per_class": args.labels_per_class,
                   "train_images": len(train_base)})
    print_report(report, classes, f"{args.mode} evaluation of {name} on {args.data} {args.split}")
    stem = os.path.join(out,
                        f"eval_{args.mode}_{args.data}" + ("_val" if args.split == "val" else "")
                        + (f"_{args.labels_per_class}pc" if args.labels_per_class else ""))
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=2)
    if "confusion" in report and save_confusion_png(report["confusion"], classes,
                                                    stem + "_confusion.png",
                                                    f"{args.mode} probe, {args.data}",
                                                    report.get("history")):
        print(f"wrote {stem}.json and {stem}_confusion.png")
    else:
        print(f"wrote {stem}.json")
    return 0


def cli(argv=None):
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
