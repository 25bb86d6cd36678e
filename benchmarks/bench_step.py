"""
What one SimFLE training step costs, and which fast paths pay: images/s and peak memory per configuration.

    python benchmarks/bench_step.py                          # how the cost grows: tiny and paper presets over a
                                                             # few batch sizes, fp32 eager vs the CPU winners (~5 min)
    python benchmarks/bench_step.py --preset paper --batch-sizes 8 --configs fastpaths
                                                             # every fast path vs fp32 eager at the paper preset
    python benchmarks/bench_step.py --input                  # the step's input: DataLoader + batch augmentation
    bash benchmarks/gpu.sh                                   # the GPU suite (paper preset, batch 256)

A step is what train.py does for one batch: forward (the model returns its loss), the loss parts read back
for the log and the non-finite check, zero_grad, backward, SGD step, EMA update of the target network.
Its inputs are random tensors already on the device, so the step is measured without data loading
(--input measures that side). A configuration is "fp32" (plain fp32 eager, the reference code's way:
gradients cleared after the forward, one .item() per loss part, SGD's default kernels) plus '+'-joined
fast paths:

    bf16, fp16     torch.autocast in that dtype (fp16 with a GradScaler, as train.py does on older GPUs)
    channels_last  model weights and images in channels-last memory format
    foreach        SGD's multi-tensor kernels (torch's default on CUDA already; CPU's default is a per-tensor loop)
    fused          SGD's fused kernel
    compile        torch.compile(model)
    nosync         the loss parts stay on the device and are read back once every 10 steps, not with one
                   .item() per part per step (each .item() waits for the device)
    zerofirst      optimizer.zero_grad(set_to_none=True) before the forward instead of after it, so the last
                   step's gradients are freed before this step's activations are allocated (memory only)
    passive        OMP_WAIT_POLICY=PASSIVE in the environment: idle OpenMP threads sleep instead of spinning, which
                   matters when other processes share the cores (CPU only; must be set before torch is imported)
    mmap           MALLOC_MMAP_THRESHOLD_=65536 in the environment: glibc serves every block over 64 KiB with mmap and
                   returns it to the system when freed, instead of keeping freed tensors in its heap (peak RSS, Linux)
    jemalloc, tcmalloc  that allocator instead of glibc's malloc (LD_PRELOAD; the library must be installed, e.g.
                   Debian's libjemalloc2 / libtcmalloc-minimal4)
    cudnn_benchmark  torch.backends.cudnn.benchmark = True: cuDNN times its convolution algorithms once per shape

Every configuration runs in a fresh Python process (this file, --child): `--warmup` steps, then `--steps` timed
steps. The table gives the median step time, images/s = batch / median, the process's peak memory
(resident set, ru_maxrss, on CPU; torch.cuda.max_memory_allocated on GPU), and both as ratios to fp32 eager
measured in the same run at the same preset and batch size: "x faster" > 1 is faster, "x memory" < 1 leaner.
With --flops, the FLOPs of one step are counted (torch.utils.flop_counter) and images/s is turned into a
fraction of the GPU's peak.
"""
import argparse
import ctypes.util
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import torch  # noqa: E402

from simfle import SimFLE, SimFLEConfig  # noqa: E402

FAST_PATHS = ["bf16", "fp16", "channels_last", "foreach", "fused", "compile", "nosync", "zerofirst", "passive",
              "mmap", "jemalloc", "tcmalloc", "cudnn_benchmark"]
PRELOAD = {"jemalloc": "jemalloc", "tcmalloc": "tcmalloc_minimal"}  # fast path -> library for LD_PRELOAD
CONFIG_SETS = {
    # what wins on a CPU, in fp32 and with bf16 autocast (benchmarks/README.md has the numbers); tcmalloc must be
    # installed (Debian: libtcmalloc-minimal4), else those rows say so
    "best": ["fp32", "channels_last+tcmalloc+zerofirst", "bf16+channels_last+tcmalloc+zerofirst"],
    # each fast path alone against fp32 eager, then the winners together
    "fastpaths": ["fp32", "bf16", "channels_last", "foreach", "fused", "nosync", "zerofirst", "passive", "mmap",
                  "tcmalloc", "jemalloc", "compile"],
}
DEFAULT_BATCHES = {"tiny": [8, 32, 64], "paper": [2, 8]}
LOG_EVERY = 10  # nosync: read the loss parts back once per this many steps, as a logger would

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets; matched against torch.cuda.get_device_name().
# The first key found in the name wins, so the variants come before the plain "H100".
GPU_PEAK_TFLOPS = {
    "H200": dict(bf16=989, fp16=989, tf32=495, fp32=67),
    "H100 PCIe": dict(bf16=756, fp16=756, tf32=378, fp32=51),
    "H100 NVL": dict(bf16=835, fp16=835, tf32=418, fp32=60),
    "H100": dict(bf16=989, fp16=989, tf32=495, fp32=67),  # SXM
    "A100": dict(bf16=312, fp16=312, tf32=156, fp32=19.5),
    "L4": dict(bf16=121, fp16=121, tf32=60, fp32=30.3),
    "T4": dict(bf16=None, fp16=65, tf32=None, fp32=8.1),  # Turing: no bf16, no tf32
}


def gpu_peak(device_name):
    """Peak dense TFLOP/s by precision for a known GPU, or None ("unknown")."""
    for key, peaks in GPU_PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return key, peaks
    return None, None


def machine_info(device):
    """Where a figure was measured: CPU model, cores, GPU, torch version, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"date": datetime.date.today().isoformat(), "cpu": cpu, "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ----------------------------------------------------------------------------- one configuration (child process)


def peak_memory_gb(device):
    """Peak memory of this process so far: device allocations on CUDA, resident set (ru_maxrss, KiB) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def cpu_jiffies():
    """(busy, total) CPU time of the whole machine so far, in clock ticks (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def own_cpu_seconds():
    """CPU time (user + system, all threads) this process has used so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def others_load(before, after, own_seconds, wall):
    """Cores' worth of CPU that other processes used between two cpu_jiffies() readings."""
    if before is None or after is None or wall <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) / os.sysconf("SC_CLK_TCK") - own_seconds) / wall)


def run_config(preset, batch, config, device, warmup, steps, flops=False, max_load=0.25):
    """Build the model and optimizer as train.py does, apply the fast paths, time `steps` steps after `warmup`."""
    paths = set(config.split("+")) - {"fp32"}
    unknown = paths - set(FAST_PATHS)
    if unknown:
        raise SystemExit(f"unknown fast path(s) {sorted(unknown)}; choose from fp32, {', '.join(FAST_PATHS)}")
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = "cudnn_benchmark" in paths
    cfg = SimFLEConfig.preset(preset)
    fmt = torch.channels_last if "channels_last" in paths else torch.contiguous_format
    model = SimFLE(cfg).to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05 * batch / 256, momentum=0.9, weight_decay=1e-4,
                                foreach=True if "foreach" in paths else None, fused=True if "fused" in paths else None)
    amp_dtype = torch.bfloat16 if "bf16" in paths else torch.float16 if "fp16" in paths else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step_model = torch.compile(model) if "compile" in paths else model  # EMA and checkpoints use `model`
    # normalised images are roughly N(0, 1); the data pipeline is not part of the step
    origin = torch.randn(batch, 3, cfg.origin_size, cfg.origin_size, device=device).contiguous(memory_format=fmt)
    view1, view2 = (torch.randn(batch, 3, cfg.view_size, cfg.view_size, device=device).contiguous(memory_format=fmt)
                    for _ in range(2))
    pending = []  # nosync: the loss parts of the steps not read back yet

    def step(i):
        if "zerofirst" in paths:
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, parts = step_model(origin, view1, view2)
        if "nosync" in paths:  # one read-back (one wait for the device) per LOG_EVERY steps
            pending.append(torch.stack(list(parts.values())))
            if (i + 1) % LOG_EVERY == 0:
                values = torch.stack(pending).tolist()
                pending.clear()
                assert all(math.isfinite(v) for row in values for v in row), "non-finite loss"
        else:  # train.py today: every part read back, and checked, at every step
            values = {k: v.item() for k, v in parts.items()}
            assert all(math.isfinite(v) for v in values.values()), "non-finite loss"
        if "zerofirst" not in paths:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        model.update_target()

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
        if i == 0:
            first_step_s = time.perf_counter() - t0  # includes torch.compile's compilation
    times, loads, kept_loads = [], [], []
    if device.type == "cuda":  # events time the GPU's timeline, so the host waits that .item() causes count too
        torch.cuda.synchronize()
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        marks[0].record()
        for i in range(steps):
            step(warmup + i)
            marks[i + 1].record()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
        kept = times
    else:
        # A shared CPU: a step during which other processes took CPU time says more about them than about this
        # configuration, so keep stepping (up to 4x `steps`) until `steps` steps ran with the machine to itself.
        kept, kept_loads = [], []
        while len(kept) < steps and len(times) < 4 * steps:
            busy0, own0, t = cpu_jiffies(), own_cpu_seconds(), time.perf_counter()
            step(warmup + len(times))
            dt = time.perf_counter() - t
            others = others_load(busy0, cpu_jiffies(), own_cpu_seconds() - own0, dt)
            times.append(dt)
            loads.append(others)
            if others is None or others <= max_load:
                kept.append(dt)
                kept_loads.append(others or 0.0)
    result = {"preset": preset, "batch": batch, "config": config, "device": str(device),
              "step_s": statistics.median(kept or times), "quiet_steps": len(kept), "step_times": times,
              "others_load_per_step": loads, "first_step_s": first_step_s if warmup else None,
              "others_load": statistics.mean(kept_loads) if device.type == "cpu" and kept else None,
              "peak_gb": peak_memory_gb(device), "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if flops:  # counted on one more eager step: the same arithmetic whatever the fast paths
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter, torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = model(origin, view1, view2)
            loss.backward()
        optimizer.zero_grad(set_to_none=True)
        result["flops_per_image"] = counter.get_total_flops() / batch
    return result


def child_main(spec):
    """Entry point of the fresh process: one configuration, one JSON line on stdout."""
    device = torch.device(spec["device"])
    result = run_config(spec["preset"], spec["batch"], spec["config"], device, spec["warmup"], spec["steps"],
                        spec.get("flops", False), spec.get("max_load", 0.25))
    print("RESULT " + json.dumps(result), flush=True)


def wait_for_quiet(max_wait, threshold=0.15):
    """On a shared machine, wait (at most max_wait s) until other processes use under `threshold` of the CPUs.

    Returns the busy fraction of the last one-second look. A step that shares two cores with another job can be
    several times slower (the OpenMP threads wait for each other at every operator), so ratios are only
    comparable when every configuration ran on a quiet machine; the table shows the load each one saw.
    """
    deadline = time.time() + max_wait
    while True:
        a = cpu_jiffies()
        time.sleep(1.0)
        b = cpu_jiffies()
        if a is None or b is None:
            return None
        busy = (b[0] - a[0]) / max(b[1] - a[1], 1)
        if busy < threshold or time.time() >= deadline:
            return busy


def run_child(spec, timeout):
    """Run one configuration in a fresh process, so neither its time nor its peak memory sees another one's.

    Its result includes the CPU that other processes took meanwhile ("others' load", in cores).
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)  # the baseline is the default: spinning OpenMP threads, glibc's own thresholds
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    paths = spec["config"].split("+")
    if "passive" in paths:  # read by OpenMP when torch loads, so set for the new process
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if "mmap" in paths:  # read by glibc when the process starts
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    for path, name in PRELOAD.items():
        if path in paths:
            lib = ctypes.util.find_library(name)
            if lib is None:
                return {**spec, "error": f"lib{name} not found (install it to measure {path})"}
            env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), lib]))
    before, own_before, t0 = cpu_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    own = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (own.ru_utime + own.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            # on CPU the child measured the load beside the steps it kept; elsewhere take the whole run's
            result.setdefault("others_load", others_load(before, cpu_jiffies(), own, time.time() - t0))
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": tail[:200]}


# ----------------------------------------------------------------------------- the table (parent process)


def peak_fraction(row, device_name):
    """Fraction of the GPU's dense peak that images/s x FLOPs/image reaches, and which peak was used."""
    _, peaks = gpu_peak(device_name or "")
    if peaks is None or not row.get("flops_per_image"):
        return None, "unknown"
    paths = row["config"].split("+")
    # fp32 rows: cuDNN runs convolutions (most of SimFLE's FLOPs) in TF32 by default, so TF32 is the fair peak
    kind = "bf16" if "bf16" in paths else "fp16" if "fp16" in paths else (
        "tf32" if torch.backends.cudnn.allow_tf32 and peaks.get("tf32") else "fp32")
    if not peaks.get(kind):
        return None, kind
    return row["batch"] / row["step_s"] * row["flops_per_image"] / (peaks[kind] * 1e12), kind


def format_table(rows, device_name=None):
    """One markdown table: a group per (preset, batch), fp32 eager first, ratios against it."""
    has_flops = any(r.get("flops_per_image") for r in rows)
    mem = "peak GPU alloc GiB" if any(r.get("device", "").startswith("cuda") for r in rows) else "peak RSS GiB"
    head = ["preset", "batch", "configuration", "step s (median)", "images/s", "x faster", mem, "x memory",
            "1st step s", "steps kept", "others' load (cores)"]
    if has_flops:
        head += ["GFLOP/image", "% of peak"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = {(r["preset"], r["batch"]): r for r in rows if r["config"] == "fp32" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['batch']} | {r['config']} | {r['error']} |" + " |" * (len(head) - 4))
            continue
        b = base.get((r["preset"], r["batch"]))
        speed = f"{b['step_s'] / r['step_s']:.2f}" if b else "-"
        memory = f"{r['peak_gb'] / b['peak_gb']:.2f}" if b else "-"
        cells = [r["preset"], str(r["batch"]), r["config"], f"{r['step_s']:.3f}", f"{r['batch'] / r['step_s']:.1f}",
                 speed, f"{r['peak_gb']:.2f}", memory,
                 f"{r['first_step_s']:.1f}" if r.get("first_step_s") is not None else "-",
                 f"{r.get('quiet_steps', len(r['step_times']))}/{len(r['step_times'])}",
                 f"{r['others_load']:.2f}" if r.get("others_load") is not None else "-"]
        if has_flops:
            flops = r.get("flops_per_image") or (b or {}).get("flops_per_image")
            r["flops_per_image"] = flops
            fraction, kind = peak_fraction(r, device_name)
            r["peak_fraction"], r["peak_kind"] = fraction, kind
            cells += [f"{flops / 1e9:.1f}" if flops else "-",
                      f"{100 * fraction:.1f} ({kind})" if fraction is not None else f"unknown ({kind})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_steps(args):
    """The step table: every (preset, batch, configuration) in a fresh process, within the time budget."""
    configs = []
    for c in args.configs.split(","):
        configs += CONFIG_SETS.get(c, [c])
    configs = list(dict.fromkeys(configs))  # keep order, drop repeats
    if "fp32" not in configs:
        configs.insert(0, "fp32")  # every ratio needs its baseline from the same run
    configs = ["fp32"] + [c for c in configs if c != "fp32"]
    if args.device == "cpu" or not args.device.startswith("cuda"):
        # torch.compile on a 2-core CPU spends minutes in the C++ compiler; opt in with --compile-on-cpu
        if not args.compile_on_cpu and any("compile" in c.split("+") for c in configs):
            print("note: skipping compile configurations on CPU (add --compile-on-cpu to measure them)")
            configs = [c for c in configs if "compile" not in c.split("+")]
    presets = [args.preset] if args.preset else ["tiny", "paper"]
    start = time.time()
    rows = []
    for preset in presets:
        for batch in (args.batch_sizes or DEFAULT_BATCHES[preset]):
            for config in configs:
                left = args.time_budget - (time.time() - start)
                need = args.compile_budget if "compile" in config.split("+") else 0
                if left < max(need, 5):  # compiled configurations need more time than a plain one
                    rows.append({"preset": preset, "batch": batch, "config": config,
                                 "error": f"skipped: {left:.0f} s of the time budget left"})
                    print(f"{preset:5s} batch {batch:4d} {config:30s} skipped (time budget)", flush=True)
                    continue
                spec = {"preset": preset, "batch": batch, "config": config, "device": args.device,
                        "warmup": args.warmup, "steps": args.steps, "flops": args.flops and config == "fp32",
                        "max_load": args.max_load}
                for attempt in range(1 + args.retries):
                    if args.device == "cpu" and args.wait_quiet > 0:
                        wait_for_quiet(min(args.wait_quiet, (args.time_budget - (time.time() - start)) / 4))
                    row = run_child(spec, timeout=max(args.time_budget - (time.time() - start), 5))
                    # other jobs took the CPU during too many of its steps: measure it again
                    if "error" in row or row.get("quiet_steps", args.steps) >= args.steps:
                        break
                    print(f"{preset:5s} batch {batch:4d} {config:30s} again: only {row['quiet_steps']} of "
                          f"{len(row['step_times'])} steps ran on a quiet machine", flush=True)
                rows.append(row)
                if args.out:  # as we go, so an interrupted run keeps what it measured
                    write_outputs(args.out, args.name or "step",
                                  {"command": args.command, "machine": args.machine, "rows": rows})
                status = row.get("error") or (f"{row['step_s']:.3f} s/step  {batch / row['step_s']:.1f} images/s  "
                                              f"peak {row['peak_gb']:.2f} GiB")
                print(f"{preset:5s} batch {batch:4d} {config:30s} {status}", flush=True)
    return rows


# ----------------------------------------------------------------------------- the input side (--input)


def per_image_augment(origin, view1, view2, sigma, device):
    """Blur + normalise each view on its own on the CPU, as a per-sample (PIL/torchvision) pipeline does."""
    import torchvision.transforms.v2.functional as F

    import data
    out = []
    for i in range(view1.shape[0]):
        for v, s in ((view1[i], sigma[i, 0]), (view2[i], sigma[i, 1])):
            k = round(23 * v.shape[-1] / 224) // 2 * 2 + 1  # 23 taps at 224 px, as data.gaussian_blur
            x = F.gaussian_blur(data.normalize(v[None])[0], [k, k], [float(s)] * 2)
            out.append(x)
    origin = data.normalize(origin)
    views = torch.stack(out).to(device)
    return origin.to(device), views[0::2], views[1::2]


def run_input(args):
    """DataLoader throughput with all cores as workers, and the batch augmentation, per-image vs batched."""
    import data
    from torch.utils.data import DataLoader

    device = torch.device(args.device)
    cfg = SimFLEConfig.preset(args.preset or "tiny")
    batch = (args.batch_sizes or [64])[0]
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    n_batches = args.loader_batches or 3 * max(workers, 1)
    base = data.get_dataset("synthetic", split="train", synthetic_count=batch * n_batches)
    view = data.PretrainView(base, cfg.view_size, cfg.origin_size, seed=0)
    rows = []

    def loader_row(name, epochs=2, **kw):
        """images/s over the last epoch, and how long that epoch waited for its first batch."""
        loader = DataLoader(view, batch_size=batch, shuffle=True, collate_fn=data.collate, drop_last=True,
                            num_workers=workers, **kw)
        for epoch in range(epochs):
            view.set_epoch(epoch)
            t0 = time.perf_counter()
            first, n = None, 0
            for b, _ in loader:
                b = [t.to(device, non_blocking=True) for t in b]
                if first is None:
                    first = time.perf_counter() - t0
                n += b[0].shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            total = time.perf_counter() - t0
        steady = (n - batch) / max(total - first, 1e-9)  # after the first batch: the workers' pace
        rows.append({"what": name, "images_s": n / total, "steady_images_s": steady, "first_batch_s": first,
                     "seconds": total})
        print(f"{name:60s} {n / total:8.1f} images/s ({steady:.1f} after the first batch), "
              f"first batch after {first:.2f} s", flush=True)

    # a fresh DataLoader (as train.py builds one per epoch) pays for starting its workers every epoch
    loader_row(f"loader, {workers} workers, new workers each epoch, pageable")
    loader_row(f"loader, {workers} workers, persistent_workers", persistent_workers=workers > 0)
    if device.type == "cuda":
        loader_row(f"loader, {workers} workers, persistent_workers + pin_memory", persistent_workers=workers > 0,
                   pin_memory=True)

    # the per-pixel half of the augmentation: 23-tap blur + normalisation of both views
    items = [view[i] for i in range(batch)]
    cpu_batch = data.collate(items)[0]

    def time_it(fn, repeats=5):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    per_image = time_it(lambda: per_image_augment(*cpu_batch, device))
    batched = time_it(lambda: data.pretrain_batch(cpu_batch, device))
    for name, s in (("blur + normalise, per image on the CPU (reference-style)", per_image),
                    (f"blur + normalise, batched on {device.type} (data.pretrain_batch)", batched)):
        rows.append({"what": name, "images_s": batch / s, "seconds": s, "x_faster": per_image / s})
        print(f"{name:60s} {batch / s:8.1f} images/s", flush=True)
    return rows, {"batch": batch, "workers": workers, "preset": cfg.backbone and (args.preset or "tiny"),
                  "loader_batches": n_batches}


def format_input_table(rows):
    """Loader rows against the first loader row, augmentation rows against the per-image one."""
    lines = ["| what | images/s (whole epoch) | images/s after the first batch | first batch of the epoch, s "
             "| x faster |", "|---|---|---|---|---|"]
    base = rows[0]["images_s"]
    blur_base = next((r["images_s"] for r in rows if r["what"].startswith("blur")), None)
    for r in rows:
        ref = blur_base if r["what"].startswith("blur") else base
        first = f"{r['first_batch_s']:.2f}" if r.get("first_batch_s") is not None else "-"
        steady = f"{r['steady_images_s']:.1f}" if r.get("steady_images_s") is not None else "-"
        lines.append(f"| {r['what']} | {r['images_s']:.1f} | {steady} | {first} | {r['images_s'] / ref:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def main(argv=None):
    p = argparse.ArgumentParser(description="Cost of a SimFLE training step per configuration (one table).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "paper"], default=None, help="default: both (input side: tiny)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="default: tiny 8 32 64, paper 2 8 (input side: 64)")
    p.add_argument("--configs", default="best",
                   help="comma-separated configurations ('+'-joined fast paths: " + ", ".join(FAST_PATHS)
                        + ") or sets: " + ", ".join(f"{k} = {','.join(v)}" for k, v in CONFIG_SETS.items()))
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, allocator, caches)")
    p.add_argument("--steps", type=int, default=5, help="timed steps; the table shows their median")
    p.add_argument("--flops", action="store_true", help="count FLOPs per image and give the fraction of the GPU peak")
    p.add_argument("--time-budget", type=float, default=1800, help="seconds; later configurations are skipped")
    p.add_argument("--compile-budget", type=float, default=150,
                   help="seconds a compiled configuration needs; skipped when less of the budget is left")
    p.add_argument("--wait-quiet", type=float, default=30,
                   help="CPU: wait up to this many seconds for other processes to go quiet before each configuration")
    p.add_argument("--max-load", type=float, default=0.25,
                   help="CPU: a step during which other processes used more cores than this is not kept; up to "
                        "4 x --steps are run to keep --steps of them")
    p.add_argument("--retries", type=int, default=2,
                   help="CPU: run a configuration again (in a new process) when fewer than --steps steps were kept")
    p.add_argument("--compile-on-cpu", action="store_true", help="measure compile configurations on CPU too")
    p.add_argument("--input", action="store_true", help="measure the input side instead: loader and augmentation")
    p.add_argument("--workers", type=int, default=None, help="--input: DataLoader workers (default: all cores)")
    p.add_argument("--loader-batches", type=int, default=None,
                   help="--input: batches per epoch (default: 3 per worker, so each worker makes several)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for a JSON + markdown copy (default: $OUT)")
    p.add_argument("--name", default=None, help="file stem in --out (default: step or input)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return child_main(json.loads(args.child))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is visible")
    info = machine_info(args.device)
    print(json.dumps(info))
    command = "python benchmarks/bench_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.command, args.machine = command, info
    if args.input:
        rows, setting = run_input(args)
        table, name = format_input_table(rows), args.name or "input"
        info.update(setting)
    else:
        rows = run_steps(args)
        table, name = format_table(rows, info.get("gpu")), args.name or "step"
        if any(r.get("flops_per_image") for r in rows):
            key, peaks = gpu_peak(info.get("gpu") or "")
            info["peak_tflops"] = {"matched": key or "unknown", **(peaks or {})}
    print(f"\n{command}\n{info['date']}, {info['cpu']} ({info['cpu_cores']} cores), "
          f"{info.get('gpu', 'no GPU')}, torch {info['torch']}\n")
    print(table)
    if args.out:
        write_outputs(args.out, name, {"command": command, "machine": info, "rows": rows}, table)
    return 0


def write_outputs(folder, name, record, table=None):
    """name.json (everything measured) and, with a table, name.md (what was printed) in folder."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(record, f, indent=2)
    if table is not None:
        with open(os.path.join(folder, name + ".md"), "w") as f:
            f.write(f"`{record['command']}`\n\n{record['machine']}\n\n{table}\n")


if __name__ == "__main__":
    sys.exit(main())
