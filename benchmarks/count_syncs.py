"""
Host syncs per training step: how often train.py's step (train.Trainer.step, views made on the
device) makes the host wait for the device. On CUDA, torch.cuda.set_sync_debug_mode("warn") counts
every synchronising call; on a CPU (a dry run) the calls that would synchronise on a GPU are counted
(.item, .tolist, .cpu, .nonzero).

    python benchmarks/count_syncs.py --device cuda --preset paper --batch-size 64
    python benchmarks/count_syncs.py --device cpu --preset tiny --batch-size 8     # dry run

The gradient-share measurement (every --grad-share-every steps, 100 by default) is off here: it is
a measurement, with syncs of its own, on one step in a hundred.
"""
import argparse
import contextlib
import os
import sys
import types
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train  # noqa: E402
from simfle import SimFLEConfig  # noqa: E402
from train_support.run import pick_precision  # noqa: E402

SYNCING = ("item", "tolist", "cpu", "nonzero")  # what the CPU dry run counts


def device_batch(cfg, n, seed=0):
    """What PretrainView(augment="device") collates: uint8 origin and source, crops (n, 4)."""
    g = torch.Generator().manual_seed(seed)
    origin = torch.randint(0, 256, (n, 3, cfg.origin_size, cfg.origin_size), dtype=torch.uint8,
                           generator=g)
    source = torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8, generator=g)
    crop = torch.tensor([[112.0, 112.0, 0.08, cfg.view_size]]).repeat(n, 1)
    return [origin, source, crop]


@contextlib.contextmanager
def counting_cpu_calls(calls):
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def wrap(name):
        def counted(self, *a, **k):
            calls.append(name)
            return originals[name](self, *a, **k)
        return counted
    for name in SYNCING:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="paper", choices=["tiny", "paper"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--precision", default="auto")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = SimFLEConfig.preset(args.preset)
    setup = types.SimpleNamespace(device=device, distributed=False, rank=0, world=1, main=True,
                                  precision=pick_precision(args.precision, device),
                                  say=print)
    trainer = train.Trainer(cfg, setup, lr=0.01, weight_decay=1e-4)
    batch = device_batch(cfg, args.batch_size)
    trainer.step(batch, 0.01)  # warm-up: cuDNN's kernel choice, lazy initialisation
    calls = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(args.steps):
                trainer.step(batch, 0.01)
        torch.cuda.set_sync_debug_mode(0)
        calls = [str(w.message).splitlines()[0] for w in caught
                 if "synchroniz" in str(w.message).lower()]
    else:
        # the .item() calls of data.pretrain_batch read host tensors: not syncs, left out
        with counting_cpu_calls(calls):
            for _ in range(args.steps):
                trainer.step(batch, 0.01)
    per_step = len(calls) / args.steps
    print(f"{args.device} ({setup.precision}), preset {args.preset}, batch {args.batch_size}: "
          f"{per_step:g} host syncs a step over {args.steps} steps")
    for call in sorted(set(calls)):
        print(f"  {calls.count(call) / args.steps:g} a step: {call}")
    if device.type == "cpu":
        print("  (CPU dry run: the 2 .item() read the crop settings off host tensors in "
              "data.pretrain_batch, and the nonzero() are the CPU's indexed colour path; a GPU "
              "takes "
              "device_augment.colour's sync-free path. None of them waits on a CPU.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
