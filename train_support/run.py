"""Run machinery of train.py: where a process trains, how a run stops, resumes and saves.

  Setup             device, precision and the process's place among DDP processes (torchrun)
  Position          where the run stands (epoch, step), saved in every checkpoint
  resume_options    the options a resumed run takes from its checkpoint
  make_loader     one DataLoader for the whole run, its order split over DDP processes and resumable
                    from any step of an epoch (EpochSampler)
  save_checkpoint   atomic writes; rng_states / restore_rng: every process's RNG for an exact resume
  any_process       one flag agreed by every DDP process (skip a step, stop on a NaN)
  checkpoint_activations   recompute block activations in the backward (less memory)
  Stop              SIGINT / SIGTERM / --stop-after-steps: finish the step, save, stop
None of it is the paper's method: train.py reads without it.
"""
import contextlib
import dataclasses
import functools
import os
import signal
import subprocess
import sys

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, DistributedSampler

import data
from eval_support.common import CheckpointError, load_checkpoint, pick_device

# ----------------------------------------------------------------------------- device and precision


def cpu_has_native_bf16():
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def pick_precision(name, device):
    """auto: bf16 autocast on GPUs that have it and on CPUs with native bf16 arithmetic, fp16 +
    GradScaler on older GPUs, fp32 elsewhere (MPS, CPUs without bf16 instructions, where bf16 is
    emulated and slow)."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_native_bf16(device) else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    return name


def cuda_has_native_bf16(device):
    """bf16 tensor cores: compute capability 8.0 (Ampere) and later. Not
    torch.cuda.is_bf16_supported(), which by default also answers True where bf16 is only emulated
    (a T4 is 7.5, a V100 7.0) and runs on slow fallback kernels."""
    if torch.version.hip:  # ROCm GPUs that run PyTorch have bf16
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def process_device(name, local_rank, cuda_available, say=True):
    """Under torchrun, one GPU per process: the GPU of its LOCAL_RANK, whatever --device cuda:N
    says (which would put every process on GPU N). -> the device name."""
    if name == "auto" and cuda_available or name.startswith("cuda"):
        if name not in ("auto", "cuda") and say:
            print(f"--device {name} under torchrun: each process takes the GPU of its LOCAL_RANK "
                  "instead", file=sys.stderr)
        return f"cuda:{local_rank}"
    return name


class Setup:
    """Where this process trains: device, precision, and its place among DDP processes (torchrun
    sets RANK and WORLD_SIZE)."""

    def __init__(self, args):
        self.distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank, self.world = 0, 1
        if self.distributed:
            self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.main = self.rank == 0
        if self.distributed:
            args.device = process_device(args.device, int(os.environ.get("LOCAL_RANK", 0)),
                                         torch.cuda.is_available(), self.main)
        self.device = pick_device(args.device)
        if self.distributed:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.precision = pick_precision(args.precision, self.device)

    def say(self, *a, **k):
        if self.main:
            print(*a, **k)


# ----------------------------------------------------------------------------- position and resume


@dataclasses.dataclass
class Position:
    """Where the run stands. progress: the running sums of an epoch cut by an interrupt, else {}."""
    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    progress: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, ckpt):
        return cls(**{f.name: ckpt[f.name] for f in dataclasses.fields(cls)})

    def state(self):
        return dataclasses.asdict(self)


def resume_options(args, argv, parser, runtime_options):
    """With --resume, every option not given on the command line comes from the checkpoint (except
    this invocation's own, runtime_options), and the run folder is the checkpoint's."""
    given = {a.dest for a in parser._actions for o in a.option_strings
             if any(x == o or x.startswith(o + "=") for x in argv)}
    args.ckpt = None
    if not args.resume:
        return
    args.ckpt = load_checkpoint(args.resume)
    for key, value in args.ckpt["train"].items():
        if key not in given and key not in runtime_options and hasattr(args, key):
            setattr(args, key, value)
    if "out" not in given:
        args.out = os.path.dirname(os.path.abspath(args.resume))


def check_same_model(args):
    """A run resumes only with the model configuration its checkpoint was trained with."""
    theirs = args.ckpt["config_obj"]
    if args.config != theirs:
        diff = {k: (v, getattr(args.config, k)) for k, v in dataclasses.asdict(theirs).items()
                if getattr(args.config, k) != v}
        raise CheckpointError(f"{args.resume} was trained with another model configuration "
                              f"(field: (checkpoint, asked) {diff}); drop those options to resume "
                              "it")


# ----------------------------------------------------------------------------- the data order


class EpochSampler(torch.utils.data.Sampler):
    """One epoch's order of the training set from a given step on, as (epoch, index) pairs.

    A single DataLoader serves every epoch, so its worker processes persist (no restart per epoch);
    the epoch travels with each index because those workers hold their own copies of the dataset.
    set(epoch, start_step) before iterating; start_step > 0 skips the batches a resumed run has
    done.
    """

    def __init__(self, order, batch_size, steps_per_epoch):
        self.order = order  # a DistributedSampler
        self.batch_size, self.steps = batch_size, steps_per_epoch
        self.epoch, self.start = 0, 0

    def set(self, epoch, start_step):
        self.order.set_epoch(epoch)
        self.epoch, self.start = epoch, start_step

    def __iter__(self):
        indices = list(self.order)[self.start * self.batch_size: self.steps * self.batch_size]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self):
        return (self.steps - self.start) * self.batch_size


def make_loader(dataset, setup, per_rank, max_steps, workers, seed):
    """The run's one DataLoader: this process's share of a shuffled order, per_rank images a batch,
    at most max_steps batches an epoch. Its workers persist across epochs (benchmarks/README.md, the
    loader)."""
    order = DistributedSampler(dataset, num_replicas=setup.world, rank=setup.rank, shuffle=True,
                               seed=seed, drop_last=True)
    steps = len(order) // per_rank
    steps = min(steps, max_steps) if max_steps else steps
    return DataLoader(dataset, batch_size=per_rank, sampler=EpochSampler(order, per_rank, steps),
                      num_workers=workers, collate_fn=data.collate,
                      pin_memory=setup.device.type == "cuda", drop_last=True,
                      persistent_workers=workers > 0,
                      # keeps the global RNG untouched
                      generator=torch.Generator().manual_seed(seed))


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


def rng_states(setup):
    """Every process's RNG states, in rank order (gathered under DDP: every process calls this)."""
    mine = rng_state(setup.device)
    if not setup.distributed:
        return [mine]
    states = [None] * setup.world
    dist.all_gather_object(states, mine)
    return states


def restore_rng(ckpt, setup, seed):
    """Each process takes back its own RNG states from the checkpoint (its groups, random masks and
    device-side augmentations go on as if never stopped). A checkpoint of another number of
    processes (or one from before per-process states) gives process 0 its states and the others
    fresh seeds, said once."""
    states = ckpt.get("rng_per_process") or [ckpt["rng"]]
    if len(states) == setup.world:
        set_rng_state(states[setup.rank], setup.device)
        return
    if setup.rank == 0:
        set_rng_state(states[0], setup.device)
    else:
        torch.manual_seed(seed + setup.rank + 1_000_003 * ckpt["step"])
    setup.say(f"the checkpoint holds the RNG states of {len(states)} process(es), this run has "
              f"{setup.world}: processes other than 0 draw from fresh seeds (not an exact resume)")


# ----------------------------------------------------------------------------- activation
# checkpointing


@contextlib.contextmanager
def buffers_kept(module):
    """Put the module's buffers back as they were on exit. A recomputed forward runs its BatchNorms
    in train mode again; without this, the batch would count twice in their running statistics."""
    saved = [b.clone() for b in module.buffers()]
    try:  # also when checkpoint stops a recomputation early, by raising inside it
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)


def checkpointed_forward(block, forward, *args, **kwargs):
    """block's own forward under activation checkpointing: only its inputs are kept, the rest is
    recomputed in the backward (in the forward's autocast and RNG state, so with the same
    result)."""
    # no-grad passes (origin, target) keep no activations to begin with
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    # compiled, the backward recomputes values, never buffer updates
    if torch.compiler.is_compiling():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs,
                      context_fn=lambda: (contextlib.nullcontext(), buffers_kept(block)))


def checkpoint_activations(model):
    """Activation checkpointing on the online ResNet's blocks (layer1..layer4) and FaceMAE's
    transformer blocks. Each block's forward is replaced on the instance, so the module tree and the
    state_dict keys stay as they are: checkpoints load with or without it."""
    b = model.backbone
    blocks = [*b.layer1, *b.layer2, *b.layer3, *b.layer4]
    if model.config.use_facemae:
        blocks += [*model.facemae.encoder, *model.facemae.decoder]
    for block in blocks:
        block.forward = functools.partial(checkpointed_forward, block, block.forward)


# ----------------------------------------------------------------------------- stopping


def any_process(flag, setup):
    """flag of this process -> True where it is True on any process (one all-reduce under DDP), so
    that all of them take the same branch: a process that skipped a step or left alone would leave
    the others waiting in the next all-reduce until the collective timeout."""
    if not setup.distributed:
        return flag
    flag = torch.tensor([float(flag)], device=setup.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class NonFiniteLoss(Exception):
    """A loss part became NaN or infinite; the weights were not updated."""


class Stop:
    """SIGINT / SIGTERM (and --stop-after-steps) ask the run to finish its step, save and stop. Used
    as a context manager, it puts the handlers that were there before back on exit."""

    def __init__(self, setup, out):
        self.reason, self.setup, self.out = None, setup, out
        self.previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous[0])
        signal.signal(signal.SIGTERM, self.previous[1])

    def on_signal(self, signum, frame):
        if self.reason is not None:  # a second Ctrl-C gives up at once; last.pt stays valid
            raise KeyboardInterrupt
        self.reason = signum
        self.setup.say(f"\n{signal.Signals(signum).name} received: finishing this step and saving "
                       f"{self.out}/last.pt ...")

    def agreed(self):
        """With DDP every process stops at the same step: any one's reason stops them all."""
        if self.setup.distributed:
            flag = torch.tensor([self.reason is not None], dtype=torch.float32,
                                device=self.setup.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and self.reason is None:
                self.reason = signal.SIGTERM
        return self.reason is not None

    def exit_code(self, ckpt_path):
        if self.reason == "steps":
            self.setup.say(f"stopped after --stop-after-steps; continue with: "
                           f"python train.py --resume {ckpt_path}")
            return 0
        self.setup.say(f"saved {ckpt_path}. Resume with: python train.py --resume {ckpt_path}")
        return 130 if self.reason == signal.SIGINT else 143


# ----------------------------------------------------------------------------- the run folder

RUN_FILES = ("last.pt", "metrics.jsonl")  # a folder that holds one of these holds a run
# what --overwrite removes with them (TensorBoard's files: a prefix)
RUN_PICTURES = ("curves.png", "events.out.tfevents.")


def claim_run_folder(args, setup):
    """No run is lost: an --out that already holds another run's last.pt or metrics.jsonl is refused
    (exit 2, one message), unless --resume continues it or --overwrite starts it afresh (the main
    process then removes that run's files first, so that its metrics.jsonl is not appended to nor
    its curves drawn into the new run's)."""
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(args.out, name))]
    if not found or args.resume:
        return
    if not args.overwrite:
        if setup.main:
            print(f"error: {args.out} already holds a run ({', '.join(found)}). Continue it with "
                  f"--resume {os.path.join(args.out, 'last.pt')}, start it afresh with "
                  "--overwrite, or choose another --out.", file=sys.stderr)
        raise SystemExit(2)
    if setup.main:
        for name in sorted(os.listdir(args.out)):
            if name in RUN_FILES or name.startswith(RUN_PICTURES):
                os.remove(os.path.join(args.out, name))
        setup.say(f"--overwrite: removed the earlier run's {', '.join(found)} from {args.out}")


def git_commit(folder=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
    """The commit of the code in `folder` when it is a git checkout, "+dirty" when files differ from
    it; else None (no git, not a checkout): a record, never an error."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                              text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    changed = dirty.returncode == 0 and dirty.stdout.strip()
    return head.stdout.strip() + ("+dirty" if changed else "")
