"""train.py's command line: its options, the defaults of each preset, and the checks that turn an
impossible value into one argparse error (exit 2) before any data is read or model built. The
model's options (--gfl, --masking, --alpha, ...) are generated, one per SimFLEConfig field, so
that --help documents every knob of the model with its paper and tiny values."""
import argparse
import dataclasses
import os
import sys

import data
from data_support.synthetic_faces import LOOKS
from eval_support.common import HelpFormatter, str2bool
from simfle import CHOICES, SimFLEConfig
from train_support.observe import tensorboard_writer
from train_support.run import check_same_model, resume_options

# training defaults per preset (the paper: batch 256, 100 epochs; tiny: minutes on a laptop CPU)
TRAIN_DEFAULTS = {"paper": dict(epochs=100, batch_size=256, crop_scale=0.08, warmup_epochs=0.0),
                  "tiny": dict(epochs=2, batch_size=64, crop_scale=0.08, warmup_epochs=0.0)}
# options that belong to this invocation, never taken from a checkpoint on --resume (--augment is
# not one: where the views are made changes their random draws, so a resumed run keeps its own)
RUNTIME_OPTIONS = {"resume", "ckpt", "device", "precision", "workers", "compile", "out",
                   "activation_checkpointing", "stop_after_steps", "tensorboard", "overwrite"}
# `python train.py` (built-in faces, no --preset): the tiny preset with a narrow ResNet-18 and the
# views augmented on the device, the speed levers that keep the paper's masking geometry
QUICK_START = dict(width=0.5, augment="device")

# ----------------------------------------------------------------------------- options


def add_config_options(parser):
    """One option per SimFLEConfig field (--gfl, --masking, --alpha, ...: simfle.py's dataclass), so
    --help documents every knob of the model."""
    paper, tiny = SimFLEConfig.preset("paper"), SimFLEConfig.preset("tiny")
    group = parser.add_argument_group("model (SimFLEConfig; default: the preset's value)")
    for f in dataclasses.fields(SimFLEConfig):
        kind = str2bool if f.type in (bool, "bool") else type(getattr(paper, f.name))
        meta = "BOOL" if kind is str2bool else kind.__name__.upper()
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                           choices=CHOICES.get(f.name),
                           metavar=None if f.name in CHOICES else meta,
                           help=f"paper: {getattr(paper, f.name)}, tiny: {getattr(tiny, f.name)}")


def per_preset(name):
    """The help of a training option whose default depends on the preset: "paper: 100, tiny: 2"."""
    return ", ".join(f"{preset}: {defaults[name]}" for preset, defaults in TRAIN_DEFAULTS.items())


def build_parser():
    p = argparse.ArgumentParser(description="Pretrain SimFLE (self-supervised facial expression "
                                            "features).", formatter_class=HelpFormatter)
    add = p.add_argument
    add("--data", default="synthetic", choices=list(data.DATASETS), help="dataset name")
    add("--root", default=None, help="dataset folder (default: data/<data>)")
    add("--preset", default=None, choices=["tiny", "paper"],
        help="model preset (default: tiny on synthetic, paper otherwise)")
    add("--epochs", type=int, default=None, help=f"pretraining epochs ({per_preset('epochs')})")
    add("--batch-size", type=int, default=None, help=f"global batch ({per_preset('batch_size')})")
    add("--lr", type=float, default=None, help="learning rate (default: 0.05 x batch / 256)")
    add("--weight-decay", type=float, default=1e-4, help="weight decay (the paper: 1e-4)")
    add("--optimizer", default="sgd", choices=["sgd", "lars"],
        help="sgd: the paper's (momentum 0.9); lars: momentum 0.9 with each tensor's step scaled "
             "by its trust ratio, as small-batch BYOL recipes use it (train_support/optim.py)")
    add("--lars-eta", type=float, default=0.02, help="LARS's trust coefficient (solo-learn: 0.02)")
    add("--exclude-norm-bias", type=str2bool, default=False, metavar="BOOL",
        help="no weight decay (and no LARS trust ratio) on BatchNorm / LayerNorm weights and "
             "biases, as the BYOL paper does (the paper's code decays every weight)")
    add("--predictor-lr-mult", type=float, default=1.0, metavar="X",
        help="the BYOL predictor's lr is X times the rest's (1: the paper)")
    add("--out", default=None, help="run folder (default: runs/<data>-<preset>)")
    add("--resume", default=None, help="continue from this last.pt")
    add("--overwrite", action="store_true",
        help="start afresh in an --out that holds another run (its last.pt, metrics.jsonl and "
             "pictures are removed first); without it, or --resume, such a folder is refused")
    add("--device", default="auto", help="auto (cuda -> mps -> cpu), cpu, cuda, cuda:1, mps")
    add("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on GPUs and CPUs with bf16 arithmetic, fp16 on older GPUs, else fp32")
    add("--seed", type=int, default=0,
        help="seeds the weights, the data order and the augmentations")
    add("--workers", type=int, default=None,
        help="data-loading processes (default: 0 on CPU, 8 on GPU)")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--activation-checkpointing", type=str2bool, default=False, metavar="BOOL",
        help="recompute the ResNet's and FaceMAE's block activations in the backward: less memory, "
             "more time")
    add("--num-synthetic", type=int, default=None,
        help="size of the synthetic training set (default: 4000)")
    add("--look", default="aligned", choices=list(LOOKS),
        help="synthetic faces: aligned face crops (as RAF-DB's aligned/), head-and-shoulders "
             "scenes, or wild: a face detector's loose crops with pose, light and occluders")
    add("--crop-scale", type=float, default=None,
        help=f"smallest area of a view's RandomResizedCrop ({per_preset('crop_scale')})")
    add("--augment", default=None, choices=["loader", "device"],
        help="where the views' crop, flip and colour are made: per image in the loader workers, or "
             "batched on the training device (the workers then only decode); blur is batched "
             "either way (default: device for the quick start, loader otherwise)")
    add("--warmup-epochs", type=float, default=None,
        help=f"linear lr warm-up over this many epochs, per step ({per_preset('warmup_epochs')})")
    add("--grad-share-every", type=int, default=100, metavar="STEPS",
        help="measure each loss term's share of the ResNet's gradient every this many steps of an "
             "epoch, from its first (gradient_shares in train_support/observe.py; 0: off). It "
             "changes nothing in the training")
    add("--knn-samples", type=int, default=1000,
        help="cap on each split for the k-NN monitor (0: off)")
    add("--collapse-samples", type=int, default=512,
        help="training faces on which each epoch measures the collapse monitor: the std and the "
             "mean cosine of the normalised projector outputs (0: off)")
    add("--probe", type=str2bool, default=None, metavar="BOOL",
        help="the verdict after training: the trunk against two random trunks, by the linear "
             "probe (lr chosen on a train hold-out) and k-NN, on val where the data has one, else "
             "test (eval.compare_with_random; default: on for labelled data)")
    add("--probe-epochs", type=int, default=30, help="epochs of the verdict's linear probe")
    add("--max-steps", type=int, default=None,
        help="cap on steps per epoch (quick runs, smoke tests; default: the whole training set)")
    add("--stop-after-steps", type=int, default=None,
        help="save and stop after this many steps in total, as if interrupted (fits a job's time "
             "limit)")
    add("--tensorboard", action="store_true",
        help="also write TensorBoard scalars, per step and per epoch, into the run folder (needs "
             "the tensorboard package; give it again with --resume)")
    # --backbone, --gfl, --masking, ...: the model's options, from SimFLEConfig
    add_config_options(p)
    return p


def parse_args(argv=None):
    """Parse and check the options; impossible values are argparse errors (exit 2). With --resume,
    the options not given come from the checkpoint, and the model must be the checkpoint's."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.tensorboard and tensorboard_writer() is None:  # before any data is read or model built
        parser.exit(2, "error: --tensorboard needs the tensorboard package, which is not installed "
                    "here: pip install tensorboard (or drop --tensorboard; curves.png and "
                       "metrics.jsonl are written anyway)\n")
    resume_options(args, argv, parser, RUNTIME_OPTIONS)
    if args.preset is None and args.data == "synthetic":  # the quick start
        for key, value in QUICK_START.items():
            if getattr(args, key) is None:  # an option given on the command line stays as given
                setattr(args, key, value)
    args.augment = args.augment or "loader"
    args.preset = args.preset or ("tiny" if args.data == "synthetic" else "paper")
    for key, value in TRAIN_DEFAULTS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SimFLEConfig)
                 if getattr(args, f.name) is not None}
    try:
        args.config = SimFLEConfig.preset(args.preset, **overrides)
    except ValueError as e:
        parser.error(str(e))
    if args.ckpt is not None:
        check_same_model(args)
    for name in ("epochs", "batch_size", "probe_epochs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.collapse_samples < 0:
        parser.error("--collapse-samples must be 0 (off) or positive")
    if args.grad_share_every < 0:
        parser.error("--grad-share-every must be 0 (off) or positive")
    if args.lr is None:
        args.lr = 0.05 * args.batch_size / 256  # the paper: lr = 0.05 x batch / 256
    if args.lr <= 0:
        parser.error("--lr must be positive")
    for name in ("lars_eta", "predictor_lr_mult"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.weight_decay < 0:
        parser.error("--weight-decay must be 0 or positive")
    args.out = args.out or os.path.join("runs", f"{args.data}-{args.preset}")
    args.probe = args.data != "images" if args.probe is None else args.probe
    return args
