"""
Few labels: where a random trunk is weakest and pretraining should matter most.

    python benchmarks/few_labels.py --ckpt runs/learning_curve/fer2013-simclr+semantic-s0/last.pt \\
        --labels 10 100 all --subsets 0 1 2 --split val --out
        benchmarks/results/fer2013_few_labels.md

For N labelled training faces per class (eval.py --labels-per-class N: a seeded, class-balanced
subset of the train split; one subset per --subsets seed) it scores, on --split:
  - the pretrained trunk, linear probe: cached pooled features, lr chosen on the N-per-class faces
  alone (5-fold
    cross-validation under 2,000 faces, else a 10 % hold-out; eval.choose_probe_lr), 30 epochs,
    batch 256;
  - the random trunk of the same architecture and seed (as train.py initialised it), the same linear
  probe;
  - with --finetune: the pretrained trunk fine-tuned, and the random trunk trained from scratch, on
  the same labels
    (eval.finetune, the project's protocol: SGD lr 0.01 x batch/256, cosine, crop + flip;
    --finetune-epochs).
"all" uses every training label (one subset). Mean ± std over the subsets.
"""
import argparse
import json
import os
import shlex
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
import eval as evaluate  # noqa: E402
from simfle import SimFLE  # noqa: E402
from eval_support.common import load_checkpoint


def trunks(ckpt, state, cfg):
    """Fresh copies of the two trunks compared: {"pretrained": the checkpoint's, "random": as
    train.py initialised the same configuration (it seeds torch right before it builds the
    model)}."""
    torch.manual_seed(state["train"]["seed"])
    return {"pretrained": evaluate.load_trunk(ckpt, state=state)[0], "random": SimFLE(cfg).backbone}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True,
                   help="a train.py checkpoint (its config gives the random trunk's)")
    p.add_argument("--data", default="fer2013")
    p.add_argument("--root", default=None)
    p.add_argument("--labels", nargs="+", default=["10", "100", "all"],
                   help="labels per class, or 'all'")
    p.add_argument("--subsets", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the labelled subsets")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune / train from scratch (slow on a CPU)")
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/fer2013_few_labels.md")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    state = load_checkpoint(args.ckpt)
    cfg = state["config_obj"]
    train_base = data.get_dataset(args.data, args.root, "train", render=True)
    held_out = data.get_dataset(args.data, args.root, args.split, render=True)
    classes = held_out.classes
    feats = {name: tuple(evaluate.frozen_features(t.to(device).eval(), b, cfg.view_size, device)
                         for b in (train_base, held_out))
             for name, t in trunks(args.ckpt, state, cfg).items()}
    results = {}  # (row, labels) -> [accuracy per subset]
    for labels in args.labels:
        subsets = [None] if labels == "all" else args.subsets
        for seed in subsets:
            subset = train_base if seed is None else data.labels_per_class(train_base, int(labels),
                                                                           seed)
            idx = torch.arange(len(train_base)) if seed is None else torch.tensor(subset.indices)
            for name in feats:
                (tx, ty), test = feats[name]
                report, _ = evaluate.probe_features((tx[idx], ty[idx]), test, classes, device,
                                                    seed or 0)
                lr = report["probe_lr"]
                results.setdefault((f"{name} trunk, linear probe", labels),
                                   []).append(report["last_epoch_accuracy"])
                print(f"{labels} per class, subset {seed}: {name} linear "
                      f"{100 * report['last_epoch_accuracy']:.1f} % "
                      f"(lr {lr})", flush=True)
            if args.finetune and labels != "all":
                # fine-tuning changes the weights: new copies each time
                fresh = trunks(args.ckpt, state, cfg)
                for name, row in (("pretrained", "pretrained trunk, fine-tuned"), ("random",
                                                                                   "from scratch")):
                    report = evaluate.finetune(fresh[name], subset, held_out, cfg.view_size, device,
                                               epochs=args.finetune_epochs, seed=seed,
                                               every_epoch=False)
                    results.setdefault((row, labels), []).append(report["last_epoch_accuracy"])
                    print(f"{labels} per class, subset {seed}: {row} "
                          f"{100 * report['last_epoch_accuracy']:.1f} %",
                          flush=True)
    rows = sorted({r for r, _ in results}, key=lambda r: ("linear" not in r, r))
    lines = ["`python benchmarks/few_labels.py "
             f"{' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}`", "",
             f"{args.data}, scored on {args.split}; checkpoint {args.ckpt} "
             f"({state['step'] * state['train']['batch_size']:,} "
             f"images seen); mean ± std over labelled subsets {args.subsets} (one for 'all').", "",
             "| trunk | " + " | ".join(f"{n} labels per class (%)" if n != "all"
                                       else "all labels (%)" for n in args.labels)
             + " |", "|---|" + "---|" * len(args.labels)]
    for r in rows:
        cells = []
        for n in args.labels:
            v = [100 * a for a in results.get((r, n), [])]
            spread = f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else ""
            cells.append("–" if not v else f"{statistics.mean(v):.1f}{spread}")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({f"{r} | {n}": v for (r, n), v in results.items()}, f, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
