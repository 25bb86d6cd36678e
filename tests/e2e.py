"""What the end-to-end tests share: the smallest run, and running a script as a user would."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the smallest run that still exercises every piece: 16 synthetic faces, batch 8, 2 steps an epoch
QUICK = ["--preset", "tiny", "--num-synthetic", "16", "--batch-size", "8", "--knn-samples", "16",
         "--probe", "false", "--device", "cpu", "--workers", "0"]


def run_script(*args, timeout=300, capture=True, **kw):
    """Run a project script in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=capture, text=True,
                          timeout=timeout, env=env, **kw)


def metrics(out):
    """The records of a run's metrics.jsonl."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
