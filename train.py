"""
Pretrain SimFLE without labels, then (where the faces have labels) probe the trunk it learned
against two random trunks.

    python train.py                         # the quick start: tiny preset, width 0.5, CPU-sized
    python train.py --data rafdb             # paper preset on RAF-DB (data/rafdb), one GPU
    python train.py --resume runs/rafdb-paper/last.pt
    torchrun --nproc_per_node=2 train.py --data rafdb   # several GPUs (DDP)

Read train() first: build the data and the model, loop over epochs (train_epoch) and steps
(Trainer.step, the training step of the paper), log, save, probe. What a run needs around that lives
in train_support/run.py (device and precision, DDP, stop and resume, checkpoint files, activation
checkpointing) and train_support/observe.py (metrics.jsonl, the console, curves.png, TensorBoard,
the epoch-end monitors); docs/architecture.md maps the files.

Device: cuda -> mps -> cpu unless told. Precision: bf16 autocast on GPUs that have it and on CPUs
with bf16 instructions, fp16 + GradScaler on older GPUs (a Colab T4), fp32 on MPS and other CPUs.
The model file has no device code. A run folder (--out) holds config.json, metrics.jsonl (one record
per epoch), curves.png (redrawn after every epoch) and last.pt; --tensorboard adds TensorBoard
scalars.
"""
import dataclasses
import math
import os
import sys

import torch
from tqdm import tqdm

import data
from eval import compare_with_random
from simfle import SimFLE
from eval_support.common import CHECKPOINT_FORMAT, CheckpointError, run_cli
# the command line, every option and its defaults per preset: train_support/options.py (the model's
# options, such as --gfl and --masking, are generated there, one per SimFLEConfig field); see --help
from train_support.options import parse_args
from train_support.optim import make_optimizer
from train_support.observe import EpochTally, Monitor, RunLog, gradient_shares, write_run_info
from train_support.run import (NonFiniteLoss, Position, Setup, Stop, any_process, buffers_kept,
                         checkpoint_activations, claim_run_folder, make_loader, restore_rng,
                         rng_states, save_checkpoint)

# ----------------------------------------------------------------------------- data and model


def build_data(args, setup):
    """The unlabelled training views and one DataLoader for the whole run: -> (train_base, loader).
    """
    train_base = data.get_dataset(args.data, args.root, "train", seed=args.seed, render=True,
                                  synthetic_count=args.num_synthetic, synthetic_look=args.look)
    cfg = args.config
    views = data.PretrainView(train_base, cfg.view_size, cfg.origin_size, seed=args.seed,
                              crop_scale=args.crop_scale, augment=args.augment)
    per_rank = args.batch_size // setup.world
    if per_rank < 2:
        raise SystemExit(f"error: --batch-size {args.batch_size} over {setup.world} processes "
                         f"leaves fewer than 2 images per process; BatchNorm needs at least 2")
    if len(views) < args.batch_size:
        raise SystemExit(f"error: the {args.data} training split has {len(views)} images, fewer "
                         f"than one batch of {args.batch_size}; use a smaller --batch-size")
    return train_base, make_loader(views, setup, per_rank, args.max_steps, args.workers, args.seed)


class Trainer:
    """The model and what updates it; step() is one SimFLE training step."""

    def __init__(self, cfg, setup, lr, weight_decay, compile=False, activation_checkpointing=False,
                 channels_last=None, optimizer="sgd", **optimizer_options):
        device, self.setup = setup.device, setup
        # checkpoints are saved from this plain module
        self.raw_model = model = SimFLE(cfg).to(device)
        # channels_last (None: by device): what cuDNN's and oneDNN's fast convolutions (bf16 on CPU
        # above all) want; docs/performance.md has the measurements
        self.channels_last = device.type in ("cuda",
                                             "cpu") if channels_last is None else channels_last
        if activation_checkpointing:
            checkpoint_activations(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            # fixed input sizes: let cuDNN pick its fastest kernels
            torch.backends.cudnn.benchmark = True
            # fp32 convolutions stay fp32 (cuDNN runs them in TF32 on Ampere and later by default):
            # under autocast the only one is the grouping layer's, kept fp32 on purpose (SimFLE.ffl)
            torch.backends.cudnn.allow_tf32 = False
            if setup.distributed:
                model = self.raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # SGD (the paper) or LARS; optimizer_options: exclude_norm_bias, predictor_lr_mult, lars_eta
        self.optimizer = make_optimizer(model, optimizer, lr, weight_decay, **optimizer_options)
        self.scaler = torch.amp.GradScaler(device.type, enabled=setup.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.precision)
        self.device, self.model = device, model
        if setup.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if compile:  # after the DDP wrap, as DDP's documentation recommends
            self.model = torch.compile(self.model)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def step(self, batch, lr, measure_shares=False, progress=0.0):
        """Augment on the device, forward, check, backward, SGD, EMA (paper §3): -> the loss parts
        as floats, with each loss term's share of the ResNet's gradient when measure_shares.
        progress: the share of the run done (the EMA's cosine schedule)."""
        # blur + normalisation, batched
        origin, view1, view2 = data.pretrain_batch(batch, self.device)
        if self.channels_last:
            origin, view1, view2 = (x.contiguous(memory_format=torch.channels_last)
                                    for x in (origin, view1, view2))
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        self.optimizer.zero_grad(set_to_none=True)  # free last step's gradients before the forward
        shares = self.gradient_shares(origin, view1, view2) if measure_shares else {}
        with self.autocast():
            loss, parts = self.model(origin, view1, view2)  # L = L_s + L_r + α·L_d + β·L_g
        self.scaler.scale(loss).backward()
        # one host sync a step: the parts come over together, after the backward is queued
        values = dict(zip(parts, torch.stack([v.float() for v in parts.values()]).tolist()))
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if any_process(bool(bad), self.setup):  # every process stops at the same step
            # the optimizer has not touched the weights; last.pt keeps the last good state
            raise NonFiniteLoss(", ".join(bad) or "on another process")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.raw_model.update_target(progress)  # EMA of the target after every optimizer step
        return {**values, **shares}

    def gradient_shares(self, origin, view1, view2):
        """gradient_shares (train_support/observe.py) on this batch, invisible to the training: the
        random draws (groups, masks) and the BatchNorm statistics are put back as they were, and no
        .grad is touched, so a run with the measurement trains exactly as one without it."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), buffers_kept(self.raw_model), self.autocast():
            # fp16: the terms scaled as the loss is, so that small gradients do not underflow
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            return gradient_shares(self.raw_model, origin, view1, view2, scale)

    def state(self):
        return {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load(self, ckpt, path):
        try:
            self.raw_model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise CheckpointError(f"{path} does not fit this model: {first}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        elif self.scaler.is_enabled():  # a bf16 or fp32 run continued in fp16 (an A100's on a T4)
            self.setup.say(f"{path} was trained without fp16 loss scaling: the scale starts afresh")


def learning_rate(args, epoch, step, steps_per_epoch):
    """Cosine decay per epoch (the paper), after an optional linear warm-up per step (the paper has
    none)."""
    lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
    warmup = round(args.warmup_epochs * steps_per_epoch)
    return lr * min(1.0, (step + 1) / warmup) if warmup else lr


# ----------------------------------------------------------------------------- training


def train(argv=None):
    """The procedure: set up, build the data and the model (or resume), loop over epochs,
    checkpoint, probe.
    -> exit code. Ctrl-C / SIGTERM save and stop the run (train_support/run.py's Stop)."""
    args = parse_args(argv)
    setup = Setup(args)
    claim_run_folder(args, setup)
    torch.manual_seed(args.seed + setup.rank)
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1) if setup.device.type == "cuda" else 0
    train_base, loader = build_data(args, setup)
    trainer = Trainer(args.config, setup, args.lr, args.weight_decay, args.compile,
                      args.activation_checkpointing, optimizer=args.optimizer,
                      exclude_norm_bias=args.exclude_norm_bias,
                      predictor_lr_mult=args.predictor_lr_mult, lars_eta=args.lars_eta)
    at = Position()
    if args.ckpt is not None:
        trainer.load(args.ckpt, args.resume)
        at = Position.of(args.ckpt)
        restore_rng(args.ckpt, setup, args.seed)
    monitor = Monitor(args, setup, train_base)
    run_info = write_run_info(args, setup, trainer, len(loader.dataset), loader.sampler.steps)
    ckpt_path = os.path.join(args.out, "last.pt")

    def save():
        rngs = rng_states(setup)  # every process's (a collective under DDP)
        if setup.main:
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, **trainer.state(), **at.state(), "preset": args.preset,
                "config": dataclasses.asdict(args.config), "data": args.data,
                "classes": list(train_base.classes),
                "train": run_info["train"], "rng": rngs[0], "rng_per_process": rngs})

    if at.step_in_epoch >= loader.sampler.steps:
        at.epoch, at.step_in_epoch = at.epoch + 1, 0
    with Stop(setup, args.out) as stop, RunLog(args, setup) as log:
        for epoch in range(at.epoch, args.epochs):
            try:
                record = train_epoch(args, trainer, loader, at, stop, log)
            except NonFiniteLoss as e:
                setup.say(f"error: non-finite loss at epoch {epoch + 1}, step {at.step + 1} (bad "
                          f"parts: {e}). The weights were not updated and {ckpt_path} was not "
                          f"overwritten. Try a lower --lr, or --precision fp32.")
                return 3
            if record is None:  # stopped inside the epoch: save where it stands
                save()
                return stop.exit_code(ckpt_path)
            record.update(monitor(trainer.raw_model))
            at.epoch, at.step_in_epoch, at.progress = epoch + 1, 0, {}
            save()
            log.epoch(record)
            if stop.reason is not None:
                return stop.exit_code(ckpt_path)
    return finish(args, setup, ckpt_path)


def train_epoch(args, trainer, loader, at, stop, log):
    """One epoch from at.step_in_epoch on: -> the epoch's log record, or None if it was stopped."""
    setup, steps = trainer.setup, loader.sampler.steps
    tally = EpochTally(at.progress, at.step_in_epoch)
    loader.sampler.set(at.epoch, at.step_in_epoch)
    trainer.model.train()
    bar = tqdm(loader, total=steps, initial=at.step_in_epoch, disable=not setup.main,
               desc=f"epoch {at.epoch + 1}/{args.epochs}", **data.progress_options())
    for batch, n_bad in bar:
        tally.skipped += n_bad
        at.step_in_epoch += 1
        # every image of this batch was unreadable (on any process): its place in the epoch is
        # used up
        if any_process(batch is None, setup):
            continue
        lr = learning_rate(args, at.epoch, at.step, steps)
        every = args.grad_share_every
        values = trainer.step(batch, lr, progress=at.step / (args.epochs * steps),
                              measure_shares=every > 0 and (at.step_in_epoch - 1) % every == 0)
        at.step += 1
        tally.add(values, batch[0].shape[0] * setup.world)
        log.step(at.step, {**values, "lr": lr})
        bar.set_postfix_str(tally.line(values, lr), refresh=False)
        if args.stop_after_steps and at.step >= args.stop_after_steps and stop.reason is None:
            stop.reason = "steps"
        if stop.agreed():
            break
    bar.close()
    if stop.reason is not None and at.step_in_epoch < steps:
        at.progress = tally.progress()
        return None
    return tally.record(at.epoch, at.step, learning_rate(args, at.epoch, at.step, steps))


def finish(args, setup, ckpt_path):
    """After the last epoch: leave the process group; on labelled faces, the verdict: the trunk
    against two random ones (eval.compare_with_random)."""
    if setup.distributed:
        torch.distributed.destroy_process_group()
    if setup.main:
        setup.say(f"done: {ckpt_path}")
        if args.probe:
            compare_with_random(ckpt_path, args.data, args.root, setup.device,
                                epochs=args.probe_epochs,
                                seed=args.seed, workers=args.workers, look=args.look,
                                count=args.num_synthetic)
    return 0


def main(argv=None):
    return train(argv)


def cli(argv=None):
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
