"""
Pretrain SimFLE without labels, then (on the built-in faces) probe the trunk it learned.

    python train.py                                  # tiny preset on the built-in synthetic faces, CPU-sized
    python train.py --data rafdb                     # paper preset on RAF-DB (data/rafdb), one GPU
    python train.py --resume runs/rafdb-paper/last.pt
    torchrun --nproc_per_node=2 train.py --data rafdb   # several GPUs (DDP)

Every field of SimFLEConfig is an option (python train.py --help). One device / precision policy
lives here: cuda -> mps -> cpu; bf16 autocast on GPUs that have it and on CPUs with bf16 instructions,
fp16 + GradScaler on older GPUs (a Colab T4), fp32 on MPS and other CPUs; channels_last on CUDA and CPU.
The model file has no device code.
"""
import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import data
from simfle import SimFLE, SimFLEConfig

CHECKPOINT_FORMAT = "simfle-checkpoint-v1"
# training defaults per preset (the paper: batch 256, 100 epochs; tiny: a few minutes on a laptop CPU)
TRAIN_DEFAULTS = {"paper": dict(epochs=100, batch_size=256), "tiny": dict(epochs=2, batch_size=64)}
# options that belong to this invocation, never taken from a checkpoint on --resume
RUNTIME_OPTIONS = {"resume", "ckpt", "device", "precision", "workers", "compile", "out", "stop_after_steps"}


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why and what to do."""


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


def build_parser():
    p = argparse.ArgumentParser(description="Pretrain SimFLE (self-supervised facial expression features).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="synthetic", choices=list(data.DATASETS), help="dataset name")
    p.add_argument("--root", default=None, help="dataset folder (default: data/<data>)")
    p.add_argument("--preset", default=None, choices=["tiny", "paper"],
                   help="model preset (default: tiny on synthetic, paper otherwise)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: 100 paper, 2 tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: 256 paper, 64 tiny)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 x batch / 256)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--out", default=None, help="run folder (default: runs/<data>-<preset>)")
    p.add_argument("--resume", default=None, help="continue from this last.pt")
    p.add_argument("--device", default="auto", help="auto (cuda -> mps -> cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on GPUs and CPUs with bf16 arithmetic, fp16 on older GPUs, else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: 0 on CPU, 8 on GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")
    p.add_argument("--num-synthetic", type=int, default=None, help="size of the synthetic training set")
    p.add_argument("--knn-samples", type=int, default=1000, help="cap on each split for the k-NN monitor (0: off)")
    p.add_argument("--probe", type=str2bool, default=None, metavar="BOOL",
                   help="linear probe after training vs a random trunk (default: on for synthetic)")
    p.add_argument("--probe-epochs", type=int, default=30, help="epochs of that final linear probe")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (quick runs, smoke tests)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="save and stop after this many steps in total, as if interrupted (fits a job's time limit)")
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
    if args.lr is None:
        args.lr = 0.05 * args.batch_size / 256  # the paper: lr = 0.05 x batch / 256
    if args.lr <= 0:
        parser.error("--lr must be positive")
    if args.out is None:
        args.out = os.path.join("runs", f"{args.data}-{args.preset}")
    if args.probe is None:
        args.probe = args.data == "synthetic"
    return args


# ----------------------------------------------------------------------------- device and precision


def pick_device(name):
    """cuda -> mps -> cpu unless told."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for, but no CUDA GPU is visible. Use --device cpu.")
    return device


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


def load_checkpoint(path):
    """Load a SimFLE checkpoint with weights_only=True (a checkpoint file can never run code)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusing code, a truncated zip, a text file, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a loadable SimFLE checkpoint (truncated, corrupt, or it contains "
                              f"code, which is never executed): {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a SimFLE checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
                              f"train one with train.py, or use eval.py --ckpt random")
    try:
        ckpt["config_obj"] = SimFLEConfig(**ckpt["config"]).validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an unknown model configuration: {e}") from None
    return ckpt


def rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------- monitoring


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


def knn_predict(train_x, train_y, test_x, num_classes, k=20, temperature=0.07):
    """Weighted k-NN on cosine similarity (the usual self-supervised monitor): -> predicted classes."""
    train_x, test_x = torch.nn.functional.normalize(train_x, dim=1), torch.nn.functional.normalize(test_x, dim=1)
    sim, idx = (test_x @ train_x.T).topk(min(k, len(train_x)), dim=1)
    votes = torch.zeros(len(test_x), num_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
    return votes.argmax(1)


def capped(dataset, n, seed=0):
    """A fixed random subset of at most n items, the same every epoch."""
    if n >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist())


# ----------------------------------------------------------------------------- training


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


def main(argv=None):
    """Train as the command line says; -> exit code. Ctrl-C / SIGTERM save and stop the run (see train());
    the handlers are put back as they were when it returns, so a script calling main() keeps its own."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        return train(argv)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def train(argv=None):
    args = parse_args(argv)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if distributed else (0, 1)
    main_process = rank == 0
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if args.device == "auto" and torch.cuda.is_available():
            args.device = f"cuda:{local}"
        elif args.device == "cuda":
            args.device = f"cuda:{local}"
    device = pick_device(args.device)
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    precision = pick_precision(args.precision, device)
    say = print if main_process else (lambda *a, **k: None)

    cfg, ckpt = args.config, args.ckpt
    torch.manual_seed(args.seed + rank)

    # data: the training split, labels unused; test split for the k-NN monitor when labelled
    train_base = data.get_dataset(args.data, args.root, "train", seed=args.seed, synthetic_count=args.num_synthetic)
    pretrain_set = data.PretrainView(train_base, cfg.view_size, cfg.origin_size, seed=args.seed)
    per_rank = args.batch_size // world
    if per_rank < 2:
        raise SystemExit(f"error: --batch-size {args.batch_size} over {world} processes leaves fewer than "
                         f"2 images per process; BatchNorm needs at least 2")
    if len(pretrain_set) < args.batch_size:
        raise SystemExit(f"error: the {args.data} training split has {len(pretrain_set)} images, fewer than "
                         f"one batch of {args.batch_size}; use a smaller --batch-size")
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
    sampler = DistributedSampler(pretrain_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    epoch_sampler = EpochSampler(sampler, per_rank, steps_per_epoch)
    loader = DataLoader(pretrain_set, batch_size=per_rank, sampler=epoch_sampler, num_workers=workers,
                        collate_fn=data.collate, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=workers > 0,  # measured 1.4-1.7x on the loader (benchmarks/README.md)
                        generator=torch.Generator().manual_seed(args.seed))  # keeps the global RNG untouched

    model = SimFLE(cfg).to(device)
    # measured (benchmarks/README.md): on an H200 1.6x over bf16 alone; on a 2-core CPU 1.2x in fp32, and what
    # makes CPU bf16 pay (oneDNN's bf16 convolutions want channels-last)
    channels_last = device.type in ("cuda", "cpu")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    if device.type == "cuda" and distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start_epoch, start_step, global_step = 0, 0, 0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{args.resume} does not fit this model: {str(e).splitlines()[0]}") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["step"]
        set_rng_state(ckpt["rng"], device)
        if start_step >= steps_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
    raw_model = model  # checkpoints are saved from the uncompiled, unwrapped module
    if args.compile:
        model = torch.compile(model)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    knn_sets = None
    if args.knn_samples > 0 and train_base.classes and main_process:
        try:
            test_base = data.get_dataset(args.data, args.root, "test", seed=args.seed)
            knn_sets = [DataLoader(capped(data.ProbeView(b, cfg.view_size, train=False), args.knn_samples),
                                   batch_size=256, num_workers=workers, collate_fn=data.collate,
                                   generator=torch.Generator().manual_seed(args.seed))
                        for b in (train_base, test_base)]
        except data.DatasetError as e:
            say(f"k-NN monitor off: {e}")

    os.makedirs(args.out, exist_ok=True)
    run_info = {"model": cfg.to_dict(), "train": {k: v for k, v in vars(args).items() if k not in ("config", "overrides", "ckpt")},
                "device": str(device), "precision": precision, "world_size": world, "torch": torch.__version__}
    if main_process:
        say(json.dumps(run_info, indent=2))
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(run_info, f, indent=2)
        say(f"{sum(p.numel() for p in raw_model.parameters()) / 1e6:.1f} M parameters; {len(pretrain_set)} images, "
            f"{steps_per_epoch} steps/epoch on {device} ({precision}), {workers} workers")

    # SIGINT / SIGTERM: finish the step, save, tell how to resume
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:  # a second Ctrl-C gives up at once; last.pt stays valid
            raise KeyboardInterrupt
        stop["signal"] = signum
        say(f"\n{signal.Signals(signum).name} received: finishing this step and saving {args.out}/last.pt ...")
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    ckpt_path = os.path.join(args.out, "last.pt")
    progress = ckpt["progress"] if ckpt is not None else {}  # running sums of an epoch cut by an interrupt

    def checkpoint(epoch, step_in_epoch, progress):
        if main_process:
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch, "step": global_step,
                "progress": progress, "config": cfg.to_dict(), "preset": args.preset, "data": args.data,
                "classes": list(train_base.classes), "train": run_info["train"], "rng": rng_state(device)})

    def stop_code():
        if stop["signal"] == "steps":
            say(f"stopped after {global_step} steps (--stop-after-steps); continue with: "
                f"python train.py --resume {ckpt_path}")
            return 0
        say(f"saved {ckpt_path}. Resume with: python train.py --resume {ckpt_path}")
        return 130 if stop["signal"] == signal.SIGINT else 143

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    for epoch in range(start_epoch, args.epochs):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))  # cosine decay per epoch, no warm-up
        for group in optimizer.param_groups:
            group["lr"] = lr
        epoch_sampler.set(epoch, start_step)
        model.train()
        sums, seen, skipped = progress.get("sums", {}), progress.get("seen", 0), progress.get("skipped", 0)
        taken = progress.get("steps", start_step)  # optimizer steps this epoch (a skipped batch is not one)
        t0 = time.time() - progress.get("elapsed", 0.0)
        progress = {}
        step_in_epoch = start_step
        bar = tqdm(loader, total=steps_per_epoch, initial=start_step, disable=not main_process,
                   desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True)
        for batch, n_bad in bar:
            skipped += n_bad
            if batch is None:  # every image of this batch was unreadable: its place in the epoch is used up
                step_in_epoch += 1
                continue
            origin, view1, view2 = data.pretrain_batch(batch, device)
            if channels_last:
                origin, view1, view2 = (x.contiguous(memory_format=torch.channels_last) for x in (origin, view1, view2))
            optimizer.zero_grad(set_to_none=True)  # free last step's gradients before the forward's activations peak
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss, parts = model(origin, view1, view2)
            values = {k: v.item() for k, v in parts.items()}
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:  # stop before the optimizer touches the weights; last.pt keeps the last good state
                bar.close()
                say(f"error: non-finite loss at epoch {epoch + 1}, step {global_step + 1} (bad parts: "
                    f"{', '.join(bad)}). The weights were not updated and {ckpt_path} was not overwritten. "
                    f"Try a lower --lr, or --precision fp32.")
                return 3
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            raw_model.update_target()  # EMA after every optimizer step
            global_step += 1
            step_in_epoch += 1
            taken += 1
            seen += origin.shape[0] * world
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{values['total']:.3f}", sim=f"{values['similarity']:.3f}",
                            rec=f"{values['reconstruction']:.3f}", lr=f"{lr:.4f}",
                            img_s=f"{seen / (time.time() - t0):.0f}")
            if args.stop_after_steps and global_step >= args.stop_after_steps and stop["signal"] is None:
                stop["signal"] = "steps"
            if distributed:  # every process stops at the same step
                flag = torch.tensor([stop["signal"] is not None], dtype=torch.float32, device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() and stop["signal"] is None:
                    stop["signal"] = signal.SIGTERM
            if stop["signal"] is not None:
                break
        bar.close()
        if stop["signal"] is not None and step_in_epoch < steps_per_epoch:
            checkpoint(epoch, step_in_epoch, {"sums": sums, "seen": seen, "skipped": skipped, "steps": taken,
                                              "elapsed": time.time() - t0})
            return stop_code()
        start_step = 0
        record = {"epoch": epoch + 1, "step": global_step, "lr": lr, "images_per_s": seen / max(time.time() - t0, 1e-9),
                  **{k: v / max(taken, 1) for k, v in sums.items()}, "skipped_images": skipped}
        if knn_sets is not None:
            trunk = raw_model.trunk()
            trunk.eval()
            (tx, ty), (vx, vy) = (embed(trunk, loader_, device) for loader_ in knn_sets)
            record["knn_accuracy"] = (knn_predict(tx, ty, vx, len(train_base.classes)) == vy).float().mean().item()
        checkpoint(epoch + 1, 0, {})
        if main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if skipped:
                say(f"warning: {skipped} unreadable images were skipped this epoch (named above)")
        if stop["signal"] is not None:
            return stop_code()

    if distributed:
        dist.destroy_process_group()
    if main_process:
        say(f"done: {ckpt_path}")
        if args.probe:
            import eval as evaluate
            evaluate.compare_with_random(ckpt_path, args.data, args.root, device, epochs=args.probe_epochs,
                                         seed=args.seed, workers=workers)
    return 0


def run_cli(main, argv=None):
    """Run a script's main(); user mistakes become one message and a non-zero exit instead of a traceback."""
    try:
        return main(argv)
    except (data.DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        given = " ".join(sys.argv[1:] if argv is None else argv) or "the defaults"
        print(f"error: out of GPU memory with {given}. Try a smaller --batch-size, --preset tiny, or "
              f"--precision bf16/fp16; the run folder's last.pt still holds the last completed epoch.", file=sys.stderr)
        return 4


def cli(argv=None):
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
