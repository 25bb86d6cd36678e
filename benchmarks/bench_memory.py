"""
Does a long run hold steady? Runs train.py in a child process and samples its resident memory (RSS).

    python benchmarks/bench_memory.py                 # 300 steps of the tiny preset on CPU, 2-3 min
    python benchmarks/bench_memory.py --steps 600 --batch-size 8

Prints RSS once warmed up (second quarter of the run) and its peak over the second half; a leak
shows as growth.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_trace(steps=300, batch_size=4, interval=0.5):
    """Train `steps` steps of the tiny preset in a child process: -> list of (seconds, RSS MB),
    exit code."""
    with tempfile.TemporaryDirectory() as out:
        args = [sys.executable, os.path.join(ROOT, "train.py"), "--preset", "tiny", "--device",
                "cpu",
                "--num-synthetic", str(steps * batch_size), "--batch-size", str(batch_size),
                "--epochs", "1",
                "--knn-samples", "0", "--probe", "false", "--workers", "0", "--out", out]
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        trace, t0 = [], time.time()
        while proc.poll() is None:
            try:
                trace.append((time.time() - t0, rss_mb(proc.pid)))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(interval)
        return trace, proc.wait()


def summary(trace):
    """RSS once warmed up (the median over the second quarter of the run) and the peak over its
    second half, in MB.

    The first quarter is start-up: imports, data, the model and the first steps; a short run (120
    steps take ~12 s) can still be building the model at 20 % of its time, so a single sample there
    is not a baseline.
    """
    n = len(trace)
    quarter = sorted(r for _, r in trace[n // 4: max(n // 2, n // 4 + 1)])
    warm = quarter[len(quarter) // 2]
    late = max(r for _, r in trace[n // 2:])
    return warm, late


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    trace, code = rss_trace(args.steps, args.batch_size)
    warm, late = summary(trace)
    print(f"{args.steps} steps at batch {args.batch_size} (exit {code}, {trace[-1][0]:.0f} s): RSS "
          "once warmed up "
          f"{warm:.0f} MB, peak over the second half {late:.0f} MB, growth {late - warm:+.0f} MB "
          f"({100 * (late / warm - 1):+.1f} %)")
