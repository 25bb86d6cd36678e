"""
Is the linear probe's learning-rate grid wide enough? eval.py's probe chooses its lr among
eval.PROBE_LRS (1 to 0.01) on 10 % of the training faces held out, and on FER2013 it chose the
smallest,
0.01, for nearly every trunk. This scores a wider grid (down to 0.0003) for a few trunks, on the
same hold-out and on the held-out split:

    python benchmarks/probe_lr_check.py --data fer2013 --trunks random \\
        runs/learning_curve/fer2013-simclr-s0/last.pt runs/learning_curve/fer2013-byol-s0/last.pt
        runs/learning_curve/fer2013-lightly-byol-s0/arm.pt \\
        --out benchmarks/results/fer2013_probe_lr.md

A trunk is "random" (learning_curve's random trunk of --seed), a train.py checkpoint, or a
checkpoint of one of learning_curve's own arms (arm.pt: supervised, lightly-byol). The probe is
learning_curve's: cached pooled features, parameter-free BatchNorm then a linear layer, SGD momentum
0.9, 30 epochs, batch 256, the last epoch scored.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import eval as evaluate  # noqa: E402
import learning_curve  # noqa: E402  (this folder)
from simfle import Backbone, SimFLE, SimFLEConfig  # noqa: E402
from eval_support.common import load_checkpoint, run_cli

WIDE_LRS = evaluate.PROBE_LRS + (0.003, 0.001, 0.0003)


def load(name, args, steps):
    """-> (trunk, a short description); `steps`: steps an epoch. learning_curve's own arms save
    their whole model as arm.pt: the trunk's weights are those under "0." (supervised: trunk, then
    the linear layer) or "backbone." (lightly-byol). Any other file is a train.py checkpoint."""
    cfg = SimFLEConfig.preset("tiny", **learning_curve.config_overrides(args))
    if name == "random":
        torch.manual_seed(args.seed)
        return SimFLE(cfg).backbone, f"random trunk, seed {args.seed}"
    if os.path.basename(name) != "arm.pt":
        state = load_checkpoint(name)
        return evaluate.load_trunk(name,
                                   state=state)[0], f"{name} (epoch {state['step'] / steps:g})"
    state = torch.load(name, map_location="cpu", weights_only=True)
    trunk = Backbone(cfg.backbone, cfg.stem, cfg.width)
    for prefix in ("0.", "backbone."):
        weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        if weights:
            trunk.load_state_dict(weights)
            return trunk, f"{name} (epoch {state['epoch']})"
    raise SystemExit(f"error: {name}: no trunk weights under '0.' or 'backbone.' (not one of "
                     "learning_curve's arms)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fer2013", choices=["fer2013", "synthetic"])
    p.add_argument("--root", default=None)
    p.add_argument("--trunks", nargs="+", default=["random"],
                   help="random, train.py checkpoints, arm.pt files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--options", default="", help="as learning_curve's (the arms' model options)")
    p.add_argument("--probe-cap", type=int, default=None, help="as learning_curve's (dry runs)")
    p.add_argument("--out", default=None, help="a markdown table")
    # learning_curve's, to count a checkpoint's epochs
    p.set_defaults(batch_size=64, max_steps=None)
    args = p.parse_args(argv)
    train_base, held_out = learning_curve.datasets(args, args.seed)
    size = SimFLEConfig.preset("tiny", **learning_curve.config_overrides(args)).view_size
    lines = [f"| trunk | chosen on the hold-out: grid / wide | "
             + " | ".join(f"lr {lr:g}: hold-out / {args.split} (%)" for lr in WIDE_LRS) + " |",
             "|---|---|" + "---|" * len(WIDE_LRS)]
    for name in args.trunks:
        trunk, described = load(name, args, learning_curve.steps_per_epoch(args, args.seed))
        trunk = trunk.eval()
        (tx, ty), (vx, vy) = (evaluate.frozen_features(trunk, b, size, "cpu") for b in (train_base,
                                                                                        held_out))
        # probe_lr's hold-out
        order = torch.randperm(len(tx), generator=torch.Generator().manual_seed(args.seed))
        held, fit = order[:len(tx) // 10], order[len(tx) // 10:]
        scores = {}
        for lr in WIDE_LRS:
            run = dict(device="cpu", epochs=30, batch_size=256, lr=lr, seed=args.seed)
            on_hold, _ = evaluate.train_head(None, (tx[fit], ty[fit]), (tx[held], ty[held]),
                                             held_out.classes, **run)
            on_split, _ = evaluate.train_head(None, (tx, ty), (vx, vy), held_out.classes, **run)
            scores[lr] = (on_hold["last_epoch_accuracy"], on_split["last_epoch_accuracy"])
            print(f"{described}: lr {lr:g}: hold-out {100 * scores[lr][0]:.1f} %, {args.split} "
                  f"{100 * scores[lr][1]:.1f} %", flush=True)
        grid = max(evaluate.PROBE_LRS, key=lambda lr: scores[lr][0])
        wide = max(WIDE_LRS, key=lambda lr: scores[lr][0])
        lines.append(f"| {described} | {grid:g} / {wide:g} | "
                     + " | ".join(f"{100 * h:.1f} / {100 * s:.1f}" for h,
                                  s in scores.values()) + " |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
