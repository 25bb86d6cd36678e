"""
Pretrain SimFLE without labels, then (on the built-in faces) probe the trunk it learned.

    python train.py                                  # the quick start: tiny preset, width 0.5, built-in faces, CPU
    python train.py --data rafdb                     # paper preset on RAF-DB (data/rafdb), one GPU
    python train.py --resume runs/rafdb-paper/last.pt
    torchrun --nproc_per_node=2 train.py --data rafdb   # several GPUs (DDP)

Every field of SimFLEConfig is an option (python train.py --help). The device is eval.pick_device's
(cuda -> mps -> cpu, shared with eval.py); the precision policy lives here: bf16 autocast on GPUs that have
it and on CPUs with bf16 instructions, fp16 + GradScaler on older GPUs (a Colab T4), fp32 on MPS and other
CPUs; channels_last on CUDA and CPU. The model file has no device code.

A run folder (--out) holds config.json, metrics.jsonl (one record per epoch), curves.png (redrawn after every
epoch) and last.pt; --tensorboard adds TensorBoard scalars (see RunLog).

Read train() first: it calls the named steps below (Setup, build_data, Trainer, train_epoch, ...), and
Trainer.step is the training step of the paper.
"""
import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import data
from eval import (CHECKPOINT_FORMAT, CheckpointError, HelpFormatter, capped, compare_with_random, embed, knn_predict,
                  landmark_hit_rate, load_checkpoint, pick_device, run_cli)
from simfle import SimFLE, SimFLEConfig

# training defaults per preset (the paper: batch 256, 100 epochs; tiny: a few minutes on a laptop CPU)
TRAIN_DEFAULTS = {"paper": dict(epochs=100, batch_size=256, crop_scale=0.08, warmup_epochs=0.0),
                  "tiny": dict(epochs=2, batch_size=64, crop_scale=0.08, warmup_epochs=0.0)}
# `python train.py` (the built-in faces, no --preset): the tiny preset with the levers measured to speed it up on a
# 2-core CPU that keep the paper's masking geometry (benchmarks/README.md): a narrow ResNet-18 (2.1x) and the views
# augmented on the device; `--preset tiny` is the tiny preset as it stands
QUICK_START = dict(width=0.5, augment="device")
HIT_RATE_FACES = 200  # held-out faces on which each epoch measures the landmark hit rate (hit_rate_faces)
# options that belong to this invocation, never taken from a checkpoint on --resume
RUNTIME_OPTIONS = {"resume", "ckpt", "device", "precision", "workers", "compile", "activation_checkpointing", "augment",
                   "out", "stop_after_steps", "tensorboard", "overwrite"}


# ----------------------------------------------------------------------------- options


def str2bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_config_options(parser):
    """One option per SimFLEConfig field, so --help documents every knob of the model."""
    paper, tiny = SimFLEConfig.preset("paper"), SimFLEConfig.preset("tiny")
    group = parser.add_argument_group("model (SimFLEConfig; default: the preset's value)")
    for f in dataclasses.fields(SimFLEConfig):
        kind = str2bool if f.type in (bool, "bool") else type(getattr(paper, f.name))
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                           metavar=kind.__name__.upper() if kind is not str2bool else "BOOL",
                           help=f"paper: {getattr(paper, f.name)}, tiny: {getattr(tiny, f.name)}")


def per_preset(name):
    """The help of a training option whose default depends on the preset: "paper: 100, tiny: 2"."""
    return ", ".join(f"{preset}: {defaults[name]}" for preset, defaults in TRAIN_DEFAULTS.items())


def build_parser():
    p = argparse.ArgumentParser(description="Pretrain SimFLE (self-supervised facial expression features).",
                                formatter_class=HelpFormatter)
    p.add_argument("--data", default="synthetic", choices=list(data.DATASETS), help="dataset name")
    p.add_argument("--root", default=None, help="dataset folder (default: data/<data>)")
    p.add_argument("--preset", default=None, choices=["tiny", "paper"],
                   help="model preset (default: tiny on synthetic, with the quick start's --width 0.5 and --augment "
                        "device unless given; paper otherwise)")
    p.add_argument("--epochs", type=int, default=None, help=f"pretraining epochs ({per_preset('epochs')})")
    p.add_argument("--batch-size", type=int, default=None, help=f"global batch ({per_preset('batch_size')})")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 x batch / 256)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    p.add_argument("--out", default=None, help="run folder (default: runs/<data>-<preset>)")
    p.add_argument("--resume", default=None, help="continue from this last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds another run (its last.pt, metrics.jsonl and pictures are "
                        "removed first); without it, or --resume, such a folder is refused")
    p.add_argument("--device", default="auto", help="auto (cuda -> mps -> cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on GPUs and CPUs with bf16 arithmetic, fp16 on older GPUs, else fp32")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the data order and the augmentations")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: 0 on CPU, 8 on GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--activation-checkpointing", type=str2bool, default=False, metavar="BOOL",
                   help="recompute the ResNet's and FaceMAE's block activations in the backward: less memory, more time")
    p.add_argument("--num-synthetic", type=int, default=None, help="size of the synthetic training set (default: 4000)")
    p.add_argument("--look", default="aligned", choices=list(data.LOOKS),
                   help="synthetic faces: aligned face crops (as RAF-DB's aligned/) or head-and-shoulders scenes")
    p.add_argument("--crop-scale", type=float, default=None,
                   help=f"smallest area of a view's RandomResizedCrop ({per_preset('crop_scale')})")
    p.add_argument("--augment", default=None, choices=["loader", "device"],
                   help="where the views' crop, flip and colour are made: per image in the loader workers, or "
                        "batched on the training device (the workers then only decode); blur is batched either way "
                        "(default: device for the quick start, loader otherwise)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help=f"linear lr warm-up over this many epochs, per step ({per_preset('warmup_epochs')})")
    p.add_argument("--grad-share-every", type=int, default=100, metavar="STEPS",
                   help="measure each loss term's share of the ResNet's gradient every this many steps of an epoch, "
                        "from its first (SimFLE.gradient_shares; 0: off). It changes nothing in the training")
    p.add_argument("--knn-samples", type=int, default=1000, help="cap on each split for the k-NN monitor (0: off)")
    p.add_argument("--probe", type=str2bool, default=None, metavar="BOOL",
                   help="linear probe after training vs a random trunk (default: on for synthetic)")
    p.add_argument("--probe-epochs", type=int, default=30, help="epochs of that final linear probe")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap on steps per epoch (quick runs, smoke tests; default: the whole training set)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="save and stop after this many steps in total, as if interrupted (fits a job's time limit)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars, per step and per epoch, into the run folder (needs the "
                        "tensorboard package; give it again with --resume)")
    add_config_options(p)
    return p


def parse_args(argv=None):
    """Parse and check the options; impossible values are argparse errors (exit 2).

    With --resume, every option not given on the command line comes from the checkpoint, and the
    model is rebuilt from the checkpoint's own config.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.tensorboard and tensorboard_writer() is None:  # before any data is read or model built
        parser.exit(2, "error: --tensorboard needs the tensorboard package, which is not installed here: pip install "
                       "tensorboard (or drop --tensorboard; curves.png and metrics.jsonl are written anyway)\n")
    given = {a.dest for a in parser._actions for o in a.option_strings
             if any(x == o or x.startswith(o + "=") for x in argv)}
    args.ckpt = None
    if args.resume:
        args.ckpt = load_checkpoint(args.resume)
        for key, value in args.ckpt["train"].items():
            if key not in given and key not in RUNTIME_OPTIONS and hasattr(args, key):
                setattr(args, key, value)
        if "out" not in given:
            args.out = os.path.dirname(os.path.abspath(args.resume))
    quick_start(args)
    if args.preset is None:
        args.preset = "tiny" if args.data == "synthetic" else "paper"
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
        theirs = args.ckpt["config_obj"]
        if args.config != theirs:
            diff = {k: (v, getattr(args.config, k)) for k, v in theirs.to_dict().items() if getattr(args.config, k) != v}
            raise CheckpointError(f"{args.resume} was trained with another model configuration "
                                  f"(field: (checkpoint, asked) {diff}); drop those options to resume it")
    for name in ("epochs", "batch_size", "probe_epochs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.grad_share_every < 0:
        parser.error("--grad-share-every must be 0 (off) or positive")
    if args.lr is None:
        args.lr = 0.05 * args.batch_size / 256  # the paper: lr = 0.05 x batch / 256
    if args.lr <= 0:
        parser.error("--lr must be positive")
    if args.out is None:
        args.out = os.path.join("runs", f"{args.data}-{args.preset}")
    if args.probe is None:
        args.probe = args.data == "synthetic"
    return args


def quick_start(args):
    """`python train.py` on the built-in faces with no --preset (nor --resume) is the quick start: QUICK_START's
    options where not given. Elsewhere the views are augmented in the loader unless told."""
    if args.preset is None and args.data == "synthetic":
        for key, value in QUICK_START.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    if args.augment is None:
        args.augment = "loader"


def tensorboard_writer():
    """torch's SummaryWriter class, or None when the optional tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


# ----------------------------------------------------------------------------- device and precision


def cpu_has_native_bf16():
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays (benchmarks/README.md)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def pick_precision(name, device):
    """auto: bf16 autocast on GPUs that have it and on CPUs with native bf16 arithmetic, fp16 + GradScaler on
    older GPUs, fp32 elsewhere (MPS, CPUs without bf16 instructions, where bf16 is emulated and slow)."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    return name


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, state):
    """Write atomically: a temporary file, flushed to disk, then renamed over the old one."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------- the run's pieces


class Setup:
    """Where this process trains: device, precision, and its place among DDP processes (torchrun sets RANK)."""

    def __init__(self, args):
        self.distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank, self.world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if self.distributed else (0, 1)
        self.main = self.rank == 0
        if self.distributed and (args.device == "auto" and torch.cuda.is_available() or args.device == "cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        self.device = pick_device(args.device)
        if self.distributed:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.precision = pick_precision(args.precision, self.device)

    def say(self, *a, **k):
        if self.main:
            print(*a, **k)


class EpochSampler(torch.utils.data.Sampler):
    """One epoch's order of the training set from a given step on, as (epoch, index) pairs.

    A single DataLoader serves every epoch, so its worker processes persist (no restart per epoch); the
    epoch travels with each index because those workers hold their own copies of the dataset. set(epoch,
    start_step) before iterating; start_step > 0 skips the batches a resumed run has already done.
    """

    def __init__(self, order, batch_size, steps_per_epoch):
        self.order, self.batch_size, self.steps = order, batch_size, steps_per_epoch  # order: a DistributedSampler
        self.epoch, self.start = 0, 0

    def set(self, epoch, start_step):
        self.order.set_epoch(epoch)
        self.epoch, self.start = epoch, start_step

    def __iter__(self):
        indices = list(self.order)[self.start * self.batch_size: self.steps * self.batch_size]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self):
        return (self.steps - self.start) * self.batch_size


def build_data(args, setup, cfg):
    """The unlabelled training views and one DataLoader for the whole run: -> (train_base, loader, steps/epoch)."""
    train_base = data.get_dataset(args.data, args.root, "train", seed=args.seed, synthetic_count=args.num_synthetic,
                                  synthetic_look=args.look, render=True)
    pretrain_set = data.PretrainView(train_base, cfg.view_size, cfg.origin_size, seed=args.seed,
                                     crop_scale=args.crop_scale, augment=args.augment)
    per_rank = args.batch_size // setup.world
    if per_rank < 2:
        raise SystemExit(f"error: --batch-size {args.batch_size} over {setup.world} processes leaves fewer than "
                         f"2 images per process; BatchNorm needs at least 2")
    if len(pretrain_set) < args.batch_size:
        raise SystemExit(f"error: the {args.data} training split has {len(pretrain_set)} images, fewer than "
                         f"one batch of {args.batch_size}; use a smaller --batch-size")
    order = DistributedSampler(pretrain_set, num_replicas=setup.world, rank=setup.rank, shuffle=True, seed=args.seed,
                               drop_last=True)
    steps_per_epoch = len(order) // per_rank
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    loader = DataLoader(pretrain_set, batch_size=per_rank, sampler=EpochSampler(order, per_rank, steps_per_epoch),
                        num_workers=args.workers, collate_fn=data.collate, pin_memory=setup.device.type == "cuda",
                        drop_last=True, persistent_workers=args.workers > 0,  # 1.4-1.7x on the loader (benchmarks/)
                        generator=torch.Generator().manual_seed(args.seed))  # keeps the global RNG untouched
    return train_base, loader, steps_per_epoch


def build_monitor(args, setup, train_base):
    """The epoch-end monitors (labelled data only, main process; --knn-samples 0 turns them off):
    -> (k-NN loaders [train, held-out] or None, held-out faces for the landmark hit rate or None)."""
    if args.knn_samples <= 0 or not train_base.classes or not setup.main:
        return None, None
    try:  # the monitor reads the val split where there is one, so that watching it never reads test
        held_out = data.get_dataset(args.data, args.root, "val" if args.data in data.SPLITS_WITH_VAL else "test", seed=args.seed,
                                    synthetic_look=args.look, render=True)
    except data.DatasetError as e:
        setup.say(f"k-NN monitor off: {e}")
        return None, None
    knn_sets = [DataLoader(capped(data.ProbeView(b, args.config.view_size, train=False), args.knn_samples),
                           batch_size=256, num_workers=args.workers, collate_fn=data.collate,
                           generator=torch.Generator().manual_seed(args.seed))
                for b in (train_base, held_out)]
    return knn_sets, hit_rate_faces(args, setup, held_out)


def hit_rate_faces(args, setup, held_out):
    """A fixed random subset of the held-out faces for the landmark hit rate of semantic masking, when they have
    landmarks and the model has FaceMAE: -> LabelledSubset or None. At most HIT_RATE_FACES (and --knn-samples)
    faces keep it cheap: 200 faces cost ~1.5 % of an epoch of `python train.py` (one CPU thread: 3.7 s against
    62 steps of 4.5 s)."""
    if not held_out.num_landmarks or not args.config.use_facemae:
        return None
    if setup.distributed:  # it runs BatchNorm in train mode: a SyncBatchNorm on rank 0 alone would wait for the rest
        setup.say("landmark hit rate off under DDP")
        return None
    return data.random_subset(held_out, min(HIT_RATE_FACES, args.knn_samples), args.seed)


@contextlib.contextmanager
def buffers_kept(module):
    """Put the module's buffers back as they were on exit. A recomputed forward runs its BatchNorms in train mode
    again; without this, the batch would count twice in their running statistics and num_batches_tracked."""
    saved = [b.clone() for b in module.buffers()]
    try:  # also when checkpoint stops a recomputation early, by raising inside it
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)


def checkpointed_forward(block, forward, *args, **kwargs):
    """block's own forward under activation checkpointing: only its inputs are kept, the rest is recomputed in the
    backward (in the forward's autocast and RNG state, so with the same result)."""
    if not torch.is_grad_enabled():  # no-grad passes (origin, target) keep no activations to begin with
        return forward(*args, **kwargs)
    if torch.compiler.is_compiling():  # compiled, the backward recomputes values but never the buffers' updates
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs,
                      context_fn=lambda: (contextlib.nullcontext(), buffers_kept(block)))


def checkpoint_activations(model):
    """Activation checkpointing on the online ResNet's blocks (layer1..layer4) and FaceMAE's transformer blocks.

    Each block's forward is replaced on the instance, so the module tree and the state_dict keys stay as they are:
    checkpoints load with or without it.
    """
    b = model.backbone
    blocks = [*b.layer1, *b.layer2, *b.layer3, *b.layer4]
    if model.config.use_facemae:
        blocks += [*model.facemae.encoder, *model.facemae.decoder]
    for block in blocks:
        block.forward = functools.partial(checkpointed_forward, block, block.forward)


class NonFiniteLoss(Exception):
    """A loss part became NaN or infinite; the weights were not updated."""


class Trainer:
    """The model and what updates it; step() is one SimFLE training step."""

    def __init__(self, cfg, setup, lr, weight_decay, compile=False, activation_checkpointing=False, channels_last=None):
        device = setup.device
        self.raw_model = model = SimFLE(cfg).to(device)  # checkpoints are saved from this uncompiled, unwrapped module
        # channels_last (None: by device): on an H200 1.6x over bf16 alone; on a 2-core CPU 1.2x in fp32, and what
        # makes CPU bf16 pay, since oneDNN's bf16 convolutions want it (benchmarks/README.md)
        self.channels_last = device.type in ("cuda", "cpu") if channels_last is None else channels_last
        if activation_checkpointing:
            checkpoint_activations(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
            if setup.distributed:
                model = self.raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=setup.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.precision)
        self.device, self.model = device, model
        if compile:
            self.model = torch.compile(self.model)
        if setup.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def step(self, batch, lr, measure_shares=False):
        """Augment on the device, forward, check, backward, SGD, EMA (paper §3): -> the loss parts as floats,
        with each loss term's share of the ResNet's gradient when measure_shares."""
        origin, view1, view2 = data.pretrain_batch(batch, self.device)  # blur + normalisation, batched
        if self.channels_last:
            origin, view1, view2 = (x.contiguous(memory_format=torch.channels_last) for x in (origin, view1, view2))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)  # free last step's gradients before the forward's activations peak
        shares = self.gradient_shares(origin, view1, view2) if measure_shares else {}
        with self.autocast():
            loss, parts = self.model(origin, view1, view2)  # L = L_s + L_r + α·L_d + β·L_g
        values = {k: v.item() for k, v in parts.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:  # stop before the optimizer touches the weights; last.pt keeps the last good state
            raise NonFiniteLoss(", ".join(bad))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.raw_model.update_target()  # EMA of the target after every optimizer step
        return {**values, **shares}

    def gradient_shares(self, origin, view1, view2):
        """SimFLE.gradient_shares on this batch, invisible to the training: the random draws (groups, masks) and
        the BatchNorm statistics are put back as they were, and no .grad is touched, so a run with the measurement
        trains exactly as one without it."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), buffers_kept(self.raw_model), self.autocast():
            return self.raw_model.gradient_shares(origin, view1, view2)

    def state(self):
        return {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load(self, ckpt, path):
        try:
            self.raw_model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit this model: {str(e).splitlines()[0]}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])


def learning_rate(args, epoch, step, steps_per_epoch):
    """Cosine decay per epoch (the paper), after an optional linear warm-up per step (the paper has none)."""
    lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
    warmup = round(args.warmup_epochs * steps_per_epoch)
    return lr * min(1.0, (step + 1) / warmup) if warmup else lr


class Stop:
    """SIGINT / SIGTERM (and --stop-after-steps) ask the run to finish its step, save and stop."""

    def __init__(self, setup, out):
        self.reason, self.setup, self.out = None, setup, out
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)

    def on_signal(self, signum, frame):
        if self.reason is not None:  # a second Ctrl-C gives up at once; last.pt stays valid
            raise KeyboardInterrupt
        self.reason = signum
        self.setup.say(f"\n{signal.Signals(signum).name} received: finishing this step and saving {self.out}/last.pt ...")

    def agreed(self):
        """With DDP every process stops at the same step: any one's reason stops them all."""
        if self.setup.distributed:
            flag = torch.tensor([self.reason is not None], dtype=torch.float32, device=self.setup.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and self.reason is None:
                self.reason = signal.SIGTERM
        return self.reason is not None

    def exit_code(self, ckpt_path):
        if self.reason == "steps":
            self.setup.say(f"stopped after --stop-after-steps; continue with: python train.py --resume {ckpt_path}")
            return 0
        self.setup.say(f"saved {ckpt_path}. Resume with: python train.py --resume {ckpt_path}")
        return 130 if self.reason == signal.SIGINT else 143


# ----------------------------------------------------------------------------- training


def main(argv=None):
    """Train as the command line says; -> exit code. Ctrl-C / SIGTERM save and stop the run (see Stop);
    the handlers are put back as they were when it returns, so a script calling main() keeps its own."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        return train(argv)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def train(argv=None):
    """The procedure: set up, build the data and the model (or resume), loop over epochs, checkpoint, probe."""
    args = parse_args(argv)
    setup = Setup(args)
    claim_run_folder(args, setup)
    torch.manual_seed(args.seed + setup.rank)
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1) if setup.device.type == "cuda" else 0
    train_base, loader, steps_per_epoch = build_data(args, setup, args.config)
    trainer = Trainer(args.config, setup, args.lr, args.weight_decay, args.compile, args.activation_checkpointing)
    position = {"epoch": 0, "step_in_epoch": 0, "step": 0, "progress": {}}
    if args.ckpt is not None:
        trainer.load(args.ckpt, args.resume)
        position = {k: args.ckpt[k] for k in position}
        set_rng_state(args.ckpt["rng"], setup.device)
    knn_sets, hit_faces = build_monitor(args, setup, train_base)
    run_info = write_run_info(args, setup, trainer, len(loader.dataset), steps_per_epoch)
    ckpt_path = os.path.join(args.out, "last.pt")

    def checkpoint(epoch, step_in_epoch, progress):
        if setup.main:
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, **trainer.state(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                "step": position["step"], "progress": progress, "config": args.config.to_dict(), "preset": args.preset,
                "data": args.data, "classes": list(train_base.classes), "train": run_info["train"],
                "rng": rng_state(setup.device)})

    stop = Stop(setup, args.out)
    if position["step_in_epoch"] >= steps_per_epoch:
        position.update(epoch=position["epoch"] + 1, step_in_epoch=0)
    with RunLog(args, setup) as log:
        for epoch in range(position["epoch"], args.epochs):
            try:
                record = train_epoch(args, setup, trainer, loader, epoch, position, stop, steps_per_epoch, log)
            except NonFiniteLoss as e:
                setup.say(f"error: non-finite loss at epoch {epoch + 1}, step {position['step'] + 1} (bad parts: {e}). "
                          f"The weights were not updated and {ckpt_path} was not overwritten. "
                          f"Try a lower --lr, or --precision fp32.")
                return 3
            if record is None:  # stopped inside the epoch: save where it stands
                checkpoint(epoch, position["step_in_epoch"], position["progress"])
                return stop.exit_code(ckpt_path)
            if knn_sets is not None:
                record["knn_accuracy"] = knn_accuracy(trainer.raw_model.trunk(), knn_sets, setup.device,
                                                      len(train_base.classes))
            if hit_faces is not None:  # share of landmarks that semantic masking keeps visible (paper §3)
                record["landmark_hit_rate"] = landmark_hit_rate(trainer.raw_model, hit_faces, setup.device,
                                                                workers=args.workers)["semantic"]
            position.update(step_in_epoch=0, progress={})
            checkpoint(epoch + 1, 0, {})
            log.epoch(record)
            if stop.reason is not None:
                return stop.exit_code(ckpt_path)
    if setup.distributed:
        dist.destroy_process_group()
    if setup.main:
        setup.say(f"done: {ckpt_path}")
        if args.probe:
            compare_with_random(ckpt_path, args.data, args.root, setup.device, epochs=args.probe_epochs, seed=args.seed,
                                workers=args.workers, look=args.look, count=args.num_synthetic)
    return 0


def train_epoch(args, setup, trainer, loader, epoch, position, stop, steps_per_epoch, log):
    """One epoch from position["step_in_epoch"] on: -> the epoch's log record, or None if it was stopped."""
    start = position["step_in_epoch"]
    progress = position["progress"]  # running sums of an epoch cut by an interrupt, else {}
    sums, seen, skipped = progress.get("sums", {}), progress.get("seen", 0), progress.get("skipped", 0)
    # the steps that logged each key (every step, but the gradient shares only the measured ones)
    counts = progress.get("counts", {k: progress.get("steps", start) for k in sums})
    taken = progress.get("steps", start)  # optimizer steps this epoch (a skipped batch is not one)
    t0 = time.time() - progress.get("elapsed", 0.0)
    loader.sampler.set(epoch, start)
    trainer.model.train()
    bar = tqdm(loader, total=steps_per_epoch, initial=start, disable=not setup.main,
               desc=f"epoch {epoch + 1}/{args.epochs}", **data.progress_options())
    for batch, n_bad in bar:
        skipped += n_bad
        position["step_in_epoch"] += 1
        if batch is None:  # every image of this batch was unreadable: its place in the epoch is used up
            continue
        lr = learning_rate(args, epoch, position["step"], steps_per_epoch)
        every = args.grad_share_every
        values = trainer.step(batch, lr, measure_shares=every > 0 and (position["step_in_epoch"] - 1) % every == 0)
        position["step"] += 1
        taken += 1
        seen += batch[0].shape[0] * setup.world
        for k, v in values.items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
        log.step(position["step"], {**values, "lr": lr})
        # the loss as the sum of its weighted terms, so the bar shows which one dominates
        w = [values[k] for k in WEIGHTED]
        bar.set_postfix_str(f"loss {values['total']:.4g} = sim {w[0]:.3g} + rec {w[1]:.3g} + dist {w[2]:.3g} + "
                            f"grp {w[3]:.3g}, lr {lr:.4f}, {seen / (time.time() - t0):.0f} img/s", refresh=False)
        if args.stop_after_steps and position["step"] >= args.stop_after_steps and stop.reason is None:
            stop.reason = "steps"
        if stop.agreed():
            break
    bar.close()
    if stop.reason is not None and position["step_in_epoch"] < steps_per_epoch:
        position["progress"] = {"sums": sums, "counts": counts, "seen": seen, "skipped": skipped, "steps": taken,
                                "elapsed": time.time() - t0}
        return None
    return {"epoch": epoch + 1, "step": position["step"], "lr": learning_rate(args, epoch, position["step"], steps_per_epoch),
            "images_per_s": seen / max(time.time() - t0, 1e-9), **{k: v / counts[k] for k, v in sums.items()},
            "skipped_images": skipped}


def knn_accuracy(trunk, knn_sets, device, num_classes):
    """The k-NN monitor: pooled features of the training faces vote for the held-out faces' classes."""
    trunk.eval()
    (tx, ty), (vx, vy) = (embed(trunk, loader, device) for loader in knn_sets)
    return (knn_predict(tx, ty, vx, num_classes) == vy).float().mean().item()


RUN_FILES = ("last.pt", "metrics.jsonl")  # a folder that holds one of these holds a run
RUN_PICTURES = ("curves.png", "events.out.tfevents.")  # what --overwrite removes with them (TensorBoard: a prefix)


def claim_run_folder(args, setup):
    """No run is lost: an --out that already holds another run's last.pt or metrics.jsonl is refused (exit 2, one
    message), unless --resume continues it or --overwrite starts it afresh (the main process then removes that
    run's files first, so that its metrics.jsonl is not appended to nor its curves drawn into the new run's)."""
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(args.out, name))]
    if not found or args.resume:
        return
    if not args.overwrite:
        if setup.main:
            print(f"error: {args.out} already holds a run ({', '.join(found)}). Continue it with --resume "
                  f"{os.path.join(args.out, 'last.pt')}, start it afresh with --overwrite, or choose another --out.",
                  file=sys.stderr)
        raise SystemExit(2)
    if setup.main:
        for name in sorted(os.listdir(args.out)):
            if name in RUN_FILES or name.startswith(RUN_PICTURES):
                os.remove(os.path.join(args.out, name))
        setup.say(f"--overwrite: removed the earlier run's {', '.join(found)} from {args.out}")


def git_commit(folder=os.path.dirname(os.path.abspath(__file__))):
    """The commit of the code in `folder` when it is a git checkout, "+dirty" when files differ from it; else None
    (no git, not a checkout): a record, never an error."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def write_run_info(args, setup, trainer, num_images, steps_per_epoch):
    """Print the run's configuration and write it to <out>/config.json: -> that record."""
    os.makedirs(args.out, exist_ok=True)
    run_info = {"model": args.config.to_dict(),
                "train": {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "ckpt")},
                "device": str(setup.device), "precision": setup.precision, "world_size": setup.world,
                "torch": torch.__version__, "git_commit": git_commit()}
    if setup.main:
        setup.say(json.dumps(run_info, indent=2))
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(run_info, f, indent=2)
        setup.say(f"{sum(p.numel() for p in trainer.raw_model.parameters()) / 1e6:.1f} M parameters; {num_images} "
                  f"images, {steps_per_epoch} steps/epoch on {setup.device} ({setup.precision}), {args.workers} workers")
    return run_info


# ----------------------------------------------------------------------------- logging


class RunLog:
    """Where the run's numbers go, from the main process only: each epoch's record to metrics.jsonl and the
    console; curves.png, redrawn from the whole metrics.jsonl (a resumed run appends to it, so the picture shows
    the whole run); and with --tensorboard the same numbers as TensorBoard scalars, step/<key> after every step
    and epoch/<key> after every epoch, <key> as in metrics.jsonl."""

    def __init__(self, args, setup):
        self.setup = setup
        self.metrics_path = os.path.join(args.out, "metrics.jsonl")
        self.curves_path = os.path.join(args.out, "curves.png")
        self.drawing = True  # until matplotlib turns out to be missing
        self.writer = tensorboard_writer()(args.out) if args.tensorboard and setup.main else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()

    def step(self, step, values):
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"step/{key}", value, step)

    def epoch(self, record):
        if not self.setup.main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for line in epoch_lines(record):
            self.setup.say(line)
        if record["skipped_images"]:
            self.setup.say(f"warning: {record['skipped_images']} unreadable images were skipped this epoch "
                           f"(named above)")
        self.draw()
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch":
                    self.writer.add_scalar(f"epoch/{key}", value, record["epoch"])
            self.writer.flush()  # an interrupted run keeps every finished epoch's scalars

    def draw(self):
        """Redraw curves.png. A picture is never worth a run: a failure to draw is a warning, and training goes on."""
        if not self.drawing:
            return
        try:
            drawn = draw_curves(self.metrics_path, self.curves_path)
        except Exception as e:  # any error inside plotting: a matplotlib bug, an odd value, a full disk
            self.setup.say(f"warning: {self.curves_path} not drawn ({type(e).__name__}: {e}); training goes on")
            return
        if drawn is None:
            self.setup.say("curves.png not drawn: matplotlib is not installed (metrics.jsonl has every number)")
            self.drawing = False  # said once


LOSS_TERMS = ("similarity", "reconstruction", "distillation", "grouping")  # SimFLE's parts; grouping is l_g²
WEIGHTED = tuple("weighted_" + term for term in LOSS_TERMS)  # the terms as they add up to the total
SHARES = tuple("grad_share_" + term for term in LOSS_TERMS)  # each term's share of the backbone's gradient


def epoch_lines(record):
    """The epoch's record as printed: the run's state, then the total as the sum of its weighted terms with each
    one's share (which one dominates), then the unweighted losses."""
    def show(key):
        value = record[key]
        return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
    losses = {"total", "l_g", *LOSS_TERMS, *WEIGHTED, *SHARES}
    lines = [" ".join(show(k) for k in record if k not in losses)]
    if "total" in record:  # absent only when every batch of the epoch was unreadable
        total = record["total"]
        terms = " + ".join(f"{k} {record[k]:.4g} ({100 * record[k] / (total or 1):.1f} %)" for k in WEIGHTED)
        lines += [f"  loss: total={total:.4g} = {terms}",
                  "  unweighted: " + " ".join(show(k) for k in (*LOSS_TERMS, "l_g"))]
    if SHARES[0] in record:
        lines.append("  share of the ResNet's gradient: " + ", ".join(
            f"{k[len('grad_share_'):]} {100 * record[k]:.1f} %" for k in SHARES))
    return lines


# what curves.png draws: (panel title, metrics.jsonl keys on that axis, log scale); each loss gets its own axis, as
# they differ by orders of magnitude, and one log axis shows the weighted terms beside the total they add up to
CURVE_PANELS = [("loss (log scale)", ("total", *WEIGHTED), True),
                ("similarity (L_s)", ("similarity",), False),
                ("reconstruction (L_r)", ("reconstruction",), False),
                ("distillation (L_d)", ("distillation",), False),
                ("grouping l_g (the total has β·l_g²)", ("l_g",), False),
                ("share of the ResNet's gradient", SHARES, False),
                ("learning rate", ("lr",), False),
                ("images / s", ("images_per_s",), False),
                ("k-NN accuracy, held-out", ("knn_accuracy",), False),
                ("landmark hit rate, semantic masking", ("landmark_hit_rate",), False)]


def draw_curves(metrics_path, png_path):
    """Draw curves.png from the whole metrics.jsonl, against the epoch: the panels of CURVE_PANELS whose keys the
    run logs. Written to a temporary file and renamed, so a reader never sees half a picture.
    -> the epochs drawn, or None when matplotlib is not installed."""
    try:  # imported here: matplotlib is optional; Figure, not pyplot, leaves a notebook's backend as it was
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    with open(metrics_path) as f:  # an epoch logged twice (a run restarted in the same folder): its latest record
        rows = sorted({r["epoch"]: r for r in map(json.loads, f)}.values(), key=lambda r: r["epoch"])
    panels = [(title, [k for k in keys if any(k in r for r in rows)], log) for title, keys, log in CURVE_PANELS]
    panels = [panel for panel in panels if panel[1]]
    # the first panel (the total and its terms) gets the top row, its legend above it in place of a title; the
    # others follow three to a row
    grid_rows = 1 + math.ceil((len(panels) - 1) / 3)
    fig = Figure(figsize=(12, 2.8 * grid_rows), dpi=100, layout="constrained")
    grid = fig.add_gridspec(grid_rows, 3)
    axes = [fig.add_subplot(grid[0, :])] + [fig.add_subplot(grid[1 + i // 3, i % 3]) for i in range(len(panels) - 1)]
    for ax, (title, keys, log) in zip(axes, panels):
        for key in keys:
            points = [(r["epoch"], r[key]) for r in rows if key in r and (r[key] > 0 or not log)]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        if log:
            ax.set_yscale("log")
            ax.legend(fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(keys), frameon=False)
            ax.set_ylabel(title, fontsize=9)
        else:
            ax.set_title(title, fontsize=10)
            if len(keys) > 1:  # several keys on one axis (the gradient shares): say which line is which
                ax.legend(fontsize=7)
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    tmp = png_path + ".tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, png_path)
    return [r["epoch"] for r in rows]


def cli(argv=None):
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
