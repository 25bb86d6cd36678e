"""
More images per CPU minute on FER2013's 48-px faces: what each input and model option buys, in one run.

    python benchmarks/bench_fer2013.py --folders FaceExp/data --rounds 2 --steps 40               # images/s
    python benchmarks/bench_fer2013.py --folders FaceExp/data --wall 180 --variants today,all      # + val probe
    python benchmarks/bench_fer2013.py --folders FaceExp/data --wall 420 --variants today,curves,all --options "--gfl simclr"
    python benchmarks/bench_fer2013.py --folders FaceExp/data --variants simclr-alone,simclr+semantic,byol-alone,byol+semantic

Each variant is a list of train.py options on top of `--preset tiny`. Phase 1 runs train.py (train.main, as a user
runs it) for --steps steps of each variant, in turn, --rounds times, and reads images/s from its metrics.jsonl
(the whole epoch's images over its wall time: loading, augmentation and the step). Phase 2 (--wall S) trains each
variant for S seconds' worth of its own measured speed, then probes its trunk on val (PublicTest): a linear probe on
cached pooled features of the training faces (30 epochs, batch 256) and a k-NN, beside the random trunk of the
same architecture. The table goes to --out (markdown) and the rows to --out with .jsonl.

"+x" is the in-memory csv with option x; "all" has every option. "today" is train.py before these options: the FER2013 image folders (`--data folder`), decoded every epoch.
"""
import argparse
import datetime
import json
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
import train  # noqa: E402
from simfle import Backbone, SimFLEConfig  # noqa: E402

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
    "simclr+semantic": "--data fer2013 --augment device --width 0.5 --gfl simclr --masking semantic",
    "byol-alone": "--data fer2013 --augment device --width 0.5 --gfl byol --use-facemae false",
    "byol+semantic": "--data fer2013 --augment device --width 0.5 --gfl byol --masking semantic",
}


def run(name, options, steps, seed, out):
    """train.py for `steps` steps of one epoch: -> (images/s, run folder)."""
    folder = os.path.join(out, name.lstrip("+"))
    argv = shlex.split(options) + ["--preset", "tiny", "--epochs", "1", "--max-steps", str(steps), "--seed", str(seed),
                                   "--knn-samples", "0", "--probe", "false", "--out", folder]
    if os.path.exists(os.path.join(folder, "metrics.jsonl")):
        os.remove(os.path.join(folder, "metrics.jsonl"))
    code = train.main(argv)
    if code != 0:
        raise SystemExit(f"train.py {' '.join(argv)} exited {code}")
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return json.loads(f.readlines()[-1])["images_per_s"], folder


def probe(ckpt, device, seed):
    """Val accuracy of a trained trunk and of the random trunk of the same architecture: linear (cached) and k-NN."""
    trunk, cfg, _ = evaluate.load_trunk(ckpt)
    torch.manual_seed(seed)
    random_trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
    train_base = data.get_dataset("fer2013", None, "train")
    val_base = data.get_dataset("fer2013", None, "val")
    rows = {}
    for name, t in (("trained", trunk), ("random", random_trunk)):
        linear, _ = evaluate.linear_probe(t, train_base, val_base, cfg.view_size, device, epochs=30, batch_size=256,
                                          features="cached", seed=seed)
        knn = evaluate.knn_eval(t, train_base, val_base, cfg.view_size, device)
        rows[name] = {"linear": linear["last_epoch_accuracy"], "knn": knn["accuracy"]}
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folders", required=True, help="FER2013 image folders (train/<class>/, test/<class>/), for 'today'")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    p.add_argument("--steps", type=int, default=40, help="steps per variant and round (batch 64)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--wall", type=float, default=0, help="phase 2: seconds of training per variant (0: skip)")
    p.add_argument("--options", default="", help="more train.py options for every variant, e.g. '--gfl simclr'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/bench_fer2013")
    p.add_argument("--out", default="benchmarks/results/bench_fer2013.md")
    args = p.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    def options(n):
        return (VARIANTS[n].format(folders=args.folders) + " " + args.options).strip()

    speeds = {n: [] for n in names}
    for r in range(args.rounds):  # in turn, so that a slow spell of a shared machine hits every variant
        for n in names:
            ips, _ = run(n, options(n), args.steps, args.seed, args.runs)
            speeds[n].append(ips)
            print(f"round {r + 1}: {n}: {ips:.1f} images/s", flush=True)
    base = statistics.median(speeds[names[0]])
    rows = []
    for n in names:
        ips = statistics.median(speeds[n])
        row = {"variant": n, "options": options(n).replace(args.folders, "{folders}"), "images_per_s": ips, "runs": speeds[n], "x_first": ips / base}
        if args.wall:
            steps = max(1, round(args.wall * ips / 64))
            t0 = time.time()
            _, folder = run(n, options(n), steps, args.seed, args.runs)
            row.update(steps=steps, train_s=time.time() - t0,
                       **{f"{k}_{m}": v for k, r in probe(os.path.join(folder, "last.pt"), torch.device("cpu"),
                                                          args.seed).items() for m, v in r.items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"# FER2013, tiny preset: images/s per option ({datetime.date.today()})", "",
             f"`python benchmarks/bench_fer2013.py {' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}`", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; batch 64, "
             f"{args.steps} steps x {args.rounds} rounds per variant, median; images/s = the epoch's images over its "
             f"wall time (loading, views and step)." + (f" Then each variant trains for {args.wall:.0f} s' worth of "
             f"its images/s (seed {args.seed}) and its trunk is probed on val (PublicTest) beside a random trunk of "
             f"the same width." if args.wall else ""), ""]
    header = "| variant | train.py options | images/s | x first row |"
    if args.wall:
        header += " steps in the wall time | val linear, trained (%) | val linear, random (%) | val k-NN, trained (%) | val k-NN, random (%) |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        line = f"| {r['variant']} | `{r['options']}` | {r['images_per_s']:.1f} | {r['x_first']:.2f} |"
        if args.wall:
            line += (f" {r['steps']} | {100 * r['trained_linear']:.1f} | {100 * r['random_linear']:.1f} | "
                     f"{100 * r['trained_knn']:.1f} | {100 * r['random_knn']:.1f} |")
        lines.append(line)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
