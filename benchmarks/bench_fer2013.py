"""More images per CPU minute on FER2013's 48-px faces: what each input and model option buys, in
one run.

    python benchmarks/bench_fer2013.py --folders FaceExp/data --rounds 2 --steps 40   # images/s
    python benchmarks/bench_fer2013.py --folders FaceExp/data --wall 180 --variants today,all
    python benchmarks/bench_fer2013.py --folders FaceExp/data --rounds 2 --steps 30 --wall 420 \
        --variants today,curves,all --options "--gfl simclr" \
        --out benchmarks/results/bench_fer2013_wall.md
    python benchmarks/bench_fer2013.py --probe-only \
        --out benchmarks/results/bench_fer2013_wall.md                   # probe those again
    python benchmarks/bench_fer2013.py --folders FaceExp/data \
        --variants simclr-alone,simclr+semantic,byol-alone,byol+semantic

Each variant is a list of train.py options on top of `--preset tiny`. Phase 1 runs train.py
(train.main, as a user runs it) for --steps steps of each variant, in turn, --rounds times, and
reads images/s from its metrics.jsonl (the whole epoch's images over its wall time: loading,
augmentation and the step). Phase 2 (--wall S) trains each variant for S seconds' worth of its own
measured speed (one cosine schedule over them all), then probes its trunk on val (PublicTest) as
learning_curve.py does: a linear probe on cached pooled features of the training faces (30 epochs,
batch 256, its lr chosen on a train hold-out) and a k-NN, beside the random trunk of the same
architecture.
--probe-only probes again the checkpoints that an earlier --wall run left in --runs, from its rows,
without training. The table goes to --out (markdown) and the rows to --out with .jsonl.

"+x" is the in-memory csv with option x; "all" has every option. "today" is train.py before these
options: the FER2013 image folders (`--data folder`), decoded every epoch.

"""
import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import eval as evaluate  # noqa: E402
import learning_curve  # noqa: E402
import train  # noqa: E402
from simfle import Backbone  # noqa: E402

VARIANTS = {
    "today": "--data folder --root {folders}",
    "in-memory": "--data fer2013",
    "+device-views": "--data fer2013 --augment device",
    "+narrow-0.5": "--data fer2013 --width 0.5",
    "+origin-56-patch-8": "--data fer2013 --origin-size 56 --patch-size 8",
    "curves": "--data fer2013 --augment device --width 0.5",  # what learning_curve.py's arms use
    "all": "--data fer2013 --augment device --width 0.5 --origin-size 56 --patch-size 8",
    # what FaceMAE costs on the curves' settings: SimFLE against its GFL alone
    "simclr-alone": "--data fer2013 --augment device --width 0.5 --gfl simclr --use-facemae false",
    "simclr+semantic": "--data fer2013 --augment device --width 0.5 --gfl simclr "
                       "--masking semantic",
    "byol-alone": "--data fer2013 --augment device --width 0.5 --gfl byol --use-facemae false",
    "byol+semantic": "--data fer2013 --augment device --width 0.5 --gfl byol --masking semantic",
}


def run(name, options, epochs, steps_per_epoch, seed, out):
    """train.py for `epochs` epochs of `steps_per_epoch` steps, one cosine schedule over them: ->
    (images/s, folder)."""
    folder = os.path.join(out, name.lstrip("+"))
    argv = shlex.split(options) + ["--preset", "tiny", "--epochs", str(epochs), "--max-steps",
                                   str(steps_per_epoch), "--seed", str(seed),
                                   "--knn-samples", "0", "--probe", "false", "--out", folder,
                                   "--overwrite"]
    code = train.main(argv)
    if code != 0:
        raise SystemExit(f"train.py {' '.join(argv)} exited {code}")
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return json.loads(f.readlines()[-1])["images_per_s"], folder


def probe(ckpt, device, seed):
    """Val accuracy of a trained trunk and of the random trunk of the same architecture, measured as
    the learning curves measure it (learning_curve.measure: cached features, the probe's lr chosen
    on a train hold-out, k-NN):
    -> {"trained_linear": ..., "random_knn": ..., ...}."""
    trunk, cfg, _ = evaluate.load_trunk(ckpt)
    torch.manual_seed(seed)
    random_trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
    where = argparse.Namespace(data="fer2013", root=None, split="val", probe_cap=0)
    return {f"{name}_{k}": v for name, t in (("trained", trunk), ("random", random_trunk))
            for k, v in learning_curve.measure(t, cfg.view_size, where, seed, device).items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folders",
                   help="FER2013 image folders (train/<class>/, test/<class>/), for 'today'")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated names of VARIANTS")
    p.add_argument("--steps", type=int, default=40, help="steps per variant and round (batch 64)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--wall", type=float, default=0,
                   help="phase 2: seconds of training per variant (0: skip)")
    p.add_argument("--options", default="",
                   help="more train.py options for every variant, e.g. '--gfl simclr'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/bench_fer2013")
    p.add_argument("--out", default="benchmarks/results/bench_fer2013.md")
    p.add_argument("--probe-only", action="store_true",
                   help="probe again the checkpoints of the --wall run whose rows are in --out's "
                        ".jsonl; no training")
    args = p.parse_args(argv)
    given = argv or sys.argv[1:]
    command = "python benchmarks/bench_fer2013.py " + " ".join(shlex.quote(a) for a in given)
    if args.folders:
        # no path of this machine in the results
        command = command.replace(args.folders, "<FER2013 image folders>")
    if args.probe_only:
        rows = reprobe(args, command)
    else:
        names = args.variants.split(",")
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
        if not args.folders and any("{folders}" in VARIANTS[n] for n in names):
            p.error("--folders is needed for the variant 'today' (the FER2013 image folders)")
        rows = measure(args, names, command)
    write(rows, args.out)
    return 0


def measure(args, names, command):
    """Phase 1 (images/s of every variant, in turn) and, with --wall, phase 2 (train for the wall
    time, probe)."""
    def options(n, folders):
        return (VARIANTS[n].format(folders=folders) + " " + args.options).strip()

    speeds = {n: [] for n in names}
    # in turn, so that a slow spell of a shared machine hits every variant
    for r in range(args.rounds):
        for n in names:
            ips, _ = run(n, options(n, args.folders), 1, args.steps, args.seed, args.runs)
            speeds[n].append(ips)
            print(f"round {r + 1}: {n}: {ips:.1f} images/s", flush=True)
    base = statistics.median(speeds[names[0]])
    epoch_steps = len(data.get_dataset("fer2013", None, "train")) // 64 if args.wall else None
    settings = {"command": command, "steps_per_round": args.steps, "rounds": args.rounds,
                "wall": args.wall,
                "seed": args.seed, "date": str(datetime.date.today())}
    rows = []
    for n in names:
        ips = statistics.median(speeds[n])
        row = {"variant": n, "options": options(n, "{folders}"), "images_per_s": ips,
               "runs": speeds[n],
               "x_first": ips / base, **settings}
        if args.wall:
            steps = max(1, round(args.wall * ips / 64))
            # beyond one epoch of the faces: more epochs, one schedule
            epochs = math.ceil(steps / epoch_steps)
            per_epoch = math.ceil(steps / epochs)
            t0 = time.time()
            _, folder = run(n, options(n, args.folders), epochs, per_epoch, args.seed, args.runs)
            row.update(steps=epochs * per_epoch, train_s=time.time() - t0, folder=folder,
                       **probe(os.path.join(folder, "last.pt"), torch.device("cpu"), args.seed))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def reprobe(args, command):
    """The rows of an earlier --wall run, their trunks probed again (e.g. after a change of the
    probe)."""
    path = os.path.splitext(args.out)[0] + ".jsonl"
    if not os.path.exists(path):
        raise SystemExit("error: --probe-only reads the rows of an earlier --wall run from "
                         f"{path}; there is none")
    rows = [json.loads(line) for line in open(path) if line.strip()]
    for row in rows:
        ckpt = os.path.join(row.get("folder") or os.path.join(args.runs,
                                                              row["variant"].lstrip("+")),
                            "last.pt")
        if "steps" not in row or not os.path.exists(ckpt):
            raise SystemExit(f"error: {row['variant']}: no --wall checkpoint at {ckpt} to probe "
                             "again")
        row.update(probe(ckpt, torch.device("cpu"), row.get("seed", args.seed)), probed_by=command)
        print(json.dumps(row), flush=True)
    return rows


def write(rows, out):
    """The markdown table (and the rows as .jsonl) at `out`."""
    first = rows[0]
    wall = "steps" in first
    lines = ["# FER2013, tiny preset: images/s per option "
             f"({first.get('date', datetime.date.today())})", "",
             f"`{first.get('command', 'python benchmarks/bench_fer2013.py')}`"
             + (f"; probed again by `{first['probed_by']}`" if "probed_by" in first else ""), "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}; batch 64, "
             f"{first.get('steps_per_round')} steps x {first.get('rounds')} rounds per variant, "
             "median; images/s = the epoch's images over its wall time (loading, views and step)."
             + (f" Then each variant trains for {first['wall']:.0f} s' worth of its images/s (one "
                f"cosine schedule, seed {first['seed']}) and its trunk is probed on val "
                "(PublicTest) as learning_curve.py probes (lr chosen on a train hold-out) beside a "
                "random trunk of the same width." if wall else ""), ""]
    header = "| variant | train.py options | images/s | x first row |"
    if wall:
        header += (" steps in the wall time | val linear, trained (%) | val linear, random (%) | "
                   "val k-NN, trained (%) "
                   "| val k-NN, random (%) |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        line = (f"| {r['variant']} | `{r['options']}` | {r['images_per_s']:.1f} | "
                f"{r['x_first']:.2f} |")
        if wall:
            line += (f" {r['steps']} | {100 * r['trained_linear']:.1f} | "
                     f"{100 * r['random_linear']:.1f} | "
                     f"{100 * r['trained_knn']:.1f} | {100 * r['random_knn']:.1f} |")
        lines.append(line)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(out)[0] + ".jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
