"""
What train.py's training step costs per configuration: seconds per step, images/s and peak memory.

    python benchmarks/bench_step.py --preset paper --batch-size 8   # CPU: the default configs
    python benchmarks/bench_step.py --preset paper --batch-size 8 \\
        --configs bf16+channels_last,bf16+channels_last+ckpt
    python benchmarks/bench_step.py --device cuda --batch-size 256 --configs all   # all, on a GPU
    python benchmarks/bench_step.py --device cuda --batch-size 256 --memory-fraction 0.107 \\
        --configs bf16,bf16+ckpt

The step timed is train.py's own: train.Trainer(...).step(batch, lr), where batch is what
data.collate makes of data.PretrainView items (uint8 origin and views, a blur sigma per view; random
here), so it includes the batched blur and normalisation on the device, forward, loss read-back,
backward, SGD and the EMA update. Data loading is not in it (benchmarks/bench_data.py measures that
side; gpu.sh runs train.py end to end).

A configuration is a precision, fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler), joined with
'+' to any of
    channels_last  weights and images in channels-last memory format (train.py's default on CPU
                   and CUDA)
    compile        torch.compile of the model
    ckpt           activation checkpointing (train.py --activation-checkpointing true)
`--configs all` is every combination. Each configuration runs in a fresh Python process (this file,
--child), so neither its time nor its peak memory sees another one's: --warmup untimed steps, then
--steps timed ones. The table gives the median step time, images/s = batch / median, the peak memory
(resident set, ru_maxrss, on CPU; torch.cuda.max_memory_allocated on GPU; GiB = 2^30 bytes), both as
ratios to the first configuration measured in the same run ("x faster" > 1 is faster, "x memory" < 1
is leaner), and the machine's 1-minute load average (on a shared CPU, other jobs slow every step
down: read a row measured under load with care).
--memory-fraction F caps this process's share of the GPU
(torch.cuda.set_per_process_memory_fraction), to see what fits a smaller GPU; a configuration that
does not fit reads "out of memory".
"""
import argparse
import datetime
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import train  # noqa: E402
from simfle import SimFLEConfig  # noqa: E402
from train_support.run import Setup

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIONS = ("channels_last", "compile", "ckpt")
DEFAULT_CONFIGS = "fp32,fp32+channels_last,bf16+channels_last,bf16+channels_last+ckpt"


def all_configs():
    """precision x channels_last x compile x ckpt, plainest first."""
    return ["+".join([p, *(o for o, on in zip(OPTIONS, flags) if on)])
            for p in PRECISIONS for flags in itertools.product((False, True), repeat=len(OPTIONS))]


def parse_config(name):
    """'bf16+channels_last+ckpt' -> ('bf16', {'channels_last', 'ckpt'}); a bad name is an error."""
    precision, *options = name.split("+")
    if precision not in PRECISIONS or not set(options) <= set(OPTIONS):
        raise SystemExit(f"bad configuration {name!r}: a precision ({', '.join(PRECISIONS)}) then "
                         "any of "
                         f"+{', +'.join(OPTIONS)}")
    return precision, set(options)


def random_batch(cfg, batch, seed=0):
    """What data.collate returns for `batch` PretrainView items: uint8 (origin, view1, view2) and
    sigma (B,2)."""
    g = torch.Generator().manual_seed(seed)
    origin, view1, view2 = (torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, generator=g)
                            for s in (cfg.origin_size, cfg.view_size, cfg.view_size))
    # as PretrainView draws it
    sigma = torch.empty(batch, 2).uniform_(0.1, 2.0, generator=g) * cfg.view_size / 224
    return origin, view1, view2, sigma


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


# ----------------------------------------------------------------------------- one configuration
# (fresh process)


def measure(spec):
    """Build train.py's Trainer for one configuration and time its step: -> a result dict."""
    precision, options = parse_config(spec["config"])
    setup = Setup(argparse.Namespace(device=spec["device"], precision=precision))
    device = setup.device
    if spec["memory_fraction"] and device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(spec["memory_fraction"], device)
    torch.manual_seed(0)
    cfg = SimFLEConfig.preset(spec["preset"])
    lr = 0.05 * spec["batch"] / 256
    trainer = train.Trainer(cfg, setup, lr, 1e-4, compile="compile" in options,
                            activation_checkpointing="ckpt" in options,
                            channels_last="channels_last" in options)
    trainer.model.train()
    batch = random_batch(cfg, spec["batch"])
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        # reads the loss parts back with .item(), so the device has finished the step
        trainer.step(batch, lr)
        times.append(time.perf_counter() - t)
    timed = times[spec["warmup"]:]
    return {**spec, "step_s": statistics.median(timed), "step_times": timed,
            "first_step_s": times[0],
            "peak_gib": peak_memory_gib(device), "load": os.getloadavg()[0]}


def run_child(spec, timeout):
    """One configuration in a fresh process: -> its result, or the spec with an "error"."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    lines = proc.stderr.strip().splitlines() or ["no output"]
    oom = any("OutOfMemoryError" in line or "out of memory" in line for line in lines)
    return {**spec, "error": "out of memory" if oom else lines[-1][:200]}


# ----------------------------------------------------------------------------- the table (parent
# process)


def format_table(rows):
    """A markdown table, ratios against the first configuration that ran."""
    mem = "peak GPU alloc GiB" if rows and rows[0]["device"].startswith("cuda") else "peak RSS GiB"
    head = ["configuration", "step s (median)", "images/s", "x faster", mem, "x memory",
            "1st step s", "load avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = next((r for r in rows if "error" not in r), None)
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['error']} |" + " |" * (len(head) - 2))
            continue
        lines.append("| " + " | ".join([
            r["config"], f"{r['step_s']:.3f}", f"{r['batch'] / r['step_s']:.1f}",
            f"{base['step_s'] / r['step_s']:.2f}",
            f"{r['peak_gib']:.2f}", f"{r['peak_gib'] / base['peak_gib']:.2f}",
            f"{r['first_step_s']:.1f}",
            f"{r['load']:.2f}"]) + " |")
    return "\n".join(lines)


def machine():
    """Where the figures were measured."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return (f"{datetime.date.today()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
            f", {torch.get_num_threads()} threads" + (f", {gpu}" if gpu else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description="Cost of train.py's training step per configuration "
                                            "(one table).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "paper"], default="paper")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma-separated, or 'all' (see the docstring)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps first (compilation, allocator, caches)")
    p.add_argument("--steps", type=int, default=3, help="timed steps; the table gives their median")
    p.add_argument("--memory-fraction", type=float, default=None,
                   help="cap on this process's share of the GPU")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--out", default=None, help="also write <out>/<name>.md and .json")
    p.add_argument("--name", default="step", help="file stem in --out")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure(json.loads(args.child))), flush=True)
        return 0
    configs = all_configs() if args.configs == "all" else args.configs.split(",")
    for c in configs:
        parse_config(c)  # a typo fails before anything runs
    command = "python benchmarks/bench_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{command}\n{machine()}\npreset {args.preset}, batch {args.batch_size}", flush=True)
    rows = []
    for config in configs:
        spec = {"preset": args.preset, "batch": args.batch_size, "config": config,
                "device": args.device,
                "warmup": args.warmup, "steps": args.steps, "memory_fraction": args.memory_fraction}
        rows.append(run_child(spec, args.timeout))
        r = rows[-1]
        print(f"{config:36s} " + (r.get("error") or f"{r['step_s']:.3f} s/step  "
                                                    f"{r['batch'] / r['step_s']:.1f} "
                                  f"images/s  peak {r['peak_gib']:.2f} GiB  load {r['load']:.2f}"),
              flush=True)
    table = format_table(rows)
    print("\n" + table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, args.name + ".md"), "w") as f:
            f.write(f"`{command}`\n\n{machine()}; preset {args.preset}, batch {args.batch_size}, "
                    f"median of {args.steps} steps after {args.warmup} warm-up\n\n{table}\n")
        with open(os.path.join(args.out, args.name + ".json"), "w") as f:
            json.dump({"command": command, "machine": machine(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
