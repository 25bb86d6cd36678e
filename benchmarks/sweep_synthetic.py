"""
Choose the quick start's recipe on the synthetic faces' *val* split (never on test).

Each configuration is a list of train.py options. It is pretrained with train.py as a user would run
it (wall time measured), then its trunk and a random trunk of the same seed are probed the same way:
a linear probe on cached pooled features of the training faces (30 epochs, batch 256), scored on
1,000 val faces.

    python benchmarks/sweep_synthetic.py --out benchmarks/results/sweep_synthetic.jsonl \\
        --config "paper-lr:" --config "lr0.2:--lr 0.2 --warmup-epochs 1" --seeds 0

A configuration is "name:options". Finished (name, seed) pairs already in --out are skipped, so an
interrupted sweep continues where it stopped; --table prints the table of everything in --out.

--verdict keeps train.py's own verdict instead (what the quick start prints: the linear probe
with its lr chosen on a train hold-out, and k-NN, against both random trunks of the same seed):

    python benchmarks/sweep_synthetic.py --verdict \
        --out benchmarks/results/quick_start_variants.jsonl \
        --config "simclr:--gfl simclr" --seeds 0 1 2
"""
import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import eval as evaluate  # noqa: E402
import train  # noqa: E402
from simfle import Backbone, SimFLEConfig  # noqa: E402
from data_support.synthetic_faces import LOOKS
from eval_support.common import load_checkpoint, pick_device
from eval_support.report import VERDICT_KEYS, verdict_margins


def probe_val(trunk, args_train, size, seed, device):
    """Linear probe (cached features) of a trunk: train faces -> val faces; -> accuracy."""
    look = args_train.get("look", "aligned")
    train_base = data.get_dataset("synthetic", split="train", seed=seed, synthetic_look=look,
                                  render=True,
                                  synthetic_count=args_train.get("num_synthetic"))
    val_base = data.get_dataset("synthetic", split="val", seed=seed, synthetic_look=look,
                                render=True)
    report, _ = evaluate.linear_probe(trunk, train_base, val_base, size, device, seed=seed)
    return report["last_epoch_accuracy"]


class Pixels(torch.nn.Module):
    """The image itself as the feature: what a linear classifier gets from the pixels alone."""

    def __init__(self, size):
        super().__init__()
        self.dim = 3 * size * size

    def forward(self, x):
        return x.flatten(1)


def baselines(seed, device, look="aligned"):
    """What no pretraining gives on val: a random trunk as initialised (its BatchNorm layers hold
    mean 0 and variance 1, so in eval mode they do nothing), the same trunk with BatchNorm
    statistics of the training faces (what any trained trunk has), and a linear classifier on the
    pixels."""
    cfg = SimFLEConfig.preset("tiny")
    options = {"look": look}
    torch.manual_seed(seed)
    trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
    faces = data.get_dataset("synthetic", split="train", seed=seed, synthetic_look=look,
                             render=True)
    with_bn = evaluate.recompute_batchnorm(copy.deepcopy(trunk), faces, cfg.view_size, device)
    rows = {"random trunk, as initialised": probe_val(trunk, options, cfg.view_size, seed, device),
            "random trunk, BatchNorm statistics of the training faces": probe_val(with_bn, options,
                                                                                  cfg.view_size,
                                                                                  seed, device)}
    for size in (16, 32):
        rows[f"pixels, {size}x{size}"] = probe_val(Pixels(size), options, size, seed, device)
    return rows


def run_verdict(name, options, seed, out_dir):
    """train.py as a user runs it, with its verdict (the trunk and both random trunks, by the
    linear probe and k-NN)."""
    run_dir = os.path.join(out_dir, f"{name}-s{seed}")
    t0 = time.time()
    code = train.main(shlex.split(options) + ["--seed", str(seed), "--out", run_dir, "--overwrite"])
    if code != 0:
        return {"name": name, "options": options, "seed": seed, "error": f"train.py exit {code}",
                "verdict": True}
    with open(os.path.join(run_dir, "probe_vs_random_synthetic.json")) as f:
        verdict = json.load(f)
    row = {"name": name, "options": options, "seed": seed, "wall_seconds": time.time() - t0,
           "verdict": True}
    margins = verdict_margins(verdict)
    for probe, key in VERDICT_KEYS:
        row[probe] = {trunk: verdict[trunk][probe][key]
                      for trunk in ("pretrained", "random", "random, BN")}
        row[f"{probe}_gain"] = margins[probe]
    return row


def run_one(name, options, seed, out_dir, device, probe_size=None, seconds=None):
    """Pretrain with train.py (unless `seconds` is given: then the finished run in its folder is
    probed again)."""
    run_dir = os.path.join(out_dir, f"{name}-s{seed}")
    argv = shlex.split(options) + ["--seed", str(seed), "--out", run_dir, "--probe", "false",
                                   "--knn-samples", "0", "--overwrite"]
    if seconds is None:
        t0 = time.time()
        code = train.main(argv)
        seconds = time.time() - t0
        if code != 0:
            return {"name": name, "options": options, "seed": seed,
                    "error": f"train.py exit {code}"}
    ckpt = os.path.join(run_dir, "last.pt")
    state = load_checkpoint(ckpt)
    trunk, cfg, _ = evaluate.load_trunk(ckpt, state=state)
    size = probe_size or cfg.view_size
    if probe_size:
        name, options = f"{name}, probed at {size} px", f"{options} (probe at {size} px)".strip()
    acc = probe_val(trunk, state["train"], size, seed, device)
    torch.manual_seed(seed)
    random_acc = probe_val(Backbone(cfg.backbone, cfg.stem, cfg.width), state["train"], size, seed,
                           device)
    return {"name": name, "options": options, "seed": seed, "train_seconds": seconds,
            "steps": state["step"],
            "val_accuracy": acc, "random_val_accuracy": random_acc, "gain": acc - random_acc}


def mean_std(values):
    """Accuracies (fractions) -> "mean ± std" in percent (the mean alone for one value)."""
    values = [100 * v for v in values]
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}"


def by_config(rows):
    """name -> its rows, in the order first seen."""
    out = {}
    for r in rows:
        out.setdefault(r["name"], []).append(r)
    return out


def verdict_table(rows):
    """The verdict rows: each probe's accuracy of the trunk, of the better random trunk (per
    seed), and the gain."""
    lines = ["| configuration | options | seeds | wall (s) | linear: trunk | better random | "
             "gain | k-NN: trunk | better random | gain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rs in by_config(rows).items():
        cells = []
        for probe in ("linear", "knn"):
            better = [max(r[probe]["random"], r[probe]["random, BN"]) for r in rs]
            cells += [mean_std([r[probe]["pretrained"] for r in rs]), mean_std(better),
                      mean_std([r[f"{probe}_gain"] for r in rs])]
        lines.append(f"| {name} | `{rs[0]['options'] or '(defaults)'}` | "
                     f"{','.join(str(r['seed']) for r in rs)} | "
                     f"{statistics.mean(r['wall_seconds'] for r in rs):.0f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows):
    if rows and all(r.get("verdict") for r in rows):
        return verdict_table([r for r in rows if "error" not in r])
    lines = ["| configuration | options | seeds | steps | train.py wall (s) | val probe (%) | "
             "random trunk (%) | gain (points) |",
             "|---|---|---|---|---|---|---|---|"]
    kept = [r for r in rows if "error" not in r and not r.get("verdict")]
    for name, rs in by_config(kept).items():
        lines.append(f"| {name} | `{rs[0]['options'] or '(defaults)'}` | "
                     f"{','.join(str(r['seed']) for r in rs)} | "
                     f"{rs[0]['steps']} | {statistics.mean(r['train_seconds'] for r in rs):.0f} | "
                     f"{mean_std([r['val_accuracy'] for r in rs])} | "
                     f"{mean_std([r['random_val_accuracy'] for r in rs])} | "
                     f"{mean_std([r['gain'] for r in rs])} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], help='"name:train.py options"')
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="benchmarks/results/sweep_synthetic.jsonl")
    p.add_argument("--runs", default="runs/sweep", help="folder for the runs' checkpoints")
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", action="store_true", help="only print the table of --out")
    p.add_argument("--baselines", action="store_true",
                   help="only print the untrained baselines on val")
    p.add_argument("--look", default="aligned", choices=list(LOOKS),
                   help="the faces of --baselines")
    p.add_argument("--verdict", action="store_true",
                   help="keep train.py's own verdict (the quick start's) instead of this "
                        "script's probe")
    p.add_argument("--probe-size", type=int, default=None,
                   help="probe the finished runs of --config again at this image size (no "
                        "training)")
    args = p.parse_args()
    if args.baselines:
        for seed in args.seeds:
            for name, acc in baselines(seed, pick_device(args.device), args.look).items():
                print(f"| {name} | {seed} | {100 * acc:.1f} |")
        return
    rows = [json.loads(line) for line in open(args.out)] if os.path.isfile(args.out) else []
    if not args.table:
        device = pick_device(args.device)
        done = {(r["name"], r["seed"]): r for r in rows if "error" not in r}
        for spec in args.config:
            name, _, options = spec.partition(":")
            for seed in args.seeds:
                if args.probe_size:
                    probed = (f"{name}, probed at {args.probe_size} px", seed)
                    trained = done.get((name, seed))
                    if probed in done or trained is None or trained.get("verdict"):
                        continue  # probed, not trained, or a verdict row (train.py probed it)
                    row = run_one(name, options, seed, args.runs, device, args.probe_size,
                                  trained["train_seconds"])
                elif (name, seed) in done:
                    continue
                elif args.verdict:
                    row = run_verdict(name, options, seed, args.runs)
                else:
                    row = run_one(name, options, seed, args.runs, device)
                print(json.dumps(row), flush=True)
                rows.append(row)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
