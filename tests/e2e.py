"""What the end-to-end tests share: the smallest run, running a script as a user would, and a batch
as the loader collates it."""
import json
import os
import subprocess
import sys

import torch

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


def random_pretrain_batch(cfg, n, seed=0):
    """What data.collate makes of n PretrainView items: uint8 origin, view1, view2 and a sigma per
    view."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g)
              for s in (cfg.origin_size, cfg.view_size, cfg.view_size)]
    return (*images, torch.empty(n, 2).uniform_(0.1, 2.0, generator=g))
